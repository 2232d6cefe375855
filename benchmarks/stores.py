"""How fast each conversation store appends and loads, measured the way a run uses it.

Four numbers per store, because they are what a run pays for:

* **appends/s**: one ``add_items([message])`` after another, awaited in turn, on one conversation.
  The run loop stores every message and journal record as it happens, so this is its write rate.
* **load 10k**: ``get_items()`` on a 10,000-message conversation by a *fresh* session object, the
  cost of resuming a long conversation in a new request: nothing is cached in the session, while
  the process-wide resources a store keeps (SQLite's open connection, PostgreSQL's pool) are warm.
* **W1 s**: the harness's W1 through ``run_agent`` (``--w1-conversations`` x ``--w1-turns`` user
  turns, two model calls and one tool call each, against the fake server in its own process), with
  this store behind every turn, the median of ``--repeats`` runs. Issue 12 asks that the database
  stores stay within 2x FileSession.
* **W3 ms/turn**: the median turn on a conversation already holding ``--w3-history`` messages, the
  same session object turn after turn, as a server holding a chat open would.

Run ``python -m benchmarks.stores`` (``--help`` for sizes; ``--quick`` for a smoke run). PostgreSQL
is measured when it answers at ``--postgres-url`` (default: ``TIMESTEP_BENCH_POSTGRES_URL`` or the
test database), in tables with a throw-away prefix that are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.adapters.timestep import TimestepConversation, _agent
from benchmarks.common import API_KEY, history
from benchmarks.server import fake_server
from benchmarks.worker import checked_turn
from timestep import ModelClient
from timestep.sessions import FileSession, PostgresSession, Session, SQLiteSession

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
INSTRUCTIONS = "You are a helpful assistant."

Factory = Callable[[str], Session]


def message(n: int) -> dict[str, Any]:
    return {"role": "user" if n % 2 else "assistant", "content": f"message {n}: " + "lorem ipsum dolor sit amet " * 8}


async def appends_per_second(make: Factory, count: int) -> float:
    session = make(f"appends-{uuid.uuid4().hex[:8]}")
    await session.add_items([message(0)])  # open files, connections and schema outside the timing
    started = time.perf_counter()
    for n in range(count):
        await session.add_items([message(n)])
    return count / (time.perf_counter() - started)


async def load_seconds(make: Factory, messages: int, repeats: int) -> float:
    conv = f"load-{uuid.uuid4().hex[:8]}"
    writer = make(conv)
    for start in range(0, messages, 1000):
        await writer.add_items([message(n) for n in range(start, min(start + 1000, messages))])
    del writer
    times = []
    for _ in range(repeats):
        gc.collect()  # drop the previous session object and its cache
        started = time.perf_counter()
        items = await make(conv).get_items()
        times.append(time.perf_counter() - started)
        assert len(items) == messages + 1, len(items)
    return statistics.median(times)


async def w1_seconds(make: Factory, client: ModelClient, conversations: int, turns: int) -> float:
    agent = _agent()
    warm = TimestepConversation(agent, client, make(f"warm-{uuid.uuid4().hex[:8]}"))
    await checked_turn(warm, "Warmup", stream=False, exact_tool_count=True)
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for c in range(conversations):
        conversation = TimestepConversation(agent, client, make(f"w1-{run}-{c}"))
        for t in range(turns):
            await checked_turn(conversation, f"City{c}T{t}", stream=False, exact_tool_count=True)
    return time.perf_counter() - started


async def w3_turn_seconds(make: Factory, client: ModelClient, messages: int, turns: int) -> float:
    conversation = TimestepConversation(_agent(), client, make(f"w3-{uuid.uuid4().hex[:8]}"))
    for start in range(0, messages, 1000):
        await conversation.prefill(history(min(1000, messages - start)))
    await checked_turn(conversation, "Warmup", stream=False, exact_tool_count=True)
    times = []
    for t in range(turns):
        started = time.perf_counter()
        await checked_turn(conversation, f"Long{t}", stream=False, exact_tool_count=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def postgres_reachable(url: str) -> bool:
    try:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


async def measure(args: argparse.Namespace, model_url: str) -> list[tuple[str, float, float, float, float]]:
    root = Path(tempfile.mkdtemp(prefix="timestep-bench-"))
    stores: list[tuple[str, Factory]] = [
        ("FileSession", lambda conv: FileSession("bench", conv, INSTRUCTIONS, root / "files")),
        ("SQLiteSession", lambda conv: SQLiteSession("bench", conv, INSTRUCTIONS, root / "bench.db")),
    ]
    prefix = f"bench_{uuid.uuid4().hex[:8]}_"
    url = args.postgres_url
    with_postgres = await postgres_reachable(url)
    if with_postgres:
        stores.append(
            ("PostgresSession", lambda conv: PostgresSession("bench", conv, INSTRUCTIONS, url=url, table_prefix=prefix))
        )
    else:
        print(f"(PostgreSQL not reachable at {url}: skipped)")
    rows = []
    client = ModelClient(base_url=model_url, api_key=API_KEY)
    try:
        for name, make in stores:
            rate = await appends_per_second(make, args.appends)
            load = await load_seconds(make, args.messages, args.repeats)
            w1 = statistics.median(
                [await w1_seconds(make, client, args.w1_conversations, args.w1_turns) for _ in range(args.repeats)]
            )
            w3 = await w3_turn_seconds(make, client, args.w3_history, args.w3_turns)
            rows.append((name, rate, load, w1, w3))
    finally:
        await client.aclose()
        if with_postgres:
            import asyncpg

            await PostgresSession.close_pools()
            conn = await asyncpg.connect(url)
            tables = ", ".join(f"{prefix}{t}" for t in ("items", "conversations", "migrations", "leases"))
            await conn.execute(f"DROP TABLE IF EXISTS {tables}")
            await conn.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=2000, help="sequential single-item appends (default 2000)")
    parser.add_argument("--messages", type=int, default=10_000, help="conversation length to load (default 10000)")
    parser.add_argument("--repeats", type=int, default=5, help="loads and W1 runs to take the median of (default 5)")
    parser.add_argument("--w1-conversations", type=int, default=50, help="W1 conversations (default 50)")
    parser.add_argument("--w1-turns", type=int, default=5, help="W1 turns per conversation (default 5)")
    parser.add_argument("--w3-history", type=int, default=10_000, help="W3 stored messages (default 10000)")
    parser.add_argument("--w3-turns", type=int, default=5, help="W3 timed turns, median reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--postgres-url", default=os.environ.get("TIMESTEP_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)
    if args.quick:
        args.appends, args.messages, args.repeats = 50, 200, 1
        args.w1_conversations, args.w1_turns, args.w3_history, args.w3_turns = 2, 2, 200, 2
    with fake_server() as server:
        rows = asyncio.run(measure(args, server.url))
    load_title = f"load {args.messages / 1000:g}k ms"
    w3_title = f"W3x{args.w3_history / 1000:g}k ms/turn"
    print(f"{'store':<16} {'appends/s':>10} {load_title:>13} {'W1 s':>8} {w3_title:>16}")
    file_w1, file_w3 = rows[0][3], rows[0][4]
    for name, rate, load, w1, w3 in rows:
        print(
            f"{name:<16} {rate:>10,.0f} {load * 1000:>13.1f} {w1:>8.2f} {w3 * 1000:>16.2f}"
            f"   (W1 {w1 / file_w1:.2f}x, W3 {w3 / file_w3:.2f}x FileSession)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
