"""What MCP adds to a tool call, and what a server costs per run: ``python -m benchmarks.mcp_overhead``.

The same trivial tool (``add``) is called as a Python tool and through the notes server over stdio
and over Streamable HTTP, in one run each (so the connection is made once), and the per-call
difference is the MCP cost. Start-up is the time from nothing to a listed, connected server.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timestep import Agent, FileSession, ModelClient, RunConfig, run_agent
from timestep.mcp import MCPServer, MCPServerHTTP, MCPServerStdio
from timestep.testing import Reply, TestServer, ToolCall

SERVER = Path(__file__).resolve().parent.parent / "tests" / "mcp_notes_server.py"
CALLS = 50


def add(a: int, b: int) -> int:
    return a + b


async def per_call(tools: list[object], server: TestServer, store: str) -> float:
    agent = Agent(name="Bench", model="any", tools=tools)
    client = ModelClient(base_url=server.base_url, api_key="test")
    server.script(*[Reply.tool_calls(ToolCall("add", {"a": n, "b": 1})) for n in range(CALLS)], Reply.text("done"))
    started = time.perf_counter()
    session = FileSession("Bench", f"c{time.time_ns()}", storage_dir=store)
    go = [{"role": "user", "content": "go"}]
    await run_agent(agent, go, session, client=client, config=RunConfig(max_turns=CALLS + 2))
    return (time.perf_counter() - started) / CALLS


async def startup(server: MCPServer) -> float:
    started = time.perf_counter()
    await server.connect()
    elapsed = time.perf_counter() - started
    await server.close()
    return elapsed


async def main() -> None:
    with tempfile.TemporaryDirectory() as store, TestServer() as server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable, str(SERVER), "http", str(port)]
        http = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            devnull = open("/dev/null", "w")  # noqa: SIM115
            stdio = MCPServerStdio(sys.executable, [str(SERVER)], name="notes", errlog=devnull)
            remote = MCPServerHTTP(f"http://127.0.0.1:{port}/mcp", name="remote")
            python = statistics.median([await per_call([add], server, store) for _ in range(3)])
            async with stdio, remote:
                over_stdio = statistics.median([await per_call([stdio], server, store) for _ in range(3)])
                over_http = statistics.median([await per_call([remote], server, store) for _ in range(3)])
            starts = [await startup(stdio) for _ in range(3)]
            http_starts = [await startup(remote) for _ in range(3)]
        finally:
            http.terminate()
            http.wait()
    print(f"python tool call, whole turn: {python * 1000:.2f} ms")
    print(f"MCP over stdio, extra per call: {(over_stdio - python) * 1000:.2f} ms")
    print(f"MCP over HTTP, extra per call: {(over_http - python) * 1000:.2f} ms")
    print(f"stdio server start-up (spawn, initialize, list), median: {statistics.median(starts) * 1000:.0f} ms")
    print(f"HTTP connect (initialize, list), median: {statistics.median(http_starts) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
