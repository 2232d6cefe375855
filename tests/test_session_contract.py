"""One contract, every store: FileSession, SQLiteSession and PostgresSession must behave alike.

A run only ever talks to the :class:`~timestep.sessions.Session` protocol, so a store that differs
from the others in any way a test here can see is a store that would lose, reorder or duplicate
something in production. Each test runs once per store (``store_and_spec`` is parametrised), through
the same :class:`~timestep.sessions.Store` face the command line uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests import stores_fixtures as fixtures
from tests.stores_fixtures import as_json_list, child, drop_tables, finish, payment_agent, require_postgres, unique
from timestep import ConfigurationError, SessionCorruptError, SessionUnavailableError
from timestep.sessions import FileSession, PostgresSession, Session, SQLiteSession, Store, open_store
from timestep.sessions.stores import FileStore, PostgresStore, SQLiteStore

store_and_spec = fixtures.store_and_spec  # one store of each kind per test
pg_prefix = fixtures.pg_prefix

SYSTEM = "You are a careful assistant."
StoreAndSpec = tuple[Store, str]


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


# -- order, system message, limits ------------------------------------------------------------------


async def test_messages_and_journal_come_back_apart_in_order_and_verbatim(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    batches = [
        [user("one", zeta=1, alpha=2)],
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"journal": "started", "call": "c1", "args": {"b": 1, "a": [1, 2.5, None, True], "role": "x"}},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ],
        [{"journal": "interrupt", "z": {"y": {"x": "nested"}}}, user("two")],
    ]
    for batch in batches:
        await session.add_items(batch)
    everything = [item for batch in batches for item in batch]
    messages = [{"role": "system", "content": SYSTEM}, *(i for i in everything if "role" in i)]
    journal = [i for i in everything if "role" not in i]
    for reader in (session, store.session("assistant", session.conversation_id, SYSTEM)):  # cached and fresh
        items = await reader.get_items()
        assert items == messages
        assert as_json_list(items) == as_json_list(messages)  # key order too
        assert as_json_list(await reader.get_journal()) == as_json_list(journal)
    assert await session.get_items(limit=2) == messages[-2:]  # a limit counts messages, not records


async def test_a_session_is_named_like_an_agents_sdk_session_and_closes(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    session = store.session("assistant", conv, SYSTEM)
    assert session.session_id == conv == session.conversation_id
    await session.add_items([user("before")])
    await session.close()
    await session.close()  # idempotent
    await session.add_items([user("after")])  # still usable: the next call opens what it needs again
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("before"), user("after")]
    assert await store.session("assistant", conv).get_journal() == []


async def test_system_message_is_first_and_reported_before_anything_is_stored(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    session = store.session("assistant", conv, SYSTEM)
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}]
    assert await session.get_items(limit=1) == [{"role": "system", "content": SYSTEM}]
    await session.add_items([user("hi")])
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("hi")]
    # A conversation without instructions has no system message at all.
    bare = store.session("assistant", unique())
    assert await bare.get_items() == []
    await bare.add_items([user("hi")])
    assert await bare.get_items() == [user("hi")]


async def test_limit_returns_the_latest_items_in_order(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    await session.add_items([user(f"m{n}") for n in range(10)])
    assert await session.get_items(limit=3) == [user("m7"), user("m8"), user("m9")]
    assert await session.get_items(limit=1) == [user("m9")]
    assert await session.get_items(limit=0) == []
    everything = await session.get_items()
    assert len(everything) == 11
    assert await session.get_items(limit=11) == everything
    assert await session.get_items(limit=500) == everything


# -- pop and clear ----------------------------------------------------------------------------------


async def test_pop_item_removes_the_latest_message_with_its_journal_but_never_the_system_message(
    store_and_spec: StoreAndSpec,
) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    assert await session.pop_item() is None  # nothing stored yet
    await session.add_items([{"journal": "started", "call": "w"}, user("a"), {"journal": "started", "call": "x"}])
    await session.add_items([user("b"), {"journal": "interrupt", "call": "y"}, {"journal": "decision", "call": "y"}])
    assert await session.pop_item() == user("b")
    assert await session.get_journal() == [{"journal": "started", "call": "w"}, {"journal": "started", "call": "x"}]
    assert await session.pop_item() == user("a")
    assert await session.get_journal() == [{"journal": "started", "call": "w"}]  # written before any message
    assert await session.pop_item() is None
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}]
    await session.add_items([user("c")])  # appending after pops continues normally
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("c")]
    assert await store.session("assistant", session.conversation_id).get_journal() == [
        {"journal": "started", "call": "w"}
    ]


async def test_pop_item_without_a_system_message_empties_the_conversation(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique())
    assert await session.pop_item() is None
    await session.add_items([user("a"), user("b")])
    assert await session.pop_item() == user("b")
    assert await session.pop_item() == user("a")
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_an_emptied_conversation_gets_the_system_message_with_its_next_items(
    store_and_spec: StoreAndSpec,
) -> None:
    store, _ = store_and_spec
    conv = unique()
    bare = store.session("assistant", conv)
    await bare.add_items([user("a"), user("b")])
    assert await bare.pop_item() == user("b")
    assert await bare.pop_item() == user("a")
    instructed = store.session("assistant", conv, SYSTEM)
    await instructed.add_items([user("c")])
    assert await bare.get_items() == [{"role": "system", "content": SYSTEM}, user("c")]
    await instructed.add_items([user("d")])  # not empty any more: no second system message
    assert await bare.get_items() == [{"role": "system", "content": SYSTEM}, user("c"), user("d")]


async def test_clear_session_keeps_the_system_message_and_drops_the_journal(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    await session.clear_session()  # nothing stored: a no-op
    await session.add_items([user(f"m{n}") for n in range(5)] + [{"journal": "started", "call": "c"}])
    await session.clear_session()
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}]
    assert await session.get_journal() == []
    await session.add_items([user("after")])
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("after")]
    bare = store.session("assistant", unique())
    await bare.add_items([user("x")])
    await bare.clear_session()
    assert await bare.get_items() == []


# -- content -------------------------------------------------------------------------------------------


async def test_unicode_and_large_messages_survive(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("助手 🤖", unique("对话 ✨"), SYSTEM)
    texts = [
        "emoji 🎉👩‍👩‍👧‍👦🏳️‍🌈",
        "中文、日本語、한국어",
        "עברית ومرحبا بالعالم",  # right-to-left scripts
        "control \x00 \x1f \u2028 \ud7ff quotes \"'` backslash \\",
        "x" * 1_000_000,  # 1 MB
        "é" * 300_000 + "🙂" * 100_000,  # large and multi-byte
    ]
    await session.add_items([user(t) for t in texts])
    reopened = store.session("助手 🤖", session.conversation_id, SYSTEM)
    items = await reopened.get_items()
    assert [i["content"] for i in items[1:]] == texts
    assert [c.conversation_id for c in await store.list_conversations()].count(session.conversation_id) == 1


async def test_an_item_that_is_not_json_is_refused_and_nothing_is_stored(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    await session.add_items([user("ok")])
    with pytest.raises(SessionCorruptError):
        await session.add_items([user("fine"), {"role": "user", "content": object()}])
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("ok")]


async def test_an_item_that_cannot_be_stored_as_utf8_is_refused(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    with pytest.raises(SessionCorruptError, match="utf-8"):
        await session.add_items([user("a lone surrogate \ud800")])
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}]


# -- concurrency -----------------------------------------------------------------------------------


async def test_fifty_concurrent_appends_lose_and_duplicate_nothing(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    await asyncio.gather(*(session.add_items([user(f"q{n}"), user(f"a{n}")]) for n in range(50)))
    items = await session.get_items()
    assert items[0] == {"role": "system", "content": SYSTEM}
    contents = [i["content"] for i in items[1:]]
    assert len(contents) == 100
    assert sorted(contents) == sorted([f"q{n}" for n in range(50)] + [f"a{n}" for n in range(50)])
    for k in range(0, 100, 2):  # every batch is stored whole, never interleaved with another
        assert contents[k][0] == "q" and contents[k + 1] == "a" + contents[k][1:]


APPENDER = """
async def main():
    agent, conv, tag, count = sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
    s = store()
    session = s.session(agent, conv, "shared system")
    await session.get_items()  # connect before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range(count):
        await session.add_items([{"role": "user", "content": f"{tag}-{n}"}])
    await s.aclose()
    print("done", flush=True)

asyncio.run(main())
"""


async def test_two_processes_appending_to_one_conversation(
    store_and_spec: StoreAndSpec, pg_prefix: str, request: pytest.FixtureRequest
) -> None:
    store, spec = store_and_spec
    kind = request.node.callspec.params["store_and_spec"]
    conv = unique()
    procs = [child(APPENDER, kind, spec, pg_prefix, "assistant", conv, tag, "200") for tag in ("A", "B")]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:  # both start writing at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert (await asyncio.to_thread(finish, p)).strip() == "done"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    items = await store.session("assistant", conv).get_items()
    assert items[0] == {"role": "system", "content": "shared system"}
    contents = [i["content"] for i in items[1:]]
    assert len(contents) == 400
    assert len(set(contents)) == 400
    for tag in ("A", "B"):
        assert [c for c in contents if c.startswith(tag + "-")] == [f"{tag}-{n}" for n in range(200)]


# -- naming, derive, listing, reopening --------------------------------------------------------------


ROUND_TRIP_NAMES = [
    "..",
    "/",
    "../../etc/passwd",
    "a/b\\c",
    ".hidden",
    " ",
    "  spaced  out  ",
    "tab\tand\nnewline",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u202eRTL",
    "emoji 🤖🎉👩‍👩‍👧",
    "%41 not an escape",
    "a~b",
    "x" * 200,  # the longest name every store takes
]
REFUSED_NAMES = ["", "\x00", "nul\x00byte", "\udc80", "lone \ud800 surrogate", "x" * 201, "🤖" * 17]


@pytest.mark.parametrize("name", ROUND_TRIP_NAMES, ids=range(len(ROUND_TRIP_NAMES)))
async def test_hostile_names_round_trip_exactly(store_and_spec: StoreAndSpec, name: str) -> None:
    store, _ = store_and_spec
    conv = f"{name[:150]}{unique()}" if len(name) < 150 else name
    pairs = [(name, unique()), ("assistant", conv)]
    for agent, conversation in pairs:
        await store.session(agent, conversation, SYSTEM).add_items([user(f"{agent}/{conversation}")])
    listed = {(c.agent_name, c.conversation_id) for c in await store.list_conversations()}
    for agent, conversation in pairs:
        assert (agent, conversation) in listed
        again = store.session(agent, conversation)
        assert (await again.get_items())[1] == user(f"{agent}/{conversation}")
        assert await store.delete(agent, conversation) is True


@pytest.mark.parametrize("name", REFUSED_NAMES, ids=range(len(REFUSED_NAMES)))
async def test_names_no_store_can_round_trip_are_refused_when_the_session_is_made(
    store_and_spec: StoreAndSpec, name: str
) -> None:
    from timestep import SessionNameError

    store, _ = store_and_spec
    with pytest.raises(SessionNameError):
        store.session(name, "conv")
    with pytest.raises(SessionNameError):
        store.session("assistant", name)


async def test_same_conversation_id_under_two_agents_is_two_conversations(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    first = store.session("Weather", conv, "weather")
    second = store.session("Billing", conv, "billing")
    await first.add_items([user("rain?")])
    await second.add_items([user("refund?")])
    assert await first.get_items() == [{"role": "system", "content": "weather"}, user("rain?")]
    assert await second.get_items() == [{"role": "system", "content": "billing"}, user("refund?")]
    await first.clear_session()
    assert await second.get_items() == [{"role": "system", "content": "billing"}, user("refund?")]
    listed = {(c.agent_name, c.conversation_id) for c in await store.list_conversations()}
    assert {("Weather", conv), ("Billing", conv)} <= listed


async def test_derive_gives_a_working_session_in_the_same_store(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    parent = store.session("Triage", conv, SYSTEM)
    delegate = parent.derive("Billing", f"{conv}~triage", "You handle billing.")
    assert type(delegate) is type(parent)
    assert isinstance(delegate, Session)
    assert (delegate.agent_name, delegate.conversation_id) == ("Billing", f"{conv}~triage")
    await delegate.add_items([user("refund order 7")])
    again = store.session("Billing", f"{conv}~triage", "You handle billing.")
    assert await again.get_items() == [{"role": "system", "content": "You handle billing."}, user("refund order 7")]
    assert ("Billing", f"{conv}~triage") in {
        (c.agent_name, c.conversation_id) for c in await store.list_conversations()
    }


async def test_list_conversations_counts_messages_not_journal_records(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    older, newer = unique("older"), unique("newer")
    await store.session("assistant", older, SYSTEM).add_items([user("a")])
    await asyncio.sleep(0.02)  # distinct update times, even on coarse clocks
    await store.session("assistant", newer, SYSTEM).add_items(
        [user("b"), {"journal": "started", "call": "c"}, {"role": "tool", "tool_call_id": "c", "content": "r"}]
    )
    listed = [c for c in await store.list_conversations() if c.conversation_id in (older, newer)]
    assert [c.conversation_id for c in listed] == [newer, older]  # most recently updated first
    counts = {c.conversation_id: c.message_count for c in listed}
    assert counts == {older: 2, newer: 3}  # system + messages; the journal record is not a message
    assert all(c.agent_name == "assistant" and c.updated_at.tzinfo is not None for c in listed)


async def test_a_new_session_object_sees_everything(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    writer = store.session("assistant", conv, SYSTEM)
    for n in range(20):
        await writer.add_items([user(f"m{n}")])
    reader = store.session("assistant", conv, SYSTEM)
    assert await reader.get_items() == await writer.get_items()
    await reader.add_items([user("from the reader")])
    assert (await writer.get_items())[-1] == user("from the reader")
    assert await writer.pop_item() == user("from the reader")
    assert len(await reader.get_items()) == 21


async def test_delete_removes_a_conversation_completely(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv, other = unique(), unique()
    await store.session("assistant", conv, SYSTEM).add_items([user("bye")])
    await store.session("assistant", other, SYSTEM).add_items([user("stay")])
    assert await store.delete("assistant", conv) is True
    assert await store.delete("assistant", conv) is False
    listed = {c.conversation_id for c in await store.list_conversations()}
    assert conv not in listed and other in listed
    fresh = store.session("assistant", conv, "new instructions")
    assert await fresh.get_items() == [{"role": "system", "content": "new instructions"}]
    await fresh.add_items([user("again")])
    assert await fresh.get_items() == [{"role": "system", "content": "new instructions"}, user("again")]
    assert await store.session("assistant", other).get_items() == [{"role": "system", "content": SYSTEM}, user("stay")]


async def test_deleting_with_delegates_takes_only_its_own_delegates(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    victim = unique("victim")
    own = [("A", victim), ("B", f"{victim}~a"), ("C", f"{victim}~a~b"), ("D", f"{victim}~a~b~c")]
    others = [
        ("Other", f"{victim}~a"),  # named like a delegate of A's, but A never transferred to Other
        ("Other", f"{victim}~abc"),  # another agent whose slug starts like A's
        ("B", f"{victim}~ab"),
        ("B", f"{victim}~other"),  # the delegate of another agent's side of the conversation
        ("Other", victim),
        ("A", f"{victim}x"),
        ("A", f"x{victim}~a"),
    ]
    # Each side of the chain transferred to the next, as a run stores it.
    for (agent, conversation), (callee, _) in zip(own, [*own[1:], ("nobody", "")], strict=True):
        call = {
            "id": f"call_{agent}",
            "type": "function",
            "function": {"name": f"transfer_to_{callee.lower()}", "arguments": "{}"},
        }
        await store.session(agent, conversation).add_items(
            [user("hi"), {"role": "assistant", "content": None, "tool_calls": [call]}]
        )
    for agent, conversation in others:
        await store.session(agent, conversation).add_items([user("hi")])
    delegates = {(c.agent_name, c.conversation_id) for c in await store.delegates("A", victim)}
    assert delegates == set(own[1:])
    deleted = await store.delete_with_delegates("A", victim)
    assert {(c.agent_name, c.conversation_id) for c in deleted} == set(own)
    left = {(c.agent_name, c.conversation_id) for c in await store.list_conversations()}
    assert set(others) <= left and not set(own) & left


async def test_describe_names_the_store(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    text = store.describe()
    assert text and "\n" not in text
    assert any(word in text for word in ("folder", "SQLite", "PostgreSQL"))


# -- errors ------------------------------------------------------------------------------------------


async def test_unreachable_postgres_names_the_store_and_the_conversation() -> None:
    session = PostgresSession("assistant", "conv-42", url="postgresql://someone:s3cret@127.0.0.1:1/test")
    with pytest.raises(SessionUnavailableError) as caught:
        await session.get_items()
    text = str(caught.value)
    assert "PostgreSQL" in text and "127.0.0.1:1" in text
    assert "'assistant'/'conv-42'" in text
    assert "s3cret" not in text
    with pytest.raises(SessionUnavailableError, match="conv-42"):
        await session.add_items([user("hi")])
    await PostgresSession.close_pools()


async def test_a_corrupt_postgres_row_is_reported_with_its_seq(pg_prefix: str) -> None:
    url = require_postgres()
    conv = unique()
    session = PostgresSession("assistant", conv, SYSTEM, url=url, table_prefix=pg_prefix)
    try:
        await session.add_items([user("fine"), user("to be damaged")])
        import asyncpg

        db = await asyncpg.connect(url)
        try:
            await db.execute(
                f"UPDATE {pg_prefix}items SET data = 'garbage{{' WHERE seq = 3 AND conversation = "
                f"(SELECT id FROM {pg_prefix}conversations WHERE conversation_id = $1)",
                conv,
            )
        finally:
            await db.close()
        with pytest.raises(SessionCorruptError) as caught:
            # A session that has not read the row yet: one that has keeps it as it read it (its cache).
            await session.derive(session.agent_name, conv, SYSTEM).get_items()
        assert "PostgreSQL" in str(caught.value) and conv in str(caught.value) and "seq 3" in str(caught.value)
        assert caught.value.line == 3
        with pytest.raises(SessionCorruptError):
            await session.pop_item()
    finally:
        await PostgresSession.close_pools()


async def test_a_corrupt_sqlite_row_is_reported_with_its_seq(tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    session = SQLiteSession("assistant", "conv-1", SYSTEM, db_path)
    await session.add_items([user("fine"), user("to be damaged")])
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE items SET data = '[1, 2]' WHERE seq = 3")
    db.close()
    with pytest.raises(SessionCorruptError) as caught:
        await SQLiteSession("assistant", "conv-1", SYSTEM, db_path).get_items()
    text = str(caught.value)
    assert "SQLite" in text and str(db_path) in text and "conv-1" in text and "seq 3" in text
    assert "expected a JSON object" in text


async def test_a_file_that_is_not_an_sqlite_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    session = SQLiteSession("assistant", "conv-1", SYSTEM, path)
    with pytest.raises(SessionUnavailableError, match="not an SQLite database") as caught:
        await session.get_items()
    assert str(path) in str(caught.value) and "conv-1" in str(caught.value)
    with pytest.raises(SessionUnavailableError, match="not an SQLite database"):
        SQLiteSession.list_conversations(path)
    assert path.read_text().startswith("these are my notes")  # untouched


async def test_sqlite_writes_do_not_block_the_event_loop(tmp_path: Path) -> None:
    session = SQLiteSession("assistant", "big", SYSTEM, tmp_path / "c.db")
    await session.get_items()  # open the database first: measure the write alone
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    batch = [user("x" * 2000 + str(n)) for n in range(20_000)]  # ~40 MB
    started = time.perf_counter()
    await session.add_items(batch)
    items = await session.get_items()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    during = [t for t in ticks if t >= started]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(items) == 20_001
    assert elapsed > 0.2, "the batch was too small to show anything"
    # Had the work run on the loop, the ticker would have stopped for the whole write and read.
    assert len(during) >= 20
    assert max(gaps) < elapsed / 3, (max(gaps), elapsed)


def test_names_that_cannot_name_a_conversation_are_refused(tmp_path: Path) -> None:
    from timestep import SessionNameError

    with pytest.raises(SessionNameError):
        SQLiteSession("", "conv", None, tmp_path / "c.db")
    with pytest.raises(SessionNameError):
        SQLiteSession("agent", "a\x00b", None, tmp_path / "c.db")
    with pytest.raises(SessionNameError):
        PostgresSession("agent", "", url="postgresql://x@127.0.0.1/test")


def test_postgres_session_needs_exactly_one_of_url_and_pool() -> None:
    with pytest.raises(ConfigurationError, match="url="):
        PostgresSession("agent", "conv")
    with pytest.raises(ConfigurationError, match="table_prefix"):
        PostgresSession("agent", "conv", url="postgresql://x@127.0.0.1/test", table_prefix="bad; drop table")


async def test_postgres_sessions_share_one_pool_per_url_and_loop(pg_prefix: str) -> None:
    from timestep.sessions import postgres

    url = require_postgres()
    try:
        first = PostgresSession("a", unique(), url=url, table_prefix=pg_prefix)
        second = first.derive("b", unique(), None)
        await asyncio.gather(first.get_items(), second.get_items(), first.get_items())
        assert len(postgres._pools[asyncio.get_running_loop()]) == 1
        assert await postgres.shared_pool(url) is await postgres.shared_pool(url)
    finally:
        await PostgresSession.close_pools()
    assert not postgres._pools.get(asyncio.get_running_loop())


async def test_postgres_session_with_a_pool_of_your_own(pg_prefix: str) -> None:
    import asyncpg

    url = require_postgres()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        conv = unique()
        session = PostgresSession("assistant", conv, SYSTEM, pool=pool, table_prefix=pg_prefix)
        await session.add_items([user("hi")])
        delegate = session.derive("helper", conv + "~assistant", None)
        assert delegate.pool is pool
        await delegate.add_items([user("sub")])
        listed = await PostgresSession.list_conversations(pool=pool, table_prefix=pg_prefix)
        assert {("assistant", conv), ("helper", conv + "~assistant")} <= {
            (c.agent_name, c.conversation_id) for c in listed
        }
    finally:
        await pool.close()


async def test_postgres_schema_creation_is_safe_when_two_processes_start_at_once() -> None:
    url = require_postgres()
    prefix = f"ts_race_{unique('p').replace('-', '_')}_"
    code = """
async def main():
    s = store()
    print("ready", flush=True)
    sys.stdin.readline()
    await s.session("a", sys.argv[4]).add_items([{"role": "user", "content": sys.argv[4]}])
    await s.aclose()
    print("done", flush=True)

asyncio.run(main())
"""
    procs = [child(code, "postgres", url, prefix, f"c{n}") for n in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert (await asyncio.to_thread(p.stdout.readline)).strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert (await asyncio.to_thread(finish, p)).strip() == "done"
        listed = await PostgresSession.list_conversations(url=url, table_prefix=prefix)
        assert sorted(c.conversation_id for c in listed) == ["c0", "c1", "c2"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        await PostgresSession.close_pools()
        await asyncio.to_thread(drop_tables, url, prefix)


def test_sqlite_schema_is_recorded_as_named_migrations(tmp_path: Path) -> None:
    from timestep.sessions import sqlite as sqlite_store

    conn = sqlite_store.open_connection(tmp_path / "m.db")
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
        assert names == [name for name, _ in sqlite_store.MIGRATIONS]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sqlite_store.migrate(conn) == []  # already up to date: nothing applied twice
    finally:
        conn.close()


# -- open_store ----------------------------------------------------------------------------------------


def test_open_store_reads_every_spelling(tmp_path: Path) -> None:
    folder = open_store(str(tmp_path / "convs"))
    assert isinstance(folder, FileStore) and isinstance(folder.session("a", "c"), FileSession)
    assert isinstance(open_store(tmp_path / "convs"), FileStore)  # a Path is a folder too
    absolute = open_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(absolute, SQLiteStore) and absolute.db_path == tmp_path / "x.db"
    assert isinstance(absolute.session("a", "c"), SQLiteSession)
    assert open_store("sqlite:relative/x.db").db_path == Path("relative/x.db")  # type: ignore[attr-defined]
    assert open_store(f"sqlite://localhost{tmp_path}/y.db").db_path == tmp_path / "y.db"  # type: ignore[attr-defined]
    for url in ("postgresql://u:pw@db.example:5432/app", "postgres://u@db.example/app"):
        pg = open_store(url)
        assert isinstance(pg, PostgresStore)
        assert isinstance(pg.session("a", "c"), PostgresSession)
        assert "pw" not in pg.describe() and "db.example" in pg.describe()


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "a folder path"),
        ("   ", "a folder path"),
        ("mysql://u@h/db", "unknown store kind 'mysql'"),
        ("redis://localhost", "unknown store kind 'redis'"),
        ("sqlite:", "names no file"),
        ("sqlite://otherhost/x.db", "names a host"),
    ],
)
def test_open_store_rejects_anything_else_in_one_line(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(spec)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_open_store_on_a_database_file_suggests_the_sqlite_spelling(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ConfigurationError, match=r"did you mean sqlite:"):
        open_store(str(path))
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        open_store(str(other))


async def test_file_store_delete_and_listing_run_off_the_loop(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "convs"))
    await store.session("a b", "c/1", SYSTEM).add_items([user("x")])
    assert [(c.agent_name, c.conversation_id, c.message_count) for c in await store.list_conversations()] == [
        ("a b", "c/1", 2)
    ]
    assert await store.delete("a b", "c/1") is True
    assert await store.list_conversations() == []
    assert not (tmp_path / "convs" / "a%20b").exists()  # the emptied agent folder goes too


def test_json_helper_is_order_sensitive() -> None:
    assert as_json_list([{"a": 1, "b": 2}]) != as_json_list([{"b": 2, "a": 1}])
    assert json.loads(as_json_list([{"a": 1}])[0]) == {"a": 1}


# -- one run at a time per conversation: lock() --------------------------------------------------------
#
# The run loop holds ``session.lock()`` for a whole run, so that two runs of one conversation (two
# processes resuming the same approval, a person clicking "approve" twice) take turns instead of both
# running a tool. Every store must give the same guarantees, across processes, and must never leave a
# conversation stuck behind a holder that died.

LEASE_TTL = 1.0  # what the killed holder below uses, so the test waits seconds, not the default 15


def short_lease(session: Session, ttl: float) -> Session:
    """The database stores free a dead holder's conversation when its lease expires; shorten that."""
    if hasattr(session, "lease_ttl"):
        session.lease_ttl = ttl
    return session


async def test_a_second_lock_waits_for_the_first_and_gets_it_once_released(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    order: list[str] = []
    held, release, waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with store.session("assistant", conv).lock(timeout=30):
            order.append("first in")
            held.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await held.wait()
        waiting.set()
        async with store.session("assistant", conv).lock(timeout=30):
            order.append("second in")

    holder = asyncio.create_task(first())
    waiter = asyncio.create_task(second())
    await asyncio.wait_for(waiting.wait(), 30)
    await asyncio.sleep(0.3)  # several polls' worth: a lock that did not exclude would have let it in
    assert order == ["first in"] and not waiter.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, waiter), 30)
    assert order == ["first in", "first out", "second in"]


async def test_a_lock_held_elsewhere_times_out_naming_the_conversation(store_and_spec: StoreAndSpec) -> None:
    from timestep import SessionBusyError

    store, _ = store_and_spec
    conv = unique("busy")
    holder = store.session("Booker", conv)
    async with holder.lock():
        for other in (store.session("Booker", conv), holder):  # another session object, or the same one
            with pytest.raises(SessionBusyError) as caught:
                async with other.lock(timeout=0.05):
                    pytest.fail("two holders of one conversation at once")
            text = str(caught.value)
            assert conv in text and "Booker" in text and "still being run elsewhere" in text
    async with store.session("Booker", conv).lock(timeout=10):  # released on exit: free again at once
        pass


async def test_locks_of_other_conversations_and_other_agents_do_not_wait(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    async with (
        store.session("assistant", conv).lock(timeout=10),
        store.session("assistant", conv + "-other").lock(timeout=10),  # the same agent, another conversation
        store.session("helper", conv).lock(timeout=10),  # the same conversation id, another agent
        store.session("assistant", f"{conv}~helper").lock(timeout=10),  # a handoff's delegate
    ):
        pass
    # Names that would collide if a store joined them carelessly: ("a b", "c") and ("a", "b c").
    async with store.session("a b", f"c {conv}").lock(timeout=10), store.session("a", f"b c {conv}").lock(timeout=10):
        pass


async def test_a_lock_outlives_its_lease_ttl_while_held(store_and_spec: StoreAndSpec) -> None:
    from timestep import SessionBusyError

    store, _ = store_and_spec
    conv = unique()
    async with short_lease(store.session("assistant", conv), 0.3).lock():
        await asyncio.sleep(1.2)  # four lease lifetimes: only renewals keep it
        with pytest.raises(SessionBusyError):
            async with store.session("assistant", conv).lock(timeout=0.05):
                pytest.fail("a long run lost its lock")


async def test_a_cancelled_holder_or_waiter_gives_the_lock_back(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    held = asyncio.Event()

    async def hold() -> None:
        async with store.session("assistant", conv).lock(timeout=10):
            held.set()
            await asyncio.sleep(600)

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(held.wait(), 30)
    waiter = asyncio.create_task(store.session("assistant", conv).lock(timeout=60).__aenter__())
    await asyncio.sleep(0.1)
    for task in (waiter, holder):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Well within the default lease lifetime (15 s): given back on the way out, not left to expire.
    async with store.session("assistant", conv).lock(timeout=5):
        pass


LOCK_HOLDER = """
async def main():
    session = store().session("assistant", sys.argv[4])
    if hasattr(session, "lease_ttl"):
        session.lease_ttl = float(sys.argv[5])
    async with session.lock(timeout=30):
        print("locked", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_holder_killed_with_sigkill_does_not_keep_the_conversation(
    store_and_spec: StoreAndSpec, pg_prefix: str, request: pytest.FixtureRequest
) -> None:
    import signal

    from timestep import SessionBusyError

    store, spec = store_and_spec
    kind = request.node.callspec.params["store_and_spec"]
    conv = unique("crash")
    proc = child(LOCK_HOLDER, kind, spec, pg_prefix, conv, str(LEASE_TTL))
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == "locked", proc.communicate(timeout=30)[1]
        session = store.session("assistant", conv)
        with pytest.raises(SessionBusyError):  # held by the other process
            async with session.lock(timeout=0.05):
                pytest.fail("the lock did not exclude another process")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
        # Free at once (files: the kernel drops the lock) or once the lease expires (databases).
        async with session.lock(timeout=LEASE_TTL + 10):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def test_two_resumes_of_one_approval_run_the_tool_once(
    store_and_spec: StoreAndSpec, server: Any, client: Any, tmp_path: Path
) -> None:
    from timestep import run_agent
    from timestep.testing import Reply, ToolCall

    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    conv = unique()
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "bob", "amount": 5}, id="call_pay")))
    paused = await run_agent(
        agent, [user("Pay bob 5")], store.session("Payer", conv, agent.instructions), client=client
    )
    assert paused["status"] == "interrupted", paused
    server.script(Reply.text("Sent 5 to bob.", delay=0.2))  # the winner is still running when the other arrives
    outcomes = await asyncio.gather(
        *(
            run_agent(
                agent, [], store.session("Payer", conv, agent.instructions), approvals={"call_pay": True}, client=client
            )
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ApprovalError", "dict"], outcomes
    done = next(o for o in outcomes if isinstance(o, dict))
    assert done["status"] == "completed" and done["final_output"] == "Sent 5 to bob."
    assert ledger.read_text().splitlines() == ['{"to": "bob", "amount": 5}']
    journal = await store.session("Payer", conv).get_journal()
    assert sum(1 for i in journal if i.get("journal") == "decision") == 1
    assert sum(1 for i in journal if i.get("journal") == "started") == 1


RESUMER = """
from pathlib import Path
from timestep import ApprovalError, ModelClient, run_agent
from tests.stores_fixtures import payment_agent

async def main():
    conv, ledger, base_url = sys.argv[4], sys.argv[5], sys.argv[6]
    s = store()
    agent = payment_agent(Path(ledger))
    client = ModelClient(base_url=base_url, api_key="test")
    session = s.session("Payer", conv, agent.instructions)
    await session.get_items()  # connected and warmed up before the go, so both really start together
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        result = await run_agent(agent, [], session, approvals={"call_pay": True}, client=client)
        outcome = result["status"]
    except ApprovalError:
        outcome = "ApprovalError"
    await client.aclose()
    await s.aclose()
    print(json.dumps(outcome), flush=True)

asyncio.run(main())
"""


async def test_two_processes_resuming_one_approval_run_the_tool_once(
    store_and_spec: StoreAndSpec,
    pg_prefix: str,
    server: Any,
    client: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from timestep import run_agent
    from timestep.testing import Reply, ToolCall

    store, spec = store_and_spec
    kind = request.node.callspec.params["store_and_spec"]
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    conv = unique()
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "ann", "amount": 12}, id="call_pay")))
    paused = await run_agent(
        agent, [user("Pay ann 12")], store.session("Payer", conv, agent.instructions), client=client
    )
    assert paused["status"] == "interrupted", paused
    server.script(Reply.text("Sent 12 to ann.", delay=0.3))
    procs = [child(RESUMER, kind, spec, pg_prefix, conv, str(ledger), server.base_url) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 60)
            assert line.strip() == "ready", p.communicate(timeout=30)[1]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outcomes = [json.loads((await asyncio.to_thread(finish, p)).strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(outcomes) == ["ApprovalError", "completed"]
    assert ledger.read_text().splitlines() == ['{"to": "ann", "amount": 12}']


async def test_postgres_locks_hold_no_pooled_connection(pg_prefix: str) -> None:
    import asyncpg

    url = require_postgres()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        sessions = [PostgresSession("assistant", unique(), pool=pool, table_prefix=pg_prefix) for _ in range(6)]
        async with contextlib.AsyncExitStack() as stack:
            for session in sessions:  # three times as many runs in progress as the pool has connections
                await stack.enter_async_context(session.lock(timeout=10))
            for session in sessions:
                await asyncio.wait_for(session.add_items([user("still served")]), 10)
            assert pool.get_idle_size() >= 1
    finally:
        await pool.close()


def test_lease_ttl_must_be_positive_and_is_kept_by_derive(tmp_path: Path) -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), "15", True):
        with pytest.raises(ConfigurationError, match="lease_ttl"):
            SQLiteSession("a", "c", None, tmp_path / "c.db", lease_ttl=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="lease_ttl"):
            PostgresSession("a", "c", url="postgresql://x@127.0.0.1/test", lease_ttl=bad)  # type: ignore[arg-type]
    assert SQLiteSession("a", "c", None, tmp_path / "c.db").lease_ttl == 15.0
    assert SQLiteSession("a", "c", None, tmp_path / "c.db", lease_ttl=2).derive("b", "d", None).lease_ttl == 2.0
    pg = PostgresSession("a", "c", url="postgresql://x@127.0.0.1/test", lease_ttl=3)
    assert pg.derive("b", "d", None).lease_ttl == 3.0


async def test_an_sqlite_file_from_before_leases_gets_them_when_opened(tmp_path: Path) -> None:
    from timestep.sessions import sqlite as sqlite_store

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema as the first release left it
        db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        name, statements = sqlite_store.MIGRATIONS[0]
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO migrations VALUES (?, '2024-01-01T00:00:00+00:00')", (name,))
    db.close()
    session = SQLiteSession("assistant", "conv", SYSTEM, path)
    async with session.lock(timeout=5):
        await session.add_items([user("hi")])
    with sqlite3.connect(path) as db:
        assert {r[0] for r in db.execute("SELECT name FROM migrations")} == {n for n, _ in sqlite_store.MIGRATIONS}
        assert db.execute("SELECT count(*) FROM leases").fetchone() == (0,)  # given back on exit
    db.close()


async def test_postgres_tables_from_before_leases_get_them_on_first_use() -> None:
    import asyncpg

    from timestep.sessions import postgres

    url = require_postgres()
    prefix = f"ts_old_{unique('p').replace('-', '_')}_"
    db = await asyncpg.connect(url)
    try:
        async with db.transaction():  # the schema as the first release left it
            await db.execute(f"CREATE TABLE {prefix}migrations (name text PRIMARY KEY, applied_at timestamptz)")
            name, statements = postgres.MIGRATIONS[0]
            for statement in statements:
                await db.execute(statement.format(p=prefix))
            await db.execute(f"INSERT INTO {prefix}migrations VALUES ($1, now())", name)
        session = PostgresSession("assistant", "conv", SYSTEM, url=url, table_prefix=prefix)
        async with session.lock(timeout=5):
            await session.add_items([user("hi")])
        assert {r[0] for r in await db.fetch(f"SELECT name FROM {prefix}migrations")} == {
            n for n, _ in postgres.MIGRATIONS
        }
        assert await db.fetchval(f"SELECT count(*) FROM {prefix}leases") == 0  # given back on exit
    finally:
        await PostgresSession.close_pools()
        await db.close()
        await asyncio.to_thread(drop_tables, url, prefix)


# -- SQLite: what stays open, and nothing done by the garbage collector ---------------------------

MANY_DATABASES = """
import asyncio, gc, os, sys, tempfile
from pathlib import Path
from timestep.sessions import SQLiteSession

async def main(root, files, rounds):
    gc.set_threshold(50, 1, 1)  # collect cycles often, so a collection lands inside a thread-pool submit
    for _ in range(rounds):
        for n in range(files):
            session = SQLiteSession("a", "c", None, root / f"{n}.db")
            session.cycle = session  # only the cycle collector frees it
            await session.add_items([{"role": "user", "content": "hi"}])
    gc.collect()
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    print(len([f for f in open_files if f.endswith(".db")]), flush=True)

asyncio.run(main(Path(tempfile.mkdtemp()), int(sys.argv[1]), int(sys.argv[2])))
"""


def test_sqlite_sessions_on_many_files_never_hang_and_keep_few_open() -> None:
    """More files than stay open, sessions freed by the cycle collector: it once deadlocked at once."""
    import subprocess
    import sys

    from timestep.sessions import sqlite as sqlite_store

    proc = subprocess.run(
        [sys.executable, "-c", MANY_DATABASES, "40", "15"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) <= sqlite_store.KEEP_OPEN


async def test_sqlite_close_releases_the_connection_and_its_thread(tmp_path: Path) -> None:
    import os

    path = tmp_path / "c.db"
    session = SQLiteSession("assistant", "conv", SYSTEM, path)
    await session.add_items([user("hi")])

    def open_here() -> bool:
        return any(os.path.realpath(f"/proc/self/fd/{fd}") == str(path) for fd in os.listdir("/proc/self/fd"))

    assert open_here()
    await session.close()
    await asyncio.sleep(0.05)  # the worker thread ends after closing the connection
    assert not open_here()
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("hi")]  # opens again


# -- the database stores' promises, checked in the database itself -------------------------------

DB_KINDS = ["sqlite", "postgres"]


async def _db_execute(kind: str, spec: str, statement: str, *args: Any, prefix: str = "") -> list[Any]:
    """Run one statement on a connection of the test's own, outside the store: what the database holds."""
    if kind == "sqlite":
        db = sqlite3.connect(spec[len("sqlite://") :], isolation_level=None)
        try:
            return db.execute(statement.replace("{p}", ""), args).fetchall()
        finally:
            db.close()
    import asyncpg

    conn = await asyncpg.connect(spec)
    try:
        return list(await conn.fetch(statement.replace("{p}", prefix), *args))
    finally:
        await conn.close()


@pytest.fixture
async def db_store(request: pytest.FixtureRequest, tmp_path: Path, pg_prefix: str) -> Any:
    store, spec = fixtures.make_store(request.param, tmp_path, pg_prefix)
    try:
        yield request.param, store, spec, pg_prefix
    finally:
        await store.aclose()


def _param(kind: str) -> str:
    return "?" if kind == "sqlite" else "$1"


@pytest.mark.parametrize("db_store", DB_KINDS, indirect=True)
async def test_giving_a_lock_back_leaves_a_lease_another_run_took(db_store: Any) -> None:
    kind, store, spec, prefix = db_store
    conv = unique()
    async with store.session("assistant", conv).lock(timeout=5):
        # As if this run's lease had expired and another run had taken the conversation over.
        where = f"WHERE conversation_id = {_param(kind)}"
        await _db_execute(kind, spec, f"UPDATE {{p}}leases SET owner = 'another run' {where}", conv, prefix=prefix)
    rows = await _db_execute(kind, spec, f"SELECT owner FROM {{p}}leases {where}", conv, prefix=prefix)
    assert [tuple(r) for r in rows] == [("another run",)]


@pytest.mark.parametrize("db_store", DB_KINDS, indirect=True)
async def test_a_waiter_cancelled_while_taking_the_lock_gives_back_what_it_got(db_store: Any) -> None:
    _, store, _, _ = db_store
    conv = unique()
    session = store.session("assistant", conv)
    await session.get_items()  # connected: the take below is the only work in flight
    for n in range(12):  # cancelled at different points of the take, some after it went through
        cm = session.lock(timeout=5)
        task = asyncio.create_task(cm.__aenter__())
        await asyncio.sleep(n * 0.0004)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled():
            await cm.__aexit__(None, None, None)
        async with store.session("assistant", conv).lock(timeout=3):  # the lease lives 15 s if kept
            pass


@pytest.mark.parametrize("db_store", DB_KINDS, indirect=True)
async def test_a_batch_that_fails_in_the_database_stores_nothing(db_store: Any) -> None:
    from timestep import SessionError

    kind, store, spec, prefix = db_store
    existing = store.session("assistant", unique(), SYSTEM)
    await existing.add_items([user("before")])
    if kind == "sqlite":
        trigger = (
            "CREATE TRIGGER poison BEFORE INSERT ON items WHEN NEW.data LIKE '%poison%' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        untrigger = "DROP TRIGGER poison"
    else:
        trigger = (
            "CREATE OR REPLACE FUNCTION {p}poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.data LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER poison BEFORE INSERT ON {p}items FOR EACH ROW EXECUTE FUNCTION {p}poison()",
        )
        untrigger = "DROP TRIGGER poison ON {p}items"
    for statement in trigger:
        await _db_execute(kind, spec, statement, prefix=prefix)
    try:
        fresh = store.session("assistant", unique(), SYSTEM)
        for session in (existing, fresh):
            before = await session.get_items()
            with pytest.raises(SessionError):
                await session.add_items([user("kept?"), {"journal": "started", "call": "c"}, user("poison")])
            assert await store.session("assistant", session.conversation_id, SYSTEM).get_items() == before
            assert await store.session("assistant", session.conversation_id).get_journal() == []
    finally:
        await _db_execute(kind, spec, untrigger, prefix=prefix)
    await existing.add_items([user("after")])  # the numbering was not disturbed
    assert await existing.get_items() == [{"role": "system", "content": SYSTEM}, user("before"), user("after")]


async def _sqlite_connection_of(path: Path) -> tuple[Any, Any]:
    from timestep.sessions import sqlite as sqlite_store

    return sqlite_store, sqlite_store._acquire(path.resolve())


async def test_sqlite_changes_take_the_write_lock_first_and_sync_normally(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    session = SQLiteSession("assistant", "conv", SYSTEM, path)
    await session.get_items()
    sqlite_store, db = await _sqlite_connection_of(path)
    statements: list[str] = []
    try:
        # What the store's own connection runs, as SQLite reports it.
        assert await db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1  # NORMAL
        assert await db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        await db.run(lambda c: c.set_trace_callback(statements.append))
        await session.add_items([user("a"), {"journal": "started", "call": "c"}])
        await session.add_items([user("b")])
        await session.pop_item()
        await session.clear_session()
        async with session.lock(timeout=5):
            pass
        await db.run(lambda c: c.set_trace_callback(None))
    finally:
        sqlite_store._release(db)
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert len(begins) >= 6 and set(begins) == {"BEGIN IMMEDIATE"}, begins
    open_tx = False
    for s in statements:  # every change runs inside one of them
        open_tx = s.startswith("BEGIN") or (open_tx and s not in ("COMMIT", "ROLLBACK"))
        if s.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE"):
            assert open_tx, s


async def test_sqlite_retries_a_database_is_locked_answered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timestep.sessions import sqlite as sqlite_store

    path = tmp_path / "c.db"
    sqlite_store.open_connection(path).close()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.0)  # every wait for a lock is an instant refusal
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        session = SQLiteSession("assistant", "conv", SYSTEM, path)
        await asyncio.wait_for(session.add_items([user("waited")]), 60)
    finally:
        other.close()
    assert await session.get_items() == [{"role": "system", "content": SYSTEM}, user("waited")]
    await session.close()


async def test_an_sqlite_waiter_cancelled_while_its_take_waits_for_the_write_lock_gives_the_lease_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    session = SQLiteSession("assistant", "conv", SYSTEM, path)
    await session.get_items()  # the file and its schema exist
    sqlite_store, db = await _sqlite_connection_of(path)
    statements: list[str] = []
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await db.run(lambda c: c.set_trace_callback(statements.append))
        other.execute("BEGIN IMMEDIATE")  # the take reads a free lease, then waits here for the write lock
        cm = session.lock(timeout=5)
        task = asyncio.create_task(cm.__aenter__())
        while not any(s.startswith("BEGIN IMMEDIATE") for s in statements):
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        other.execute("COMMIT")  # now the take goes through, for a run that is gone
        await db.run(lambda c: None)  # queued behind the take (one worker thread per file)
        assert any(s.startswith("INSERT INTO leases") for s in statements)  # it did take the lease
        await db.run(lambda c: c.set_trace_callback(None))
    finally:
        other.close()
        sqlite_store._release(db)
    async with SQLiteSession("assistant", "conv", SYSTEM, path).lock(timeout=3):  # a kept lease lives 15 s
        pass
    await session.close()
