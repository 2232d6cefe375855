"""SQLiteSession: many agents' conversations in one SQLite file, for when a folder of files is outgrown.

Why it is built the way it is:

* **One file, two tables.** ``conversations`` has one row per (agent, conversation id) with its
  timestamps; ``items`` has one row per stored item, keyed by (conversation, seq), the item kept as
  the JSON text it was written as (key order included), plus its ``role`` so that counting messages
  and spotting the system message never parse JSON. The primary key is also the index that makes
  "the latest N items" a short backwards walk however long the conversation grows.
* **Several processes, one conversation.** The database runs in WAL mode, so readers never wait for
  a writer. Every change runs in a ``BEGIN IMMEDIATE`` transaction, which takes the write lock
  *before* reading the next ``seq``: two processes appending at once queue up (``busy_timeout``)
  instead of allocating the same numbers or interleaving a batch. ``synchronous=NORMAL`` survives a
  crashed process without losing a committed item; a power cut may lose the latest commits, never
  the file.
* **The event loop never waits on SQLite.** All SQLite work, JSON encoding and decoding included,
  runs on a worker thread. Each database file gets one connection and one dedicated thread per
  process, shared by every session on that file. Measured against a connection per session object,
  appends run at the same rate (the thread hop dominates either way), but opening a connection,
  switching it to WAL and checking the schema costs several appends' worth of time, and runs create
  session objects often (one per request, one per handoff). A dedicated thread also keeps a writer
  that waits for another process's lock from occupying the default executor that tools run in. The
  last ``KEEP_OPEN`` files used stay open; an older one is closed as soon as its operations in
  flight finish, and ``close()`` closes one at once. Nothing is closed by a finalizer or the garbage
  collector: such a callback may run in the middle of a thread-pool submit on the same thread, and
  submitting from it then deadlocks on the pool's lock.
* **Schema by migrations.** An ordered list of named migrations, each applied once inside the write
  lock and recorded in ``migrations``; a later version appends to the list and an older file is
  brought up to date the first time it is opened.
* **A run holds its conversation with a lease.** ``lock()`` writes a row in ``leases`` naming a
  random owner token and an expiry ``lease_ttl`` seconds ahead; a background task renews it every
  ``lease_ttl / 3`` while the run goes on, and leaving deletes it. SQLite's own locks last one
  transaction, and a transaction held open for a whole run would stop every other conversation in
  the file from being written; so the lock is a row, and its expiry is what frees a conversation
  whose holder crashed. A table of its own, keyed by the names, because a run locks a conversation
  before its first item (and so its ``conversations`` row) exists, and an empty conversation must
  not appear in listings. A waiter reads the row without the write lock and takes ``BEGIN
  IMMEDIATE`` only when the lease looks free, so polling never holds up other conversations' appends.

**A read cache per session.** Each session object keeps what it has read, and a read fetches
only the rows past it, in one statement that also checks the conversation's ``generation`` (changed
by every pop and clear): see :mod:`timestep.sessions.cache`. ``get_items_and_journal()`` gives both
lists from one read, which is what a run needs when it starts.

Item semantics match :class:`~timestep.sessions.file.FileSession`: the system message built from
``agent_instructions`` is written with the conversation's first items (and reported before then),
``pop_item`` and ``clear_session`` never remove it, and every item comes back exactly as stored.
Messages and journal records share the ``items`` table and its ``seq`` order (one transaction
writes both); a journal record is a row whose ``role`` is NULL, as it has always been, so files
written before the journal was read apart need no migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..exceptions import (
    ConfigurationError,
    SessionBusyError,
    SessionCorruptError,
    SessionError,
    SessionUnavailableError,
)
from .base import ConversationInfo, Item, check_names, storable, system_item
from .cache import Snapshot, answer, refreshed

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30.0
LEASE_TTL_SECONDS = 15.0

_log = logging.getLogger("timestep.sessions")

# (name, statements). Append only: a released migration is never edited or reordered.
MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "0001_conversations_and_items",
        (
            """CREATE TABLE conversations (
                id INTEGER PRIMARY KEY,
                agent_name TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                UNIQUE (agent_name, conversation_id)
            )""",
            """CREATE TABLE items (
                conversation INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                role TEXT,
                data TEXT NOT NULL,
                PRIMARY KEY (conversation, seq)
            )""",
            "CREATE INDEX conversations_by_update ON conversations (updated_at)",
        ),
    ),
    (
        "0002_leases",
        (
            # expires_at: seconds since the epoch. Every process sharing the file shares the machine's clock.
            """CREATE TABLE leases (
                agent_name TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                owner TEXT NOT NULL,
                expires_at REAL NOT NULL,
                PRIMARY KEY (agent_name, conversation_id)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        "0003_generation",
        # Changed by every pop and clear, random when a row is made: what tells a session's read
        # cache that the conversation did more than grow (see sessions/cache.py).
        ("ALTER TABLE conversations ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",),
    ),
]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def encode_items(items: Sequence[Item], where: str) -> list[tuple[str | None, str]]:
    """(role, JSON text) per item, in the compact form every store writes."""
    try:
        out = []
        for item in items:
            problem = storable(item)
            if problem is not None:
                raise TypeError(problem)
            data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
            data.encode("utf-8")  # a lone surrogate cannot be stored as text; say so here, not in the driver
            out.append((str(item["role"]) if "role" in item else None, data))
        return out
    except (TypeError, ValueError) as exc:
        raise SessionCorruptError(f"cannot store an item in {where}: {exc}", location=where) from exc


def decode_item(data: Any, seq: int, where: str, conversation: str) -> Item:
    """One stored row back into its item, or a SessionCorruptError that says exactly which row."""
    try:
        item = json.loads(data)
    except (TypeError, ValueError) as exc:
        raise SessionCorruptError(
            f"{where}: conversation {conversation}, item seq {seq} is not valid JSON ({exc}); "
            "the row was changed outside Timestep",
            location=where,
            line=seq,
        ) from None
    if not isinstance(item, dict):
        raise SessionCorruptError(
            f"{where}: conversation {conversation}, item seq {seq}: expected a JSON object, "
            f"found {type(item).__name__}",
            location=where,
            line=seq,
        )
    return item


def check_ttl(lease_ttl: float) -> float:
    """A lease lifetime must be a positive number of seconds: zero would expire before its first renewal."""
    if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float) or not math.isfinite(lease_ttl):
        raise ConfigurationError(f"lease_ttl must be a positive number of seconds, got {lease_ttl!r}")
    if lease_ttl <= 0:
        raise ConfigurationError(f"lease_ttl must be a positive number of seconds, got {lease_ttl!r}")
    return float(lease_ttl)


_cleanups: set[asyncio.Task[None]] = set()  # releases still running after their run was cancelled


@contextlib.asynccontextmanager
async def hold_lease(
    take: Callable[[str, float], Awaitable[bool]],
    give_back: Callable[[str], Awaitable[None]],
    what: str,
    where: str,
    timeout: float,
    ttl: float,
) -> AsyncIterator[None]:
    """Hold a lease for the body: the part of ``lock()`` every database store shares.

    ``take(token, ttl)`` sets the lease to ``token`` for ``ttl`` seconds if it is free, expired or
    already ``token``'s, and says whether it did; ``give_back(token)`` removes it if it is still
    ``token``'s. A token per call, not per session, so two tasks sharing one session object take
    turns too. Waiting polls with exponential backoff (5 ms to 250 ms) on the event loop's timer,
    never blocking it. ``what`` names the conversation and ``where`` its store, in messages.

    Renewal and release never overlap: the renewer stops at its next wait (never mid-statement, so a
    late renewal cannot write the lease back after it is deleted) before the lease is given back, and
    that clean-up finishes even if the run is cancelled meanwhile.
    """
    token = secrets.token_hex(16)
    named = f"{what} ({where})"
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.005
    try:
        while not await take(token, ttl):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionBusyError(f"{what} is still being run elsewhere after {timeout:g} s ({where})")
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)
    except asyncio.CancelledError:
        # Cancelled while a take may have gone through: give back whatever it got now rather than
        # leave the conversation held until the lease expires.
        _in_background(_give_back_quietly(give_back, token, named))
        raise
    stop = asyncio.Event()
    keeper = asyncio.create_task(_renew(take, token, ttl, stop, named))

    async def finish() -> None:
        stop.set()
        await keeper
        await _give_back_quietly(give_back, token, named)

    try:
        yield
    finally:
        await asyncio.shield(_in_background(finish()))


def _in_background(coro: Awaitable[None]) -> asyncio.Task[None]:
    """A task that runs to the end even if whoever started it is cancelled (the loop holds tasks weakly)."""

    async def run() -> None:
        await coro

    task = asyncio.get_running_loop().create_task(run())
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    return task


async def _renew(
    take: Callable[[str, float], Awaitable[bool]], token: str, ttl: float, stop: asyncio.Event, what: str
) -> None:
    """Renew every ``ttl / 3``, so one renewal that fails (the database briefly unreachable) still
    leaves two more chances before the lease expires."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), ttl / 3)
            return
        except TimeoutError:
            pass
        try:
            held = await take(token, ttl)
        except Exception as exc:
            _log.warning("%s: could not renew the run's lease (will retry): %s", what, exc)
            continue
        if not held:
            # Only possible after more than ttl without a renewal (the event loop blocked, the
            # database unreachable): another run may now be changing the conversation as well.
            _log.error("%s: the run's lease expired and another run took it; the two runs may overlap", what)
            return


async def _give_back_quietly(give_back: Callable[[str], Awaitable[None]], token: str, what: str) -> None:
    """Release; a failure only leaves the lease to expire by itself, no reason to fail a finished run."""
    try:
        await give_back(token)
    except Exception as exc:
        _log.warning("%s: could not release the run's lease; it expires by itself: %s", what, exc)


class _Database:
    """One process's connection to one database file, used only from its own worker thread.

    Opened and closed only by explicit calls (no finalizer: a garbage-collector callback that
    submits to a thread pool can run while the same thread is inside a submit, and the pool's lock
    is then taken twice by one thread, hanging the process). ``busy`` and ``retired`` are guarded by
    ``_databases_lock``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.busy = 0  # operations in flight
        self.retired = False  # no longer in the registry: shut down once ``busy`` reaches 0
        self.shut = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timestep-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, op)

    def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        # SQLite can answer "database is locked" at once, without waiting out busy_timeout, when two
        # processes create or switch a new file to WAL together, or while one recovers the WAL. Every
        # operation is a whole transaction (rolled back on error), so trying it again is safe.
        for attempt in range(RETRIES):
            try:
                if self._conn is None:
                    self._conn = open_connection(self.path)
                return op(self._conn)
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == RETRIES - 1:
                    raise
                time.sleep(min(0.005 * 2**attempt, 0.25))
        raise AssertionError("unreachable")

    def shut_down(self) -> Future[None]:
        """Close the connection on its own thread, then let the thread end (never from a finalizer)."""

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        done = self._executor.submit(close)
        self._executor.shutdown(wait=False)
        return done


RETRIES = 40
KEEP_OPEN = 8  # database files whose connection (and thread) stays open between operations
_databases: OrderedDict[str, _Database] = OrderedDict()  # least recently used first
_databases_lock = threading.Lock()
_databases_pid = os.getpid()


def _acquire(path: Path) -> _Database:
    """The shared connection for ``path``, counted as in use until :func:`_release`.

    The last ``KEEP_OPEN`` files used stay open, so a session per request does not reopen the file
    each time; an older one is shut down as soon as no operation of its own is in flight.
    """
    global _databases_pid
    to_shut = []
    with _databases_lock:
        if _databases_pid != os.getpid():  # a forked child must not touch its parent's connections
            _databases.clear()
            _databases_pid = os.getpid()
        key = str(path)
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = _Database(path)
        _databases.move_to_end(key)
        db.busy += 1
        while len(_databases) > KEEP_OPEN:
            _, old = _databases.popitem(last=False)
            old.retired = True
            if old.busy == 0 and not old.shut:
                old.shut = True
                to_shut.append(old)
    for old in to_shut:
        old.shut_down()
    return db


def _release(db: _Database) -> None:
    with _databases_lock:
        db.busy -= 1
        shut = db.retired and db.busy == 0 and not db.shut
        if shut:
            db.shut = True
    if shut:
        db.shut_down()


async def close_database(path: Path) -> None:
    """Close this process's connection to ``path`` (and its thread); the next operation reopens it."""
    with _databases_lock:
        db = _databases.pop(str(path), None) if _databases_pid == os.getpid() else None
        if db is None:
            return
        db.retired = True
        shut = db.busy == 0 and not db.shut
        if shut:
            db.shut = True
    if shut:
        await asyncio.wrap_future(db.shut_down())


def open_connection(path: Path) -> sqlite3.Connection:
    """Connect, switch to WAL, and bring the schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this file lacks, in order, under the write lock; the names applied."""
    wanted = [name for name, _ in MIGRATIONS]
    try:
        if {row[0] for row in conn.execute("SELECT name FROM migrations")} >= set(wanted):
            return []
    except sqlite3.OperationalError:
        pass  # no migrations table yet
    applied = []

    def apply(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {row[0] for row in c.execute("SELECT name FROM migrations")}
        for name, statements in MIGRATIONS:
            if name in done:
                continue
            for statement in statements:
                c.execute(statement)
            c.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, _now()))
            applied.append(name)

    write(conn, apply)
    return applied


def write(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``op`` in a ``BEGIN IMMEDIATE`` transaction: the write lock is held from the first read."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = op(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _conversation_row(conn: sqlite3.Connection, agent_name: str, conversation_id: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM conversations WHERE agent_name = ? AND conversation_id = ?", (agent_name, conversation_id)
    ).fetchone()
    return None if row is None else int(row[0])


def _removed(conn: sqlite3.Connection, conv: int) -> None:
    """Items were removed: a new generation tells every session's read cache to read the conversation anew."""
    conn.execute(
        "UPDATE conversations SET updated_at = ?, generation = ? WHERE id = ?", (_now(), secrets.randbits(62), conv)
    )


def _first_is_system(conn: sqlite3.Connection, conv: int) -> tuple[int, bool] | None:
    """(seq, is the system message) of a conversation's first item, or None if it has none."""
    row = conn.execute("SELECT seq, role FROM items WHERE conversation = ? ORDER BY seq LIMIT 1", (conv,)).fetchone()
    return None if row is None else (int(row[0]), row[1] == "system")


class SQLiteSession:
    """A conversation stored in an SQLite database file shared by any number of agents and processes."""

    def __init__(
        self,
        agent_name: str,
        conversation_id: str,
        agent_instructions: str | None = None,
        db_path: str | os.PathLike[str] = "conversations.db",
        *,
        lease_ttl: float = LEASE_TTL_SECONDS,
    ) -> None:
        check_names(agent_name, conversation_id)
        self.agent_name = agent_name
        self.conversation_id = conversation_id
        self.agent_instructions = agent_instructions
        self.db_path = Path(db_path)
        self.lease_ttl = check_ttl(lease_ttl)
        self._path = self.db_path.expanduser().resolve()
        self._cache: Snapshot | None = None  # touched only on the database's worker thread

    def __repr__(self) -> str:
        return f"SQLiteSession({self.agent_name!r}, {self.conversation_id!r}, db_path={str(self.db_path)!r})"

    @property
    def _where(self) -> str:
        return f"SQLite store {self._path}"

    @property
    def _conversation(self) -> str:
        return f"{self.agent_name!r}/{self.conversation_id!r}"

    @property
    def session_id(self) -> str:
        """The conversation id, as the OpenAI Agents SDK's Session protocol names it."""
        return self.conversation_id

    def derive(self, agent_name: str, conversation_id: str, agent_instructions: str | None) -> SQLiteSession:
        return SQLiteSession(agent_name, conversation_id, agent_instructions, self.db_path, lease_ttl=self.lease_ttl)

    # -- async API -------------------------------------------------------------------------------

    def lock(self, timeout: float = 120.0) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold this conversation for one run, across processes, with a lease row renewed while held.

        A holder that dies keeps it at most ``lease_ttl`` seconds (the lease then expires), so a crash
        never leaves a conversation stuck. Raises SessionBusyError after ``timeout`` seconds.
        """
        return hold_lease(
            lambda token, ttl: self._run(lambda conn: self._take_lease(conn, token, ttl)),
            lambda token: self._run(lambda conn: write(conn, lambda c: self._drop_lease(c, token))),
            f"conversation {self.conversation_id!r} of {self.agent_name!r}",
            self._where,
            timeout,
            self.lease_ttl,
        )

    async def get_items(self, limit: int | None = None) -> list[Item]:
        if limit is not None and limit <= 0:
            return []
        return await self._run(lambda conn: self._read(conn, limit))

    async def get_journal(self) -> list[Item]:
        return await self._run(lambda conn: self._read_both(conn)[1])

    async def get_items_and_journal(self) -> tuple[list[Item], list[Item]]:
        """``get_items()`` and ``get_journal()`` from one read of the database."""
        return await self._run(self._read_both)

    async def add_items(self, items: list[Item]) -> None:
        if not items:
            return
        await self._run(lambda conn: self._append(conn, items))

    async def pop_item(self) -> Item | None:
        return await self._run(lambda conn: self._forgetting(write(conn, self._pop)))

    async def clear_session(self) -> None:
        await self._run(lambda conn: self._forgetting(write(conn, self._clear)))

    async def delete_conversation(self) -> bool:
        """Remove the conversation completely (system message included); False if it was not stored."""
        return await self._run(lambda conn: self._forgetting(write(conn, self._delete)))

    def _forgetting(self, result: T) -> T:
        """After this session removed items: drop its cache (the next read fetches the conversation whole)."""
        self._cache = None
        return result

    async def close(self) -> None:
        """Close this process's connection to the database file, and its thread.

        The connection is shared by every session on the file, so the others (and this one) stay
        usable: their next call opens it again. Idempotent.
        """
        await close_database(self._path)

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        db = _acquire(self._path)
        try:
            return await db.run(op)
        except SessionError:
            raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        except OSError as exc:
            raise SessionUnavailableError(
                f"{self._where} is unavailable for conversation {self._conversation}: {exc}"
            ) from exc
        finally:
            _release(db)

    def _translate(self, exc: sqlite3.Error) -> SessionError:
        text = str(exc)
        if "not a database" in text:
            return SessionUnavailableError(
                f"{self._where} cannot be used for conversation {self._conversation}: "
                "the file is not an SQLite database"
            )
        if "malformed" in text:
            return SessionCorruptError(
                f"{self._where} is damaged ({text}); conversation {self._conversation} cannot be read",
                location=str(self._path),
            )
        return SessionUnavailableError(f"{self._where} is unavailable for conversation {self._conversation}: {text}")

    # -- on the worker thread --------------------------------------------------------------------

    def _take_lease(self, conn: sqlite3.Connection, token: str, ttl: float) -> bool:
        key = (self.agent_name, self.conversation_id)
        held = conn.execute(
            "SELECT owner, expires_at FROM leases WHERE agent_name = ? AND conversation_id = ?", key
        ).fetchone()
        if held is not None and held[0] != token and held[1] > time.time():
            return False  # held by another run: known without the write lock, so waiters never queue writers

        def upsert(c: sqlite3.Connection) -> bool:
            now = time.time()  # read under the write lock: the check below is against the latest row
            cur = c.execute(
                "INSERT INTO leases (agent_name, conversation_id, owner, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (agent_name, conversation_id) DO UPDATE"
                " SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
                (*key, token, now + ttl, now),
            )
            return cur.rowcount == 1

        return write(conn, upsert)

    def _drop_lease(self, conn: sqlite3.Connection, token: str) -> None:
        conn.execute(
            "DELETE FROM leases WHERE agent_name = ? AND conversation_id = ? AND owner = ?",
            (self.agent_name, self.conversation_id, token),
        )

    def _read(self, conn: sqlite3.Connection, limit: int | None) -> list[Item]:
        if limit is None or self._cache is not None:
            messages = self._read_both(conn)[0]
            return messages if limit is None else messages[-limit:]
        query = (
            "SELECT seq, data FROM items WHERE conversation ="
            " (SELECT id FROM conversations WHERE agent_name = ? AND conversation_id = ?) AND role IS NOT NULL"
        )
        params: tuple[Any, ...] = (self.agent_name, self.conversation_id)
        # The latest few of a conversation this session has not read: a short walk back, no cache.
        rows = conn.execute(query + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        rows.reverse()
        if not rows:
            sys_item = system_item(self.agent_instructions)
            return [sys_item] if sys_item else []
        where, conversation = self._where, self._conversation
        return [decode_item(data, seq, where, conversation) for seq, data in rows]

    def _read_both(self, conn: sqlite3.Connection) -> tuple[list[Item], list[Item]]:
        """Messages and journal, bringing the cache up to date with one statement (see sessions/cache.py)."""
        cached = self._cache
        conv, generation, start = (cached.conv, cached.generation, cached.next_seq) if cached else (0, 0, 0)
        rows = conn.execute(
            "SELECT c.id, c.generation, i.seq, i.data FROM conversations c LEFT JOIN items i"
            " ON i.conversation = c.id AND i.seq >= (CASE WHEN c.id = ? AND c.generation = ? THEN ? ELSE 0 END)"
            " WHERE c.agent_name = ? AND c.conversation_id = ? ORDER BY i.seq",
            (conv, generation, start, self.agent_name, self.conversation_id),
        ).fetchall()
        head = (int(rows[0][0]), int(rows[0][1]), 0) if rows else None
        where, conversation = self._where, self._conversation
        found = [(seq, decode_item(data, seq, where, conversation)) for _, _, seq, data in rows if seq is not None]
        self._cache, snapshot = refreshed(cached, cached, head, found)
        return answer(snapshot, system_item(self.agent_instructions))

    def _append(self, conn: sqlite3.Connection, items: list[Item]) -> None:
        rows = encode_items(items, f"{self._where}, conversation {self._conversation}")  # before taking the lock
        conv, generation, last = write(conn, lambda c: self._insert(c, rows))
        # Committed: if the cache stood exactly where this append began, it holds the new items too.
        cached = self._cache
        if cached is None and last == 0:
            cached = Snapshot(conv, generation, 1)
        if cached is not None and cached.covers(conv, generation) and cached.next_seq == last + 1:
            cached.add((last + n, json.loads(data)) for n, (_, data) in enumerate(rows, start=1))
            self._cache = cached

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[str | None, str]]) -> tuple[int, int, int]:
        """Insert ``rows`` (led by the system message in an empty conversation, added to ``rows``);
        the conversation's row id, its generation and the ``seq`` before the first row inserted."""
        now = _now()
        row = conn.execute(
            "SELECT id, generation FROM conversations WHERE agent_name = ? AND conversation_id = ?",
            (self.agent_name, self.conversation_id),
        ).fetchone()
        if row is None:
            generation = secrets.randbits(62)  # not 0: a deleted conversation's id may come back
            cur = conn.execute(
                "INSERT INTO conversations (agent_name, conversation_id, created_at, updated_at, generation)"
                " VALUES (?, ?, ?, ?, ?)",
                (self.agent_name, self.conversation_id, now, now, generation),
            )
            conv = int(cur.lastrowid or 0)
            last = None
        else:
            conv, generation = int(row[0]), int(row[1])
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conv))
            last = conn.execute("SELECT max(seq) FROM items WHERE conversation = ?", (conv,)).fetchone()[0]
        if last is None:
            last = 0
            sys_item = system_item(self.agent_instructions)
            if sys_item is not None:
                rows.insert(0, ("system", json.dumps(sys_item, ensure_ascii=False, separators=(",", ":"))))
        conn.executemany(
            "INSERT INTO items (conversation, seq, role, data) VALUES (?, ?, ?, ?)",
            [(conv, last + n, role, data) for n, (role, data) in enumerate(rows, start=1)],
        )
        return conv, generation, int(last)

    def _pop(self, conn: sqlite3.Connection) -> Item | None:
        conv = _conversation_row(conn, self.agent_name, self.conversation_id)
        first = None if conv is None else _first_is_system(conn, conv)
        if conv is None or first is None:
            return None
        floor = first[0] if first[1] else first[0] - 1  # the system message stays
        row = conn.execute(
            "SELECT seq, data FROM items WHERE conversation = ? AND seq > ? AND role IS NOT NULL"
            " ORDER BY seq DESC LIMIT 1",
            (conv, floor),
        ).fetchone()
        if row is None:
            return None
        seq, data = row
        item = decode_item(data, seq, self._where, self._conversation)
        # The message and the journal records written after it.
        conn.execute("DELETE FROM items WHERE conversation = ? AND seq >= ?", (conv, seq))
        _removed(conn, conv)
        return item

    def _clear(self, conn: sqlite3.Connection) -> None:
        conv = _conversation_row(conn, self.agent_name, self.conversation_id)
        first = None if conv is None else _first_is_system(conn, conv)
        if conv is None or first is None:
            return
        keep_through = first[0] if first[1] else first[0] - 1
        conn.execute("DELETE FROM items WHERE conversation = ? AND seq > ?", (conv, keep_through))
        _removed(conn, conv)

    def _delete(self, conn: sqlite3.Connection) -> bool:
        conv = _conversation_row(conn, self.agent_name, self.conversation_id)
        if conv is None:
            return False
        conn.execute("DELETE FROM items WHERE conversation = ?", (conv,))
        conn.execute("DELETE FROM conversations WHERE id = ?", (conv,))
        return True

    # -- listing -----------------------------------------------------------------------------------

    @staticmethod
    def list_conversations(db_path: str | os.PathLike[str] = "conversations.db") -> list[ConversationInfo]:
        """Every conversation in the database, most recently updated first (blocking; see ``Store``)."""
        path = Path(db_path).expanduser().resolve()
        if not path.exists():
            return []
        try:
            conn = open_connection(path)
        except sqlite3.Error as exc:
            raise _listing_error(path, exc) from exc
        try:
            rows = conn.execute(
                "SELECT c.agent_name, c.conversation_id, c.updated_at,"
                " (SELECT count(role) FROM items i WHERE i.conversation = c.id)"
                " FROM conversations c ORDER BY c.updated_at DESC, c.id DESC"
            ).fetchall()
        except sqlite3.Error as exc:
            raise _listing_error(path, exc) from exc
        finally:
            conn.close()
        return [
            ConversationInfo(
                agent_name=agent,
                conversation_id=conversation,
                message_count=int(count),
                updated_at=datetime.fromisoformat(updated),
            )
            for agent, conversation, updated, count in rows
        ]


def _listing_error(path: Path, exc: sqlite3.Error) -> SessionError:
    if "not a database" in str(exc):
        return SessionUnavailableError(f"SQLite store {path} cannot be listed: the file is not an SQLite database")
    return SessionUnavailableError(f"SQLite store {path} cannot be listed: {exc}")
