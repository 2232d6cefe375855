"""Streaming with and without an answer guardrail: time to first token and to the whole answer.

    python -m benchmarks.answer_guardrails [--runs 30]

The test server streams a 12-sentence answer one word per chunk with no delay, so what is measured
is Timestep's own cost: an answer guardrail that checks at sentence ends holds the first token back
until the first sentence is complete and has been checked.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

from timestep import Agent, AnswerGuardrail, FileSession, GuardrailResult, ModelClient, run_agent
from timestep.testing import Reply, TestServer

ANSWER = " ".join(f"Sentence number {n} says something harmless about the weather." for n in range(12))


def harmless(text: str) -> GuardrailResult | None:
    return GuardrailResult.block("no") if "launch code" in text else None


async def one(agent: Agent, server: TestServer, client: ModelClient, folder: str, n: int) -> tuple[float, float]:
    server.script(Reply.text(ANSWER))
    session = FileSession(agent.name, f"c{n}", storage_dir=folder)
    start = time.perf_counter()
    first: float | None = None
    async for event in run_agent(agent, [{"role": "user", "content": "hi"}], session, True, None, client=client):
        if event["type"] == "content_delta" and first is None:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


async def main(runs: int) -> None:
    plain = Agent(name="Plain", model="m")
    guarded = {
        "sentence": Agent(name="Sentence", model="m", guardrails=[AnswerGuardrail(harmless)]),
        "every 200 chars": Agent(name="Chars", model="m", guardrails=[AnswerGuardrail(harmless, checkpoint=200)]),
        "whole answer": Agent(name="Whole", model="m", guardrails=[AnswerGuardrail(harmless, checkpoint="answer")]),
    }
    rows: list[tuple[str, Any, Any]] = []
    with TestServer() as server, tempfile.TemporaryDirectory() as folder:
        client = ModelClient(base_url=server.base_url, api_key="bench")
        for name, agent in [("no answer guardrail", plain), *guarded.items()]:
            await one(agent, server, client, folder, -1)  # warm up
            times = [await one(agent, server, client, folder, n) for n in range(runs)]
            rows.append((name, statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)))
    base_first, base_total = rows[0][1], rows[0][2]
    print(f"{'answer guardrail':<22}{'first token ms':>16}{'added':>10}{'whole answer ms':>18}{'added':>10}")
    for name, first, total in rows:
        print(
            f"{name:<22}{first * 1000:>16.2f}{(first - base_first) * 1000:>+10.2f}"
            f"{total * 1000:>18.2f}{(total - base_total) * 1000:>+10.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
