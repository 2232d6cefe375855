"""What tracing costs per model call: ``python -m benchmarks.tracing [--calls N] [--repeats R]``.

One run of N turns (a model call that asks for a trivial tool, then the tool) is timed with tracing
off, on with OpenTelemetry's default no-op provider (nothing configured: the observer's own cost),
and on with the SDK recording every span to an in-memory exporter (what a configured application
pays before its exporter). The modes are interleaved and the median CPU time per turn (this process's,
the test server's thread included) is reported: wall time on a shared machine says more about the
neighbours than about the code. ``--off-only`` times only tracing off and never passes a tracing option,
so the same script measures a Timestep without tracing (``PYTHONPATH=<other checkout>``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from typing import Any

from timestep import Agent, FileSession, ModelClient, RunConfig, run_agent
from timestep.testing import Reply, TestServer, ToolCall


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def per_turn(server: TestServer, store: str, calls: int, config: Any) -> float:
    agent = Agent(name="Bench", model="any", tools=[add])
    client = ModelClient(base_url=server.base_url, api_key="test")
    server.script(*[Reply.tool_calls(ToolCall("add", {"a": n, "b": 1})) for n in range(calls)], Reply.text("done"))
    session = FileSession("Bench", f"c{time.time_ns()}", storage_dir=store)
    go = [{"role": "user", "content": "go"}]
    started = time.process_time()
    result = await run_agent(agent, go, session, client=client, config=config)
    elapsed = time.process_time() - started
    assert result["status"] == "completed", result
    return elapsed / (calls + 1)


def configs(calls: int, off_only: bool) -> dict[str, Any]:
    modes: dict[str, Any] = {"off": RunConfig(max_turns=calls + 2)}
    if off_only:
        return modes
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from timestep.tracing import Tracing

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    modes["on, no-op provider"] = RunConfig(max_turns=calls + 2, tracing=True)
    modes["on, SDK in memory"] = RunConfig(max_turns=calls + 2, tracing=Tracing(tracer_provider=provider))
    return modes


async def main(calls: int, repeats: int, off_only: bool) -> None:
    modes = configs(calls, off_only)
    times: dict[str, list[float]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as store, TestServer(record=False) as server:
        for config in modes.values():  # warm up: imports, connections, first spans
            await per_turn(server, store, min(calls, 5), config)
        order = list(modes.items())
        for n in range(repeats):
            for name, config in order[n % len(order) :] + order[: n % len(order)]:  # each mode goes first in turn
                times[name].append(await per_turn(server, store, calls, config))
    base = statistics.median(times["off"])
    print(f"{calls} turns per run, {repeats} runs per mode, median CPU per turn (one model call + one tool call):")
    for name, values in times.items():
        median = statistics.median(values)
        extra = "" if name == "off" else f"  (+{(median - base) * 1e6:.0f} us per call)"
        print(f"  tracing {name}: {median * 1e6:.0f} us{extra}")
    loaded = sorted({m.split(".")[0] for m in sys.modules if m.startswith("opentelemetry")})
    print(f"  opentelemetry modules loaded: {loaded if loaded else 'none'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--off-only", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeats, args.off_only))
