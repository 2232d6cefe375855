"""The database stores' read cache never serves a stale conversation.

Each SQLiteSession and PostgresSession object keeps what it has read and asks the database only for
rows past it, checked against the conversation's ``generation`` (see ``timestep/sessions/cache.py``).
These tests change a conversation behind a reader's back (another session object, another
process, an append after a pop that reuses the popped position, a delete and re-create) and
require the reader's next read to equal a fresh session's, item for item, key order included. The
FileSession case shows the same contract holds for the store the others are measured against.

That the cache really reads only what is new is shown without timing: a row the reader already
holds is damaged in place, and the reader's next read still succeeds (it never fetched that row
again) until a pop makes it read the conversation whole.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests import stores_fixtures as fixtures
from tests.stores_fixtures import as_json_list, child, finish, unique
from timestep import SessionCorruptError
from timestep.approvals import load
from timestep.sessions import Session, Store
from timestep.sessions.cache import Snapshot, answer, refreshed

store_and_spec = fixtures.store_and_spec
pg_prefix = fixtures.pg_prefix

SYSTEM = "shared system"
DB_KINDS = ["sqlite", "postgres"]
StoreAndSpec = tuple[Store, str]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def note(text: str) -> dict[str, Any]:
    return {"journal": "note", "text": text}


async def assert_current(reader: Session, store: Store, conv: str) -> None:
    """``reader`` (whatever it has cached) reads exactly what a session that never read anything reads."""
    fresh = store.session("assistant", conv, SYSTEM)
    assert as_json_list(await reader.get_items()) == as_json_list(await fresh.get_items())
    assert as_json_list(await reader.get_journal()) == as_json_list(await fresh.get_journal())
    assert as_json_list(await reader.get_items(limit=2)) == as_json_list(await fresh.get_items(limit=2))


async def test_a_reader_sees_appends_pops_and_clears_by_another_session(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    reader, writer = store.session("assistant", conv, SYSTEM), store.session("assistant", conv, SYSTEM)
    await reader.get_items()  # caches an empty conversation
    await writer.add_items([user("a"), note("a"), user("b"), user("c")])
    await assert_current(reader, store, conv)
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "a", "b", "c"]

    await writer.pop_item()  # c goes; then d takes its place: same length, same last position in SQLite
    await writer.add_items([user("d")])
    await assert_current(reader, store, conv)
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "a", "b", "d"]

    await writer.pop_item()
    await writer.pop_item()  # d, then b: the note written after a stays
    await assert_current(reader, store, conv)
    assert await reader.get_journal() == [note("a")]

    await writer.clear_session()
    await assert_current(reader, store, conv)
    assert await reader.get_items() == [{"role": "system", "content": SYSTEM}]
    assert await reader.get_journal() == []

    await writer.add_items([user("e"), note("e")])
    await assert_current(reader, store, conv)
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "e"]


async def test_a_reader_sees_a_conversation_deleted_and_made_again(store_and_spec: StoreAndSpec) -> None:
    # SQLite may give the new conversation row the id of the deleted one: the cache must not take
    # the new rows for a continuation of the old.
    store, _ = store_and_spec
    conv = unique()
    reader, writer = store.session("assistant", conv, SYSTEM), store.session("assistant", conv, SYSTEM)
    await writer.add_items([user("old 1"), user("old 2")])
    assert len(await reader.get_items()) == 3
    assert await store.delete("assistant", conv)
    await writer.add_items([user("new 1"), user("new 2"), user("new 3")])
    await assert_current(reader, store, conv)
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "new 1", "new 2", "new 3"]


async def test_own_appends_and_anothers_interleaved_read_back_in_order(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    one, two = store.session("assistant", conv, SYSTEM), store.session("assistant", conv, SYSTEM)
    await one.add_items([user("1"), note("1")])  # a new conversation: its system message comes first
    await one.get_items()
    await two.add_items([user("2")])  # the first session's cache no longer ends where the table does
    await one.add_items([user("3"), note("3")])
    await assert_current(one, store, conv)
    assert [i["content"] for i in await one.get_items()] == [SYSTEM, "1", "2", "3"]
    assert await one.get_journal() == [note("1"), note("3")]
    await one.add_items([user("4")])  # now it does: extended from its own write
    await assert_current(one, store, conv)
    await assert_current(two, store, conv)


async def test_returned_lists_are_the_callers_own(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    session = store.session("assistant", unique(), SYSTEM)
    await session.add_items([user("a"), note("a")])
    items, journal = await session.get_items(), await session.get_journal()
    items.append(user("not stored"))
    journal.clear()
    assert [i["content"] for i in await session.get_items()] == [SYSTEM, "a"]
    assert await session.get_journal() == [note("a")]


CHANGER = """
async def main():
    agent, conv, op = sys.argv[4], sys.argv[5], sys.argv[6]
    s = store()
    session = s.session(agent, conv, "shared system")
    if op == "append":
        await session.add_items([{"role": "user", "content": sys.argv[7]}, {"journal": "note", "text": sys.argv[7]}])
    elif op == "pop":
        await session.pop_item()
    else:
        await session.clear_session()
    await s.aclose()
    print("done", flush=True)

asyncio.run(main())
"""


async def test_a_reader_sees_what_another_process_appends_pops_and_clears(
    store_and_spec: StoreAndSpec, pg_prefix: str, request: pytest.FixtureRequest
) -> None:
    store, spec = store_and_spec
    kind = request.node.callspec.params["store_and_spec"]
    conv = unique()
    reader = store.session("assistant", conv, SYSTEM)

    async def other_process(*args: str) -> None:
        proc = child(CHANGER, kind, spec, pg_prefix, "assistant", conv, *args)
        assert (await asyncio.to_thread(finish, proc)).strip() == "done"

    await other_process("append", "a")
    await other_process("append", "b")
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "a", "b"]
    for step in (("append", "c"), ("pop",), ("append", "d"), ("pop",), ("pop",), ("append", "e"), ("clear",)):
        await other_process(*step)
        await assert_current(reader, store, conv)
    assert await reader.get_items() == [{"role": "system", "content": SYSTEM}]
    assert await reader.get_journal() == []


async def test_one_call_gives_messages_and_journal_as_the_run_loads_them(store_and_spec: StoreAndSpec) -> None:
    store, _ = store_and_spec
    conv = unique()
    session = store.session("assistant", conv, SYSTEM)
    await session.add_items([user("a"), note("a"), user("b")])
    await store.session("assistant", conv, SYSTEM).add_items([note("b")])
    messages, journal = await load(session)
    assert as_json_list(messages) == as_json_list(await session.get_items())
    assert as_json_list(journal) == as_json_list(await session.get_journal())
    assert journal == [note("a"), note("b")]


# -- the database stores: the cache reads only what is new ---------------------------------------


def _damage(kind: str, spec: str, prefix: str, conv: str, seq: int) -> None:
    """Overwrite one stored row with text that is not JSON, on a connection outside the store."""
    where = "WHERE seq = {seq} AND conversation = (SELECT id FROM {p}conversations WHERE conversation_id = {conv})"
    if kind == "sqlite":
        import sqlite3

        db = sqlite3.connect(spec[len("sqlite://") :], isolation_level=None)
        try:
            db.execute("UPDATE items SET data = 'garbage{' " + where.format(seq="?", p="", conv="?"), (seq, conv))
        finally:
            db.close()
        return

    async def update() -> None:
        import asyncpg

        conn = await asyncpg.connect(spec)
        try:
            statement = f"UPDATE {prefix}items SET data = 'garbage{{' " + where.format(seq="$1", p=prefix, conv="$2")
            await conn.execute(statement, seq, conv)
        finally:
            await conn.close()

    fixtures.run_apart(update)


@pytest.fixture
async def db_store(request: pytest.FixtureRequest, tmp_path: Path, pg_prefix: str) -> Any:
    store, spec = fixtures.make_store(request.param, tmp_path, pg_prefix)
    try:
        yield request.param, store, spec, pg_prefix
    finally:
        await store.aclose()


@pytest.mark.parametrize("db_store", DB_KINDS, indirect=True)
async def test_a_reader_fetches_only_rows_past_what_it_holds(db_store: Any) -> None:
    kind, store, spec, prefix = db_store
    conv = unique()
    reader, writer = store.session("assistant", conv, SYSTEM), store.session("assistant", conv, SYSTEM)
    await writer.add_items([user("a"), user("b")])  # seq 1 is the system message, 2 and 3 these
    assert len(await reader.get_items()) == 3
    await asyncio.to_thread(_damage, kind, spec, prefix, conv, 2)
    await writer.add_items([user("c")])
    # Still readable: the damaged row was read before it was damaged, and is not fetched again.
    assert [i["content"] for i in await reader.get_items()] == [SYSTEM, "a", "b", "c"]
    with pytest.raises(SessionCorruptError):
        await store.session("assistant", conv, SYSTEM).get_items()  # a new session reads every row
    await writer.pop_item()  # a new generation: the reader must read the whole conversation again
    with pytest.raises(SessionCorruptError) as caught:
        await reader.get_items()
    assert caught.value.line == 2


def test_the_stores_benchmark_runs_and_reports_every_store() -> None:
    """No timing asserted: only that ``python -m benchmarks.stores --quick`` measures each store end to end."""
    import subprocess
    import sys

    url = fixtures.require_postgres()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.stores", "--quick", "--postgres-url", url],
        cwd=fixtures.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"FileSession", "SQLiteSession", "PostgresSession"}, proc.stdout
    for name, values in rows.items():
        appends, load, w1, w3 = (float(v.replace(",", "")) for v in values[:4])
        assert min(appends, load, w1, w3) > 0, (name, values)


# -- the cache's bookkeeping, without a database ---------------------------------------------------


def _snapshot(conv: int, generation: int, *texts: str) -> Snapshot:
    snapshot = Snapshot(conv, generation, 1)
    snapshot.add((n, user(t)) for n, t in enumerate(texts, start=1))
    return snapshot


def test_rows_read_past_a_snapshot_continue_it_even_when_another_task_replaced_it() -> None:
    # A read went out from (row 1, generation 5, seq 3); meanwhile another task of the same session
    # read the conversation anew after a pop elsewhere (generation 6). The reply still shows
    # generation 5, and holds only seq 3: it continues the old snapshot, it is not the conversation.
    base, current = _snapshot(1, 5, "a", "b"), _snapshot(1, 6, "a")
    keep, answered = refreshed(base, current, (1, 5, 4), [(3, user("c"))])
    assert keep is current
    assert answered is not None and [m["content"] for m in answered.messages] == ["a", "b", "c"]


def test_a_whole_read_builds_on_a_newer_snapshot_of_the_same_generation() -> None:
    current = _snapshot(1, 6, "a", "b", "c", "d")
    keep, answered = refreshed(None, current, (1, 6, 4), [(1, user("a")), (2, user("b")), (3, user("c"))])
    assert keep is answered is current
    assert [m["content"] for m in current.messages] == ["a", "b", "c", "d"]
    keep, answered = refreshed(current, current, None, [])
    assert keep is None and answered is None
    assert answer(None, {"role": "system", "content": SYSTEM}) == ([{"role": "system", "content": SYSTEM}], [])
