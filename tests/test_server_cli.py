"""``timestep serve`` as a process: the token rules, and a server killed mid-run that restarts clean."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.server_fixtures import Gate
from timestep.cli.serve import TOKEN_ENV, is_loopback, pick_token
from timestep.testing import Reply, TestServer

AGENTS = '''
from timestep import Agent

def lookup(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"

assistant = Agent(name="Assistant", model="test-model", instructions="Be brief.", tools=[lookup])
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
