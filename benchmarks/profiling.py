"""Profile one workload of one implementation with cProfile, against a fake server started here.

``python -m benchmarks.profiling timestep W1 [--quick] [--sort tottime] [--limit 30] [--out w1.prof]``

Prints the top functions and how much CPU the fake server used meanwhile, so the client's own share of
the wall time is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.adapters import factory
from benchmarks.common import FULL, QUICK, Sizes
from benchmarks.server import fake_server, process_cpu_seconds
from benchmarks.worker import append_curve, w1, w2, w3, warm_up


async def profiled(
    impl: str, workload: str, url: str, sizes: Sizes, workdir: Path, profiler: cProfile.Profile
) -> dict[str, Any]:
    """Set-up and one warm-up turn run outside the profiler, so it sees the steady state only."""
    if workload == "append":
        profiler.enable()
        try:
            return await append_curve(workdir, sizes)
        finally:
            profiler.disable()
    adapter = await factory(impl)(url, workdir)
    try:
        await warm_up(adapter, stream=workload == "W1-stream")
        profiler.enable()
        try:
            if workload in ("W1", "W1-stream"):
                return await w1(adapter, sizes, workload == "W1-stream")
            stream = workload.endswith("-stream")
            if workload.startswith("W2"):
                n = sizes.w2_large if "1000" in workload else sizes.w2_conversations
                return await w2(adapter, n, stream, workload)
            n = sizes.w3_large if "10000" in workload else sizes.w3_history
            return await w3(adapter, sizes, n, stream, workload)
        finally:
            profiler.disable()
    finally:
        await adapter.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    parser.add_argument("impl")
    parser.add_argument(
        "workload",
        choices=["W1", "W1-stream", "W2", "W2-stream", "W2-1000", "W2-1000-stream", "W3", "W3-10000", "append"],
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--out", type=Path, help="also save the raw profile here (for snakeviz etc.)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    os.environ.update(OPENAI_AGENTS_DISABLE_TRACING="1", LANGSMITH_TRACING="false")
    latency = sizes.w2_latency if args.workload == "W2" else 0.0
    profiler = cProfile.Profile()
    with fake_server(latency) as server, tempfile.TemporaryDirectory() as tmp:
        cpu_before = process_cpu_seconds(server.pid)
        start = time.perf_counter()
        values = asyncio.run(profiled(args.impl, args.workload, server.url, sizes, Path(tmp), profiler))
        wall = time.perf_counter() - start
        server_cpu = process_cpu_seconds(server.pid) - cpu_before
    print(f"{args.impl} {args.workload}: {values} (under the profiler)")
    print(f"wall {wall:.3f} s (set-up included), fake server CPU {server_cpu:.3f} s meanwhile\n")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats(args.sort).print_stats(args.limit)
    if args.out:
        stats.dump_stats(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
