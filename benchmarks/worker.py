"""Runs one workload of one implementation in a fresh process and prints its result as JSON.

Usage (the runner does this): ``python -m benchmarks.worker IMPL WORKLOAD BASE_URL [--quick]``.
WORKLOAD is W1, W2 or W3, optionally with the larger size (W2-1000: 1,000 concurrent conversations;
W3-10000: 10,000 stored messages) and ``-stream``, e.g. ``W2-1000-stream``; or ``append``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.adapters import factory
from benchmarks.common import (
    FULL,
    QUICK,
    TOOL_CALLS,
    Adapter,
    Conversation,
    Sizes,
    WrongAnswer,
    check_answer,
    history,
    question,
)
from benchmarks.server import process_cpu_seconds

RESULT_PREFIX = "RESULT "
SERVER_PID_ENV = "BENCH_SERVER_PID"


class CpuMeter:
    """CPU seconds over a block: this process (all its threads) and the fake server's process."""

    def __init__(self) -> None:
        pid = os.environ.get(SERVER_PID_ENV)
        self._server_pid = int(pid) if pid else None
        self.client = 0.0
        self.server = 0.0

    def __enter__(self) -> CpuMeter:
        self._client0 = time.process_time()
        self._server0 = process_cpu_seconds(self._server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client += time.process_time() - self._client0
        self.server += process_cpu_seconds(self._server_pid) - self._server0

    def values(self, key: str, scale: float = 1.0) -> dict[str, float]:
        out = {f"{key}-cpu": self.client * scale}
        if self._server_pid is not None:
            out[f"{key}-server-cpu"] = self.server * scale
        return out


async def checked_turn(conversation: Conversation, city: str, *, stream: bool, exact_tool_count: bool) -> None:
    before = TOOL_CALLS.calls
    answer = await conversation.turn(question(city), stream=stream)
    check_answer(answer, city)
    if exact_tool_count and TOOL_CALLS.calls != before + 1:
        raise WrongAnswer(f"the tool ran {TOOL_CALLS.calls - before} times for one turn, expected once")


async def warm_up(adapter: Adapter, stream: bool = False) -> None:
    """One untimed turn: opens the connection and pays any lazy imports before the clock starts."""
    conversation = await adapter.conversation("warm-up")
    await checked_turn(conversation, "Warmup", stream=stream, exact_tool_count=True)


async def w1(adapter: Adapter, sizes: Sizes, stream: bool) -> dict[str, float]:
    await warm_up(adapter, stream)
    key = "W1-stream" if stream else "W1"
    with CpuMeter() as cpu:
        start = time.perf_counter()
        for c in range(sizes.w1_conversations):
            conversation = await adapter.conversation(f"w1-{c}")
            for t in range(sizes.w1_turns):
                await checked_turn(conversation, f"City{c}T{t}", stream=stream, exact_tool_count=True)
        elapsed = time.perf_counter() - start
    return {key: elapsed, **cpu.values(key)}


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_high_water() -> bool:
    """Linux: writing 5 to clear_refs resets this process's peak-RSS mark (VmHWM) to its current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakRss:
    """Peak resident-set growth of this process over a block, in MB.

    Baseline: current RSS right before the block (after imports, set-up and a warm-up turn). Peak: the
    kernel's RSS high-water mark after the block, reset at the baseline where Linux allows it; elsewhere
    the difference of `resource.getrusage(...).ru_maxrss` before and after.
    """

    def __enter__(self) -> PeakRss:
        gc.collect()
        self._reset = _reset_high_water()
        rss = _proc_status_kb("VmRSS") if self._reset else None
        self._base_kb = rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.method = "VmHWM-VmRSS" if rss is not None else "ru_maxrss"
        self.growth_mb = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _proc_status_kb("VmHWM") if self.method == "VmHWM-VmRSS" else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.growth_mb = max(peak - self._base_kb, 0) / 1024


async def w2(adapter: Adapter, n: int, stream: bool, key: str) -> dict[str, float]:
    await warm_up(adapter, stream)
    conversations_before = TOOL_CALLS.calls

    async def one(c: int) -> None:
        conversation = await adapter.conversation(f"w2-{c}")
        await checked_turn(conversation, f"City{c}", stream=stream, exact_tool_count=False)

    with PeakRss() as mem, CpuMeter() as cpu:
        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(n)))
        elapsed = time.perf_counter() - start
    if TOOL_CALLS.calls - conversations_before != n:
        raise WrongAnswer(f"the tool ran {TOOL_CALLS.calls - conversations_before} times for {n} turns")
    return {f"{key}-wall": elapsed, f"{key}-mem": mem.growth_mb, **cpu.values(key)}


async def w3(adapter: Adapter, sizes: Sizes, n: int, stream: bool, key: str) -> dict[str, float]:
    await warm_up(adapter, stream)
    conversation = await adapter.conversation("w3")
    await conversation.prefill(history(n))
    times = []
    cpu = CpuMeter()
    for t in range(sizes.w3_turns):
        with cpu:
            start = time.perf_counter()
            await checked_turn(conversation, f"Long{t}", stream=stream, exact_tool_count=True)
            times.append(time.perf_counter() - start)
    return {key: statistics.median(times) * 1000, **cpu.values(key, 1000 / sizes.w3_turns)}


async def append_curve(workdir: Path, sizes: Sizes) -> dict[str, float]:
    from benchmarks.adapters.timestep import append_curve as curve

    return {f"append@{n}": us for n, us in (await curve(workdir, sizes.append_levels, sizes.append_samples)).items()}


WORKLOAD = re.compile(r"^(W1|W2-1000|W2|W3-10000|W3)(-stream)?$")


def parse_workload(workload: str) -> tuple[str, bool, bool]:
    """``W2-1000-stream`` -> ("W2", large, stream). Raises ``ValueError`` for anything else."""
    match = WORKLOAD.match(workload)
    if match is None:
        raise ValueError(f"unknown workload {workload!r}")
    name = match.group(1)
    return name[:2], len(name) > 2, match.group(2) is not None


async def run(impl: str, workload: str, base_url: str, sizes: Sizes, workdir: Path) -> dict[str, float]:
    if workload == "append":
        return await append_curve(workdir, sizes)
    kind, large, stream = parse_workload(workload)
    adapter = await factory(impl)(base_url, workdir)
    try:
        if stream and not adapter.supports_streaming:
            return {}
        if kind == "W1":
            return await w1(adapter, sizes, stream)
        if kind == "W2":
            return await w2(adapter, sizes.w2_large if large else sizes.w2_conversations, stream, workload)
        return await w3(adapter, sizes, sizes.w3_large if large else sizes.w3_history, stream, workload)
    finally:
        await adapter.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("impl")
    parser.add_argument("workload", help="W1, W2, W3, W2-1000, W3-10000, each optionally -stream; or append")
    parser.add_argument("base_url")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.impl}-") as tmp:
        values: dict[str, Any] = asyncio.run(run(args.impl, args.workload, args.base_url, sizes, Path(tmp)))
    sys.stdout.write(RESULT_PREFIX + json.dumps(values) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
