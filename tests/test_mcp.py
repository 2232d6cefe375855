"""MCP servers as tool sources, against real servers: ``mcp-server-time`` from the package index
(stdio) and tests/mcp_notes_server.py, written with the SDK's own server classes (stdio and
Streamable HTTP). No part of the protocol is faked; model calls go to the loopback TestServer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from timestep import (
    Agent,
    ConfigurationError,
    FileSession,
    GuardrailResult,
    ModelClient,
    OutputGuardrail,
    run_agent,
)
from timestep.mcp import MCPServerError, MCPServerHTTP, MCPServerStdio, mcp_server
from timestep.mcp.convert import needs_approval
from timestep.testing import Reply, TestServer, ToolCall

HERE = Path(__file__).parent
NOTES_SERVER = HERE / "mcp_notes_server.py"
APP = HERE / "mcp_app.py"
GO = [{"role": "user", "content": "go"}]


@pytest.fixture
def notes_file(tmp_path: Path) -> Path:
    return tmp_path / "notes.txt"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


ERRLOG: list[TextIO] = []


@pytest.fixture(autouse=True, scope="module")
def _server_stderr() -> Iterator[None]:
    """The servers' stderr (their logs) goes to /dev/null, through one file the module closes."""
    with open(os.devnull, "w") as devnull:
        ERRLOG.append(devnull)
        yield
        ERRLOG.clear()


def notes_server(notes_file: Path, **options: Any) -> MCPServerStdio:
    return MCPServerStdio(
        sys.executable,
        [str(NOTES_SERVER)],
        env={"NOTES_FILE": str(notes_file)},
        name=options.pop("name", "notes"),
        errlog=ERRLOG[0],
        **options,
    )


def session(store: Path, conversation: str = "conv") -> FileSession:
    return FileSession("Notes", conversation, storage_dir=str(store))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The notes server over Streamable HTTP on 127.0.0.1, in its own process."""
    port = free_port()
    env = {**os.environ, "NOTES_FILE": str(tmp_path_factory.mktemp("http") / "notes.txt")}
    proc = subprocess.Popen(
        [sys.executable, str(NOTES_SERVER), "http", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTP MCP server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


# -- the tools the model sees ---------------------------------------------------------------------


async def test_time_server_from_the_package_index(server: TestServer, client: ModelClient, store: Path) -> None:
    time_server = MCPServerStdio(sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"])
    assert time_server.name == "mcp_server_time"
    async with time_server:
        agent = Agent(name="Clock", model="any", tools=[time_server])
        spec = next(s["function"] for s in agent.tool_specs if s["function"]["name"] == "get_current_time")
        assert spec["description"] == "Get current time in a specific timezone"
        assert spec["parameters"]["required"] == ["timezone"]
        server.script(Reply.tool_calls(ToolCall("get_current_time", {"timezone": "Asia/Tokyo"})), Reply.text("ok"))
        result = await run_agent(agent, GO, session(store), client=client)
    assert result["status"] == "completed"  # read-only: no approval asked
    answer = json.loads(result["tool_calls"][0]["result"])
    assert answer["timezone"] == "Asia/Tokyo" and answer["datetime"].endswith("+09:00")
    assert server.requests[1].messages[-1]["content"] == result["tool_calls"][0]["result"]


async def test_results_errors_and_bad_arguments(
    server: TestServer, client: ModelClient, store: Path, notes_file: Path
) -> None:
    seen: list[tuple[str, Any]] = []

    def watch(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult:
        seen.append((tool_name, result))
        return GuardrailResult.modify_result("[redacted]") if tool_name == "picture" else GuardrailResult.proceed()

    notes = notes_server(notes_file)
    async with notes:
        agent = Agent(name="Notes", model="any", tools=[notes], guardrails=[OutputGuardrail(watch)])
        server.script(
            Reply.tool_calls(
                ToolCall("add", {"a": 2, "b": 3}),
                ToolCall("picture", {}),
                ToolCall("fail", {"reason": "the disk is full"}),
                ToolCall("add", {"a": "two"}),
                ToolCall("weather", {"city": "Lima"}),
            ),
            Reply.text("ok"),
        )
        result = await run_agent(agent, GO, session(store), client=client)
    add, picture, fail, bad, weather = result["tool_calls"]
    assert add["result"] == "5"  # the text the server wrote
    assert picture["result"] == "[redacted]"  # output guardrails apply as to any tool
    assert seen[0] == ("add", "5")
    assert seen[1][1].startswith("a red dot\n[image (image/png") and "left out" in seen[1][1]
    # A dict comes to output guardrails as a dict, as from a Python tool; the model reads its JSON.
    assert dict(seen)["weather"] == {"result": "Sunny in Lima"}
    assert json.loads(weather["result"]) == {"result": "Sunny in Lima"}
    assert "MCP server 'notes'" in fail["error"] and "the disk is full" in fail["error"]
    assert "'two' is not of type 'integer'" in bad["error"] and "'b' is a required property" in bad["error"]
    sent = {m["tool_call_id"]: m["content"] for m in server.requests[1].messages if m["role"] == "tool"}
    assert sent[fail["id"]].startswith("Error: ") and "the disk is full" in sent[fail["id"]]


async def test_streamable_http(server: TestServer, client: ModelClient, store: Path, http_url: str) -> None:
    remote = MCPServerHTTP(http_url, headers={"X-Team": "timestep"}, prefix="remote")
    assert remote.name.startswith("127.0.0.1:")
    agent = Agent(name="Notes", model="any", tools=[remote])  # listed when built: nothing connected yet
    assert "remote_add" in agent.tool_names and "add" not in agent.tool_names
    server.script(Reply.tool_calls(ToolCall("remote_add", {"a": 20, "b": 22})), Reply.text("42"))
    try:
        result = await run_agent(agent, GO, session(store), client=client)
    finally:
        await remote.close()
    assert result["tool_calls"][0]["result"] == "42"


async def test_list_changed_refreshes_the_tools(
    server: TestServer, client: ModelClient, store: Path, notes_file: Path
) -> None:
    notes = notes_server(notes_file)
    async with notes:
        agent = Agent(name="Notes", model="any", tools=[notes])
        assert "shout" not in agent.tool_names
        server.script(Reply.tool_calls(ToolCall("learn_shout", {})), Reply.text("learned"))
        await run_agent(agent, GO, session(store), client=client)
        for _ in range(400):  # the new list is fetched by the connection's own task, soon after
            if "shout" in agent.tool_names:
                break
            await asyncio.sleep(0.025)
        server.script(Reply.tool_calls(ToolCall("shout", {"text": "hi"})), Reply.text("done"))
        result = await run_agent(agent, [{"role": "user", "content": "shout"}], session(store), client=client)
    offered = [t["function"]["name"] for t in server.requests[2].body["tools"]]
    assert "shout" in offered
    assert result["tool_calls"][0]["result"] == "HI"


# -- names ----------------------------------------------------------------------------------------


async def test_name_clashes_fail_at_construction_or_take_a_prefix(notes_file: Path) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    first, twin = notes_server(notes_file), notes_server(notes_file, name="twin")
    prefixed = notes_server(notes_file, name="twin", prefix="b")
    await asyncio.gather(first.connect(), twin.connect(), prefixed.connect())
    try:
        with pytest.raises(ConfigurationError, match=r"tool 'add' of 'notes' \(give it a prefix\)"):
            Agent(name="Notes", model="any", tools=[add, first])
        with pytest.raises(ConfigurationError, match=r"tool 'add' of 'twin'.*already uses"):
            Agent(name="Notes", model="any", tools=[first, twin])
        agent = Agent(name="Notes", model="any", tools=[add, prefixed])
    finally:
        await asyncio.gather(first.close(), twin.close(), prefixed.close())
    assert {"add", "b_add", "b_delete_note"} <= set(agent.tool_names)
    own = agent.get_tool("add")
    assert own is not None and own.fn is add


# -- safety: approvals, re-runs, crashes -----------------------------------------------------------


def run_app(server: TestServer, store: Path, notes_file: Path, mode: str) -> dict[str, Any]:
    argv = [sys.executable, str(APP), server.base_url, str(store), str(notes_file), mode]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_destructive_tool_pauses_and_resumes_in_a_new_process(
    server: TestServer, store: Path, notes_file: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_note", {"title": "draft"}), ToolCall("add", {"a": 1, "b": 1})))
    started = run_app(server, store, notes_file, "start")
    assert started["status"] == "interrupted"
    (pending,) = started["interruptions"]
    assert pending["tool_name"] == "delete_note" and "marks it destructive" in pending["prompt"]
    assert lines(notes_file) == []  # nothing deleted yet
    server.script(Reply.text("deleted"))
    resumed = run_app(server, store, notes_file, "edit")  # a person approves, with another title
    assert resumed["status"] == "completed"
    assert lines(notes_file) == ["deleted edited"]
    assert [c["result"] for c in resumed["tool_calls"]] == ["deleted edited"]
    tool_messages = [m for m in server.requests[-1].messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == ["deleted edited", "2"]  # call order


async def test_policy_is_set_per_server_and_per_tool(
    server: TestServer, client: ModelClient, store: Path, notes_file: Path
) -> None:
    notes = notes_server(notes_file, approval="never", approve={"add": True})
    async with notes:
        agent = Agent(name="Notes", model="any", tools=[notes])
        server.script(Reply.tool_calls(ToolCall("delete_note", {"title": "a"}), ToolCall("add", {"a": 1, "b": 2})))
        result = await run_agent(agent, GO, session(store), client=client)
    assert result["status"] == "interrupted"
    assert [i["tool_name"] for i in result["interruptions"]] == ["add"]
    assert lines(notes_file) == ["deleted a"]
    with pytest.raises(ConfigurationError, match="approval must be one of"):
        notes_server(notes_file, approval="sometimes")  # type: ignore[arg-type]


def test_the_policy_reads_the_annotations() -> None:
    import mcp_types

    destructive = mcp_types.ToolAnnotations(destructive_hint=True)
    both = mcp_types.ToolAnnotations(destructive_hint=True, read_only_hint=True)
    assert needs_approval("t", destructive, "destructive", {})
    assert not needs_approval("t", both, "destructive", {})  # read-only wins: nothing to destroy
    assert not needs_approval("t", None, "destructive", {})
    assert needs_approval("t", None, "not_read_only", {})
    assert not needs_approval("t", both, "not_read_only", {})
    assert needs_approval("t", both, "always", {})
    assert not needs_approval("t", destructive, "destructive", {"t": False})


def test_a_crash_reruns_only_idempotent_tools(server: TestServer, store: Path, notes_file: Path) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("save_note", {"title": "n", "text": "t", "pause": 60}),
            ToolCall("send_note", {"to": "ada", "pause": 60}),
        )
    )
    argv = [sys.executable, str(APP), server.base_url, str(store), str(notes_file), "start"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while sorted(lines(notes_file)) != ["saved n", "sent to ada"]:
            assert time.monotonic() < deadline and proc.poll() is None, "the calls never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    server.script(Reply.text("done"))
    resumed = run_app(server, store, notes_file, "look")  # decides nothing
    assert resumed["status"] == "interrupted"
    assert [(i["tool_name"], i["kind"]) for i in resumed["interruptions"]] == [("send_note", "unknown_outcome")]
    assert lines(notes_file).count("saved n") == 2  # idempotentHint: ran again by itself
    assert lines(notes_file).count("sent to ada") == 1  # no hint: waits for a person


async def test_a_server_killed_mid_call(server: TestServer, client: ModelClient, store: Path, notes_file: Path) -> None:
    notes = notes_server(notes_file, approval="never")
    async with notes:
        agent = Agent(name="Notes", model="any", tools=[notes])
        server.script(
            Reply.tool_calls(ToolCall("crash", {"after": 0.1})),
            Reply.tool_calls(ToolCall("pid", {})),
            Reply.text("still here"),
        )
        result = await run_agent(agent, GO, session(store), client=client)
    crashed, after = result["tool_calls"]
    assert "MCP server 'notes'" in crashed["error"] and "connection closed during crash" in crashed["error"]
    assert int(after["result"]) > 0  # a fresh server answered
    assert result["status"] == "completed" and result["final_output"] == "still here"


async def test_a_server_that_never_answers(
    server: TestServer, client: ModelClient, store: Path, notes_file: Path
) -> None:
    notes = notes_server(notes_file, timeout=0.5)
    async with notes:  # one connection for both runs
        agent = Agent(name="Notes", model="any", tools=[notes])
        server.script(Reply.tool_calls(ToolCall("pid", {}), ToolCall("wait", {"seconds": 600})), Reply.text("gave up"))
        result = await run_agent(agent, GO, session(store), client=client)
        assert result["status"] == "completed"
        assert "wait did not answer within 0.5 s" in result["tool_calls"][1]["error"]
        server.script(Reply.tool_calls(ToolCall("pid", {})), Reply.text("ok"))
        again = await run_agent(agent, GO, session(store, "second"), client=client)
    pid = int(result["tool_calls"][0]["result"])
    assert int(again["tool_calls"][0]["result"]) == pid  # the same server, still serving
    with pytest.raises(ProcessLookupError):  # and gone once the block is left
        os.kill(pid, 0)


def test_servers_that_do_not_start_or_speak_garbage() -> None:
    missing = MCPServerStdio("/nonexistent/mcp-server", name="missing")
    with pytest.raises(MCPServerError, match=r"MCP server 'missing': could not start"):
        Agent(name="Notes", model="any", tools=[missing])
    quits = MCPServerStdio(sys.executable, ["-c", "pass"], name="quits")
    with pytest.raises(MCPServerError, match=r"MCP server 'quits'"):
        Agent(name="Notes", model="any", tools=[quits])
    chatter = "import sys\nfor line in sys.stdin: print('hello', flush=True)"
    garbage = MCPServerStdio(sys.executable, ["-c", chatter], name="garbage", connect_timeout=1)
    with pytest.raises(MCPServerError, match=r"MCP server 'garbage': did not start within 1 s"):
        Agent(name="Notes", model="any", tools=[garbage])


# -- lifetime --------------------------------------------------------------------------------------


def test_an_agent_built_once_serves_many_loops(server: TestServer, store: Path, notes_file: Path) -> None:
    """Each ``asyncio.run`` connects on first use; when it returns, its server process is gone."""
    notes = notes_server(notes_file)
    agent = Agent(name="Notes", model="any", tools=[notes])
    client = ModelClient(base_url=server.base_url, api_key="test")
    pids: list[int] = []
    for n in range(2):
        server.script(Reply.tool_calls(ToolCall("pid", {})), Reply.text("ok"))

        async def once(conversation: str) -> dict[str, Any]:
            result: dict[str, Any] = await run_agent(agent, GO, session(store, conversation), client=client)
            return result

        result = asyncio.run(once(f"loop-{n}"))
        pids.append(int(result["tool_calls"][0]["result"]))
    assert pids[0] != pids[1]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_mcp_server_from_a_command_line_string() -> None:
    stdio = mcp_server("uvx mcp-server-time --local-timezone 'Europe/Oslo'")
    assert isinstance(stdio, MCPServerStdio) and stdio.name == "mcp-server-time"
    assert stdio.params.args == ["mcp-server-time", "--local-timezone", "Europe/Oslo"]
    http = mcp_server("https://example.com/mcp", prefix="ex")
    assert isinstance(http, MCPServerHTTP) and http.url == "https://example.com/mcp" and http.prefix == "ex"
    with pytest.raises(ConfigurationError):
        mcp_server("  ")


def test_import_timestep_does_not_import_mcp() -> None:
    code = "import sys, timestep; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
