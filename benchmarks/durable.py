"""Durable runs versus plain ``run_agent``: runs per second and per-run overhead, 1, 2 and 4 workers.

    python -m benchmarks.durable                         # 200 conversations per setting
    python -m benchmarks.durable --conversations 10000 --workers 4
    python -m benchmarks.durable --backlog 10000 --workers 2     # 10,000 queued, then drained
    python -m benchmarks.durable --backlog 2000 --workers 2 --model-rate 100/1

Every conversation is one question answered with one tool call (two model calls), against the
test server in its own process with ``--latency`` seconds per reply, so the numbers are about
Timestep and DBOS, not a model. Each setting gets a fresh database (``timestep_dbos_bench_<random>``),
dropped afterwards. "queue" is what enqueueing costs the caller per run; "overhead" is the
durable per-run time minus the plain per-run time, both at the same concurrency per process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("TIMESTEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test").rsplit("/", 1)[0]


async def _sql(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(BASE + "/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _model_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "timestep.testing", "--latency", str(latency), "--no-record"]
    command += ["--responder", "timestep.testing:tool_then_answer"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split()[-1]


async def plain(url: str, base_url: str, n: int, concurrency: int) -> float:
    """Seconds for ``n`` plain ``run_agent`` calls with PostgresSession, ``concurrency`` at a time."""
    from tests.durable_app import assistant
    from timestep import ModelClient, PostgresSession, run_agent

    client = ModelClient(base_url=base_url, api_key="x")
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            session = PostgresSession(assistant.name, f"plain-{i}", assistant.instructions, url=url)
            result = await run_agent(assistant, [{"role": "user", "content": f"note {i}"}], session, client=client)
            assert result["status"] == "completed"

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await PostgresSession.close_pools(url)
    return elapsed


async def _start_workers(url: str, base_url: str, workers: int, concurrency: int, *extra: str) -> list[Any]:
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "x", "TIMESTEP_EFFECTS": os.devnull}
    logs = Path(tempfile.mkdtemp())
    procs = []
    for k in range(workers):
        command = [sys.executable, "-c", "from timestep.cli import main; main()", "worker"]
        command += ["tests/durable_app.py:assistant", "--store", url, "--concurrency", str(concurrency), *extra]
        with (logs / f"{k}.log").open("wb") as out:
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out))
    for k in range(workers):
        while b" running " not in (logs / f"{k}.log").read_bytes():
            assert procs[k].poll() is None, (logs / f"{k}.log").read_text()
            await asyncio.sleep(0.05)
    return procs


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


async def durable(url: str, base_url: str, n: int, workers: int, concurrency: int) -> tuple[float, float]:
    """Seconds for ``n`` durable runs on ``workers`` processes, and seconds per enqueue."""
    from timestep.durable import DurableClient

    procs = await _start_workers(url, base_url, workers, concurrency)
    try:
        async with await DurableClient.connect(url) as client:
            start = time.perf_counter()
            runs = [
                await client.start("Recorder", [{"role": "user", "content": f"note {i}"}], f"d-{i}") for i in range(n)
            ]
            queued = time.perf_counter() - start
            results = await asyncio.gather(*(r.result() for r in runs))
            elapsed = time.perf_counter() - start
            assert all(r["status"] == "completed" for r in results)
    finally:
        _stop(procs)
    return elapsed, queued / n


async def backlog(url: str, base_url: str, n: int, workers: int, concurrency: int, model_rate: str | None) -> None:
    """``n`` runs queued before any worker starts, then drained: the pace, and how evenly it goes.

    Prints the enqueue rate, the drain rate, and the completion order's fairness: since every run is
    queued at once, a fair queue finishes them at a steady rate (the time to the median run is about
    half the time to the last).
    """
    from timestep.durable import DurableClient

    async with await DurableClient.connect(url) as client:
        start = time.perf_counter()
        runs = [await client.start("Recorder", [{"role": "user", "content": f"note {i}"}], f"b-{i}") for i in range(n)]
        queued = time.perf_counter() - start
        print(f"backlog: {n} runs queued in {queued:.1f} s ({n / queued:.0f} runs/s)", flush=True)
        extra = ("--model-rate", model_rate) if model_rate else ()
        procs = await _start_workers(url, base_url, workers, concurrency, *extra)
        try:
            start = time.perf_counter()
            finished: list[float] = []

            async def one(run: Any) -> None:
                assert (await run.result())["status"] == "completed"
                finished.append(time.perf_counter() - start)
                if len(finished) % max(n // 10, 1) == 0:
                    print(f"  {len(finished)} done after {finished[-1]:.1f} s", flush=True)

            await asyncio.gather(*(one(r) for r in runs))  # the client looks them all up in one query
        finally:
            _stop(procs)
    last, median = max(finished), sorted(finished)[n // 2]
    rate = f", --model-rate {model_rate}" if model_rate else ""
    print(
        f"backlog drained by {workers} worker(s), {concurrency} at once each{rate}: {n / last:.1f} runs/s; "
        f"median run done at {median:.1f} s, last at {last:.1f} s"
    )


async def fresh(what: Any) -> Any:
    name = f"timestep_dbos_bench_{uuid.uuid4().hex[:10]}"
    await _sql(f"CREATE DATABASE {name}")
    try:
        return await what(f"{BASE}/{name}")
    finally:
        await _sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def main(args: argparse.Namespace) -> None:
    server, base_url = _model_server(args.latency)
    n, c = args.conversations, args.concurrency
    try:
        if args.backlog:
            for w in args.workers:
                await fresh(lambda url, w=w: backlog(url, base_url, args.backlog, w, c, args.model_rate))
            return
        base = await fresh(lambda url: plain(url, base_url, n, c))
        print(
            f"plain run_agent + PostgresSession, 1 process, {c} at once: "
            f"{n / base:.1f} runs/s, {1000 * base / n:.2f} ms/run"
        )
        for w in args.workers:
            elapsed, queued = await fresh(lambda url, w=w: durable(url, base_url, n, w, c))
            per_run = elapsed / n
            overhead = per_run - base / n
            print(
                f"durable, {w} worker(s), {c} at once each: {n / elapsed:.1f} runs/s, {1000 * per_run:.2f} ms/run "
                f"(overhead {1000 * overhead:+.2f} ms/run vs plain), enqueue {1000 * queued:.2f} ms/run"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=8, help="runs at once per process")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per model reply")
    parser.add_argument("--backlog", type=int, metavar="N", help="queue N runs before any worker starts, then drain")
    parser.add_argument("--model-rate", metavar="N/SECONDS", help="the workers' --model-rate (with --backlog)")
    asyncio.run(main(parser.parse_args()))
