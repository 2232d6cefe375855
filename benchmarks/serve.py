"""What ``timestep serve`` adds to a turn: ``python -m benchmarks.serve [--conversations 200] [--turns 3]``.

The same agent answers the same turns against the built-in test server, at N conversations at
once: first by calling ``run_agent`` directly in one process, then through ``timestep serve``
(its own process, a real socket, one ``POST .../messages`` per turn). With N turns in flight, a
turn's latency is mostly its wait behind the others, so the cost of a turn is the wall time per
turn, and the difference of the two is what the server adds per turn at that concurrency (the
server is a process of its own, so on a machine with two cores or more part of its work overlaps
the client's). The server's peak memory is its process's high-water mark (``VmHWM``).
Target: under 2 ms added per turn at 200 conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from timestep import Agent, ModelClient, run_agent
from timestep.sessions import open_store
from timestep.testing import Reply, TestServer

AGENTS = """
from timestep import Agent
bench = Agent(name="Bench", model="test-model", instructions="Answer briefly.")
"""


def answer(body: dict[str, object]) -> Reply:
    return Reply.text("ok")


async def direct(model: TestServer, store: str, conversations: int, turns: int) -> list[float]:
    agent = Agent(name="Bench", model="test-model", instructions="Answer briefly.")
    client = ModelClient(base_url=model.base_url, api_key="bench")
    the_store = open_store(store)
    times: list[float] = []

    async def one(n: int) -> None:
        session = the_store.session(agent.name, f"direct-{n}", agent.instructions)
        for t in range(turns):
            started = time.perf_counter()
            result = await run_agent(agent, [{"role": "user", "content": f"turn {t}"}], session, client=client)
            times.append(time.perf_counter() - started)
            assert result["final_output"] == "ok"

    await asyncio.gather(*(one(n) for n in range(conversations)))
    await the_store.aclose()
    return times


async def served(url: str, conversations: int, turns: int) -> list[float]:
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=conversations)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int) -> None:
            path = f"{url}/api/agents/Bench/conversations/served-{n}/messages"
            for t in range(turns):
                started = time.perf_counter()
                async with http.post(path, json={"content": f"turn {t}"}) as r:
                    result = await r.json()
                times.append(time.perf_counter() - started)
                assert result["final_output"] == "ok", result

        await asyncio.gather(*(one(n) for n in range(conversations)))
    return times


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(folder: Path, model: TestServer, store: str) -> tuple[subprocess.Popen[bytes], str]:
    (folder / "agents.py").write_text(AGENTS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    timestep = str(Path(sys.executable).parent / "timestep")
    env = {**os.environ, "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "bench"}
    argv = [timestep, "serve", "agents.py:bench", "--port", str(port), "--store", store]
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("timestep serve did not start")


def report(name: str, times: list[float], wall: float) -> float:
    """Print the run; return its wall time per turn (at this concurrency, what one turn costs)."""
    mean = statistics.fmean(times)
    print(
        f"{name:>8}: {len(times)} turns in {wall:.2f} s ({len(times) / wall:.0f} turns/s, "
        f"{wall / len(times) * 1000:.2f} ms per turn), latency of a turn: mean {mean * 1000:.1f} ms, "
        f"median {statistics.median(times) * 1000:.1f} ms"
    )
    return wall / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "file"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, TestServer(responder=answer, record=False) as model:
        folder = Path(tmp)
        store = f"sqlite:{folder / 'c.db'}" if args.store == "sqlite" else str(folder / "c")
        started = time.perf_counter()
        plain = asyncio.run(direct(model, store, args.conversations, args.turns))
        plain_cost = report("direct", plain, time.perf_counter() - started)
        proc, url = start_server(folder, model, store)
        try:
            asyncio.run(served(url, 10, 1))  # warm up: imports, first connections
            started = time.perf_counter()
            through = asyncio.run(served(url, args.conversations, args.turns))
            served_cost = report("served", through, time.perf_counter() - started)
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    added = (served_cost - plain_cost) * 1000
    print(f"added per turn at {args.conversations} concurrent conversations: {added:.2f} ms")
    print(f"server peak memory (VmHWM): {peak:.0f} MB")


if __name__ == "__main__":
    main()
