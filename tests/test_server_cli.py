"""``timestep serve`` as a process: the token rules, and a server killed mid-run that restarts clean."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server_fixtures import Gate
from timestep.cli.serve import TOKEN_ENV, is_loopback, pick_token
from timestep.testing import Reply, TestServer, ToolCall

AGENTS = '''
import time
from pathlib import Path

from timestep import Agent, tool

def lookup(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"

def _side_effect(name: str) -> None:
    with open(name, "a") as fh:
        fh.write("done\\n")
    while Path("hold").exists():  # the test holds the tool here, to kill the server during it
        time.sleep(0.02)

def charge(amount: int) -> str:
    """Charge the card (not safe to repeat)."""
    _side_effect("charged")
    return f"charged {amount}"

@tool(idempotent=True)
def refresh(name: str) -> str:
    """Refresh a cache (safe to repeat)."""
    _side_effect("refreshed")
    return f"refreshed {name}"

assistant = Agent(
    name="Assistant", model="test-model", instructions="Be brief.", tools=[lookup, charge, refresh]
)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``timestep serve`` in a child process, on a free port."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        (tmp_path / "agents.py").write_text(AGENTS)
        self.port = free_port()
        command = [
            str(Path(sys.executable).parent / "timestep"),
            "serve",
            "agents.py:assistant",
            "--port",
            str(self.port),
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"timestep serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert time.monotonic() < deadline, "timestep serve did not start listening"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def model_env(server: TestServer) -> Iterator[dict[str, str]]:
    yield {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}


def test_a_token_is_required_off_loopback_and_made_when_not_given() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert pick_token("127.0.0.1", {}) == (None, False)
    assert pick_token("0.0.0.0", {TOKEN_ENV: "mine"}) == ("mine", False)
    token, made = pick_token("0.0.0.0", {})
    assert made and token and len(token) >= 32
    assert pick_token("0.0.0.0", {})[0] != token


async def test_serve_prints_a_made_token_once_and_requires_it(tmp_path: Path, model_env: dict[str, str]) -> None:
    child = Serve(tmp_path, "--host", "0.0.0.0", "--offline", env={TOKEN_ENV: ""})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{child.url}/api/agents") as r:
                assert r.status == 401
            async with http.get(f"{child.url}/") as r:
                assert r.status == 200 and "<html" in (await r.text()).lower()
    finally:
        err = child.stop()
    [line] = [line for line in err.splitlines() if "bearer token" in line]
    token = line.rsplit(" ", 1)[1]
    assert err.count(token) == 1  # shown once, and never in the access log


async def test_a_server_killed_mid_run_restarts_with_the_conversation_valid(
    tmp_path: Path, server: TestServer, model_env: dict[str, str]
) -> None:
    gate = Gate(Reply.text("never delivered"))
    server.responder = gate
    child = Serve(tmp_path, "--store", "sqlite:chats.db", env=model_env)
    base = f"{child.url}/api/agents/Assistant/conversations/c1"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/messages", params={"background": "true"}, json={"content": "Hi"}) as r:
                assert r.status == 202
            await gate.reached()
            child.stop(signal.SIGKILL)  # mid-run: the model has not answered
    finally:
        gate.release.set()
        if child.proc.poll() is None:
            child.stop(signal.SIGKILL)
    server.reset()
    server.script(Reply.text("Hello again"))
    child = Serve(tmp_path, "--store", "sqlite:chats.db", env=model_env)
    base = f"{child.url}/api/agents/Assistant/conversations/c1"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base) as r:
                shown = await r.json()
            assert [m["role"] for m in shown["messages"]] == ["user"]
            assert shown["running"] is False and shown["pending"] == []
            async with http.post(f"{base}/messages", json={"content": "Are you there?"}) as r:
                result = await r.json()
            assert result["status"] == "completed" and result["final_output"] == "Hello again"
    finally:
        child.stop()


def test_serve_on_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text(AGENTS)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        command = [str(Path(sys.executable).parent / "timestep"), "serve", "agents.py:assistant", "--offline"]
        proc = subprocess.run(
            [*command, "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use; choose another with --port"
    ]


def model_for_tools(body: dict[str, Any]) -> Reply:
    last = body["messages"][-1]
    if last["role"] == "tool":
        return Reply.text(f"after {last['tool_call_id']}")
    if last["content"] == "charge":
        return Reply.tool_calls(ToolCall("charge", {"amount": 5}, id="pay"))
    if last["content"] == "refresh":
        return Reply.tool_calls(ToolCall("refresh", {"name": "prices"}, id="ref"))
    return Reply.text(f"you said {last['content']}")


async def test_a_server_killed_while_tools_run_restarts_with_what_waits_shown(
    tmp_path: Path, server: TestServer, model_env: dict[str, str]
) -> None:
    server.responder = model_for_tools
    (tmp_path / "hold").touch()
    child = Serve(tmp_path, "--store", "sqlite:chats.db", env=model_env)
    base = f"{child.url}/api/agents/Assistant/conversations"
    try:
        async with aiohttp.ClientSession() as http:
            for cid, text in (("pay", "charge"), ("ref", "refresh")):
                url = f"{base}/{cid}/messages"
                async with http.post(url, params={"background": "true"}, json={"content": text}) as r:
                    assert r.status == 202
            deadline = time.monotonic() + 30
            while not ((tmp_path / "charged").exists() and (tmp_path / "refreshed").exists()):
                assert time.monotonic() < deadline, "the tools never ran"
                await asyncio.sleep(0.02)
            child.stop(signal.SIGKILL)  # while both tools run
    finally:
        if child.proc.poll() is None:
            child.stop(signal.SIGKILL)
    (tmp_path / "hold").unlink()
    child = Serve(tmp_path, "--store", "sqlite:chats.db", env=model_env)
    base = f"{child.url}/api/agents/Assistant/conversations"
    try:
        async with aiohttp.ClientSession() as http:
            # The charge may or may not have happened: a person is asked, at once, before anything runs.
            async with http.get(f"{base}/pay") as r:
                shown = await r.json()
            assert [(p["tool_call_id"], p["kind"]) for p in shown["pending"]] == [("pay", "unknown_outcome")]
            assert shown["running"] is False and shown["unfinished"] is False
            async with http.post(f"{base}/pay/messages", json={"content": "hello?"}) as r:
                assert r.status == 409 and (await r.json())["error"]["type"] == "ApprovalError"
            decline = {"decisions": [{"tool_call_id": "pay", "approve": False, "message": "it went through"}]}
            async with http.post(f"{base}/pay/decisions", json=decline) as r:
                result = await r.json()
            assert (result["status"], result["final_output"]) == ("completed", "after pay")
            assert (tmp_path / "charged").read_text().count("done") == 1  # not charged twice
            # The refresh is safe to repeat: nothing to ask, and the conversation says it is unfinished...
            async with http.get(f"{base}/ref") as r:
                shown = await r.json()
            assert shown["pending"] == [] and shown["unfinished"] is True
            # ...and the next message runs it again first.
            async with http.post(f"{base}/ref/messages", json={"content": "done?"}) as r:
                result = await r.json()
            assert (result["status"], result["final_output"]) == ("completed", "you said done?")
            assert (tmp_path / "refreshed").read_text().count("done") == 2
            async with http.get(f"{base}/ref") as r:
                shown = await r.json()
            assert shown["unfinished"] is False
            assert [m["role"] for m in shown["messages"]] == ["user", "assistant", "tool", "user", "assistant"]
    finally:
        child.stop()
