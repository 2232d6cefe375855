"""PostgresSession: conversations in PostgreSQL, for several processes on several machines.

Why it is built the way it is:

* **asyncpg, imported on first use.** It speaks the PostgreSQL protocol natively on the event loop
  (no thread hop per query) and caches prepared statements per connection. It is an optional extra
  (the ``asyncpg`` module: the ``postgres`` extra of a checkout), so ``import timestep`` never pays for it.
* **One pool per URL and event loop.** Every session built from the same URL in the same loop shares
  one pool (a pool's connections belong to the loop that opened them), so a handoff's delegate or a
  thousand concurrent conversations do not open a connection each. A pool you manage can be passed
  instead; ``derive`` keeps whichever the session has.
* **Schema created once, safely.** The first use of a pool runs an ordered list of named migrations
  recorded in ``<prefix>migrations``, inside a transaction holding ``pg_advisory_xact_lock``, so two
  processes starting at once never race on ``CREATE TABLE``. Later uses see the recorded names and
  skip the lock.
* **Appends are ordered by the conversation row.** Each conversation row carries ``next_seq`` and
  ``item_count``. An append is one statement (one round trip, one commit): it locks that row with
  ``SELECT ... FOR UPDATE``, takes the next numbers, bumps the counters and inserts the whole batch
  (led by the system message when the conversation is empty). Writers on any number of machines
  queue on the row, each seeing it as the previous one left it, so none allocates the same ``seq``
  or interleaves a batch, and writers of *other* conversations never wait. The row is created
  (``ON CONFLICT DO NOTHING``) the first time a conversation is written. Numbers are never reused,
  so a ``seq`` names one item for good.
* **A run holds its conversation with a lease, not a connection.** ``lock()`` writes a row in
  ``<prefix>leases`` naming a random owner token and an expiry ``lease_ttl`` seconds ahead by the
  *server's* clock (so clocks on different machines never matter); a background task renews it every
  ``lease_ttl / 3`` while the run goes on, and leaving deletes it. Taking, renewing and giving back
  are one short statement each on a pooled connection, so a thousand runs in progress hold no
  connection between statements, where a session-level ``pg_advisory_lock`` would pin one
  connection per run for the whole run (a pool of ten would stall the eleventh run, and a
  connection of its own per run would exhaust the server's ``max_connections``). The price: a
  holder that dies keeps the conversation until its lease expires, at most ``lease_ttl`` seconds.
  The take is one atomic ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the lease is free, expired
  or already ours; a waiter whose lease is visibly held inserts nothing and locks no row. The table
  is ``UNLOGGED``: taking and giving back then commit without waiting for a WAL flush, which halves
  what a lock costs (measured: two commits took 0.94 ms logged, 0.41 ms unlogged, on a local
  server). What that gives up is small: after a server crash or a failover the leases are gone, so
  conversations are free at once instead of after ``lease_ttl``; a run that survived takes its lease
  back at its next renewal if no other run has, and the journal still shows any approval a run
  already settled.
* **Items are stored as text.** ``jsonb`` would normalise key order and whitespace; ``json`` rejects
  values Python's ``json`` writes (``NaN``). Text keeps every item exactly as it was stored, and
  ``data::jsonb`` still works for ad-hoc queries. A ``role`` column answers "how many messages" and
  "is the first item the system message" without parsing anything.

Failures name the store (password hidden) and the conversation: an unreachable server is a
:class:`~timestep.exceptions.SessionUnavailableError`, a row that does not decode a
:class:`~timestep.exceptions.SessionCorruptError` with its ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import ConfigurationError, SessionError, SessionUnavailableError
from .base import ConversationInfo, Item, check_names, system_item
from .cache import Snapshot, answer, refreshed
from .sqlite import LEASE_TTL_SECONDS, check_ttl, decode_item, encode_items, hold_lease

T = TypeVar("T")

INSTALL_HINT = "install it with pip install asyncpg (or pip install -e '.[postgres]' in a Timestep checkout)"
_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_DECODE_INLINE_LIMIT = 256 * 1024
_CONNECT_TIMEOUT = 10.0

# (name, statements), with {p} standing for the table prefix. Append only.
MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "0001_conversations_and_items",
        (
            """CREATE TABLE IF NOT EXISTS {p}conversations (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                agent_name text NOT NULL,
                conversation_id text NOT NULL,
                next_seq bigint NOT NULL DEFAULT 1,
                item_count bigint NOT NULL DEFAULT 0,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (agent_name, conversation_id)
            )""",
            """CREATE TABLE IF NOT EXISTS {p}items (
                conversation bigint NOT NULL REFERENCES {p}conversations (id) ON DELETE CASCADE,
                seq bigint NOT NULL,
                role text,
                data text NOT NULL,
                PRIMARY KEY (conversation, seq)
            )""",
            "CREATE INDEX IF NOT EXISTS {p}conversations_by_update ON {p}conversations (updated_at)",
        ),
    ),
    (
        "0002_leases",
        (
            # UNLOGGED: see the module docstring; a lease is not worth a WAL flush per take and release.
            """CREATE UNLOGGED TABLE IF NOT EXISTS {p}leases (
                agent_name text NOT NULL,
                conversation_id text NOT NULL,
                owner text NOT NULL,
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (agent_name, conversation_id)
            )""",
        ),
    ),
    (
        "0003_generation",
        # Bumped by every pop and clear: what tells a session's read cache that the conversation did
        # more than grow (see sessions/cache.py). Row ids are never reused, so it may start at 0.
        ("ALTER TABLE {p}conversations ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0",),
    ),
]


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError:
        raise ConfigurationError(f"PostgreSQL sessions need asyncpg: {INSTALL_HINT}") from None


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for an error message."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = userinfo.split(":", 1)[0] + ":***@" + host
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable PostgreSQL URL>"


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigurationError(
            f"table_prefix must be letters, digits and underscores (at most 41, not starting with a digit); "
            f"got {prefix!r}"
        )
    return prefix


@lru_cache(maxsize=32)
def _sql(p: str) -> dict[str, str]:
    """Every statement, for one table prefix (validated, so formatting it in is safe)."""
    return {
        # One statement, so one round trip and one commit: lock the conversation row (writers of the
        # same conversation queue here; FOR UPDATE hands each the row as the previous one left it),
        # take the next numbers, and insert the batch, led by the system message if the
        # conversation is empty and the session has one. No row means no conversation yet.
        "append": (
            f"WITH locked AS MATERIALIZED (SELECT id, next_seq, item_count, generation FROM {p}conversations "
            "WHERE agent_name = $1 AND conversation_id = $2 FOR UPDATE), "
            "plan AS MATERIALIZED (SELECT id, next_seq, item_count, generation, "
            "(item_count = 0 AND $5::text IS NOT NULL)::int AS seed FROM locked), "
            f"bumped AS (UPDATE {p}conversations c SET next_seq = plan.next_seq + plan.seed + $6::bigint, "
            "item_count = c.item_count + plan.seed + $6::bigint, updated_at = now() FROM plan WHERE c.id = plan.id), "
            f"added AS (INSERT INTO {p}items (conversation, seq, role, data) "
            "SELECT plan.id, plan.next_seq + plan.seed + t.n - 1, t.role, t.data "
            "FROM plan, unnest($3::text[], $4::text[]) WITH ORDINALITY AS t (data, role, n) "
            "UNION ALL SELECT plan.id, plan.next_seq, 'system', $5::text FROM plan WHERE plan.seed = 1) "
            "SELECT id, next_seq, item_count, generation, seed FROM plan"
        ),
        "create": (
            f"INSERT INTO {p}conversations (agent_name, conversation_id) VALUES ($1, $2) "
            "ON CONFLICT (agent_name, conversation_id) DO NOTHING"
        ),
        "read_latest": (
            f"SELECT i.seq, i.data FROM {p}items i JOIN {p}conversations c ON c.id = i.conversation "
            "WHERE c.agent_name = $1 AND c.conversation_id = $2 AND i.role IS NOT NULL ORDER BY i.seq DESC LIMIT $3"
        ),
        # The cache's check and the rows it lacks in one statement (see sessions/cache.py): past the
        # cached position while the row and its generation are the cached ones, else all of them.
        "read_since": (
            f"SELECT c.id, c.generation, c.next_seq, i.seq, i.data FROM {p}conversations c LEFT JOIN {p}items i "
            "ON i.conversation = c.id "
            "AND i.seq >= (CASE WHEN c.id = $3 AND c.generation = $4 THEN $5::bigint ELSE 0 END) "
            "WHERE c.agent_name = $1 AND c.conversation_id = $2 ORDER BY i.seq"
        ),
        "lock": f"SELECT id FROM {p}conversations WHERE agent_name = $1 AND conversation_id = $2 FOR UPDATE",
        # The latest message that is not the system message (the first item, when it is one).
        "latest_message": (
            f"SELECT seq, data FROM {p}items WHERE conversation = $1 AND role IS NOT NULL AND seq > "
            f"(SELECT CASE WHEN role = 'system' THEN seq ELSE seq - 1 END FROM {p}items "
            "WHERE conversation = $1 ORDER BY seq LIMIT 1) ORDER BY seq DESC LIMIT 1"
        ),
        "first": f"SELECT seq, role FROM {p}items WHERE conversation = $1 ORDER BY seq LIMIT 1",
        "delete_after": (
            f"WITH gone AS (DELETE FROM {p}items WHERE conversation = $1 AND seq > $2 RETURNING 1) "
            f"UPDATE {p}conversations SET item_count = item_count - (SELECT count(*) FROM gone), updated_at = now(), "
            "generation = generation + 1 WHERE id = $1"
        ),
        "delete_from": (
            f"WITH gone AS (DELETE FROM {p}items WHERE conversation = $1 AND seq >= $2 RETURNING 1) "
            f"UPDATE {p}conversations SET item_count = item_count - (SELECT count(*) FROM gone), updated_at = now(), "
            "generation = generation + 1 WHERE id = $1"
        ),
        "delete_conversation": (
            f"DELETE FROM {p}conversations WHERE agent_name = $1 AND conversation_id = $2 RETURNING id"
        ),
        # Take the lease if it is free, expired or already ours (then it is a renewal). The NOT EXISTS
        # makes a waiter facing a live lease insert nothing and lock nothing; the DO UPDATE's WHERE
        # decides again on the latest row version, so two takers racing for a free lease get one winner.
        "take_lease": (
            f"INSERT INTO {p}leases AS l (agent_name, conversation_id, owner, expires_at) "
            "SELECT $1::text, $2::text, $3::text, clock_timestamp() + make_interval(secs => $4::float8) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {p}leases WHERE agent_name = $1 AND conversation_id = $2 "
            "AND owner <> $3 AND expires_at > clock_timestamp()) "
            "ON CONFLICT (agent_name, conversation_id) DO UPDATE "
            "SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
            "WHERE l.owner = EXCLUDED.owner OR l.expires_at <= clock_timestamp() "
            "RETURNING true"
        ),
        "give_back_lease": f"DELETE FROM {p}leases WHERE agent_name = $1 AND conversation_id = $2 AND owner = $3",
        "list": (
            "SELECT c.agent_name, c.conversation_id, c.updated_at, "
            f"(SELECT count(*) FROM {p}items i WHERE i.conversation = c.id AND i.role IS NOT NULL) AS message_count "
            f"FROM {p}conversations c ORDER BY c.updated_at DESC, c.id DESC"
        ),
    }


# -- pools and schema, shared per event loop ------------------------------------------------------

_pools: dict[asyncio.AbstractEventLoop, dict[str, asyncio.Task[tuple[Any, AsyncGenerator[None, None]]]]] = {}
_schemas: dict[tuple[int, str], tuple[Any, asyncio.Task[None]]] = {}


def _forget_dead() -> None:
    """Drop what belongs to closed loops or closed pools, so finished ``asyncio.run`` calls do not pile up."""
    for loop in [loop for loop in _pools if loop.is_closed()]:
        del _pools[loop]
    for key in [key for key, (pool, _) in _schemas.items() if pool.is_closing()]:
        del _schemas[key]


async def _create_pool(url: str) -> tuple[Any, AsyncGenerator[None, None]]:
    asyncpg = _asyncpg()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=10, timeout=_CONNECT_TIMEOUT, reset=_keep_session)
    closer = _close_at_shutdown(pool)
    await closer.__anext__()
    return pool, closer


async def _keep_session(conn: Any) -> None:
    """Hand a connection back to the shared pool as it is.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, advisory unlocks) is one
    more round trip per statement, and measured it doubled the cost of an append. None of it is
    needed: this pool runs only this module's statements, which set no session state (the schema's
    advisory lock is a transaction's), and asyncpg itself still rolls back a transaction left open.
    """


async def _close_at_shutdown(pool: Any) -> AsyncGenerator[None, None]:
    """Closes the pool when its loop shuts down: ``asyncio.run`` and ``asyncio.Runner`` finalise every
    open async generator first, so a program that never calls ``close_pools`` leaves no connection open."""
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(pool.close(), _CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            pool.terminate()


async def _await_shared(task: asyncio.Task[T], forget: Callable[[], None]) -> T:
    """Await a task many callers share; a failed one is forgotten so that the next caller retries."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()  # the common case, every call after the first: no shield, no suspension
    try:
        return await asyncio.shield(task)
    except BaseException:
        if task.done() and (task.cancelled() or task.exception() is not None):
            forget()
        raise


async def shared_pool(url: str) -> Any:
    """The pool every session with this URL uses in the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    _forget_dead()
    per_loop = _pools.setdefault(loop, {})
    task = per_loop.get(url)
    if task is None:
        task = per_loop[url] = loop.create_task(_create_pool(url))

    def forget() -> None:
        if per_loop.get(url) is task:
            del per_loop[url]

    pool, _ = await _await_shared(task, forget)
    return pool


async def _ensure_schema(pool: Any, prefix: str) -> None:
    key = (id(pool), prefix)
    entry = _schemas.get(key)
    if entry is None or entry[0] is not pool:
        _forget_dead()
        entry = _schemas[key] = (pool, asyncio.get_running_loop().create_task(_migrate(pool, prefix)))
    task = entry[1]

    def forget() -> None:
        if _schemas.get(key) is entry:
            del _schemas[key]

    await _await_shared(task, forget)


def _lock_key(prefix: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"timestep-schema:{prefix}".encode()).digest()[:8], "big", signed=True)


async def _migrate(pool: Any, p: str) -> None:
    wanted = {name for name, _ in MIGRATIONS}
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{p}migrations"):
            done = {r[0] for r in await conn.fetch(f"SELECT name FROM {p}migrations")}
            if done >= wanted:
                return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(p))
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {p}migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in await conn.fetch(f"SELECT name FROM {p}migrations")}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    await conn.execute(statement.format(p=p))
                await conn.execute(f"INSERT INTO {p}migrations (name) VALUES ($1)", name)


class PostgresSession:
    """A conversation stored in PostgreSQL; any number of agents, conversations and machines per table."""

    def __init__(
        self,
        agent_name: str,
        conversation_id: str,
        agent_instructions: str | None = None,
        *,
        url: str | None = None,
        pool: Any = None,
        table_prefix: str = "timestep_",
        lease_ttl: float = LEASE_TTL_SECONDS,
    ) -> None:
        check_names(agent_name, conversation_id)
        if (url is None) == (pool is None):
            raise ConfigurationError(
                "PostgresSession needs either url= (a postgresql:// URL) or pool= (an asyncpg pool)"
            )
        if importlib.util.find_spec("asyncpg") is None:
            raise ConfigurationError(f"PostgresSession needs asyncpg: {INSTALL_HINT}")
        self.agent_name = agent_name
        self.conversation_id = conversation_id
        self.agent_instructions = agent_instructions
        self.url = url
        self.pool = pool
        self.table_prefix = _check_prefix(table_prefix)
        self.lease_ttl = check_ttl(lease_ttl)
        self._cache: Snapshot | None = None

    def __repr__(self) -> str:
        where = redact(self.url) if self.url is not None else "pool"
        names = f"{self.agent_name!r}, {self.conversation_id!r}"
        return f"PostgresSession({names}, {where}, table_prefix={self.table_prefix!r})"

    @property
    def _where(self) -> str:
        # Named in every append (for its error message): parsing the URL each time cost more than
        # the rest of the append's own work in Python, so it is parsed once per URL and prefix.
        return describe_store(self.url, self.table_prefix)

    @property
    def _conversation(self) -> str:
        return f"{self.agent_name!r}/{self.conversation_id!r}"

    @property
    def session_id(self) -> str:
        """The conversation id, as the OpenAI Agents SDK's Session protocol names it."""
        return self.conversation_id

    def derive(self, agent_name: str, conversation_id: str, agent_instructions: str | None) -> PostgresSession:
        return PostgresSession(
            agent_name,
            conversation_id,
            agent_instructions,
            url=self.url,
            pool=self.pool,
            table_prefix=self.table_prefix,
            lease_ttl=self.lease_ttl,
        )

    # -- async API -------------------------------------------------------------------------------

    def lock(self, timeout: float = 120.0) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold this conversation for one run, across processes and machines, with a renewed lease.

        No connection is held while the run goes on. A holder that dies keeps the conversation at
        most ``lease_ttl`` seconds (the lease then expires), so a crash never leaves it stuck.
        Raises SessionBusyError after ``timeout`` seconds.
        """
        sql = _sql(self.table_prefix)
        names = (self.agent_name, self.conversation_id)

        async def take(token: str, ttl: float) -> bool:
            async def op(conn: Any) -> bool:
                return bool(await conn.fetchval(sql["take_lease"], *names, token, ttl))

            return await self._run(op)

        async def give_back(token: str) -> None:
            async def op(conn: Any) -> None:
                await conn.execute(sql["give_back_lease"], *names, token)

            await self._run(op)

        what = f"conversation {self.conversation_id!r} of {self.agent_name!r}"
        return hold_lease(take, give_back, what, self._where, timeout, self.lease_ttl)

    async def get_items(self, limit: int | None = None) -> list[Item]:
        if limit is not None and limit <= 0:
            return []
        if limit is None or self._cache is not None:
            messages = (await self.get_items_and_journal())[0]
            return messages if limit is None else messages[-limit:]
        sql = _sql(self.table_prefix)

        async def read(conn: Any) -> list[Any]:
            # The latest few of a conversation this session has not read: a short walk back, no cache.
            return list(reversed(await conn.fetch(sql["read_latest"], self.agent_name, self.conversation_id, limit)))

        rows = await self._run(read)
        if not rows:
            sys_item = system_item(self.agent_instructions)
            return [sys_item] if sys_item else []
        return await self._decoded(rows)

    async def get_journal(self) -> list[Item]:
        return (await self.get_items_and_journal())[1]

    async def get_items_and_journal(self) -> tuple[list[Item], list[Item]]:
        """``get_items()`` and ``get_journal()`` from one statement, fetching only what this session lacks."""
        sql = _sql(self.table_prefix)
        cached = self._cache
        position = (cached.conv, cached.generation, cached.next_seq) if cached else (0, 0, 0)

        async def read(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql["read_since"], self.agent_name, self.conversation_id, *position))

        rows = await self._run(read)
        head = (rows[0][0], rows[0][1], rows[0][2]) if rows else None
        found = [(r[3], r[4]) for r in rows if r[3] is not None]
        items = await self._decoded(found)
        # Other tasks of this session may have changed the cache while this read was out.
        self._cache, snapshot = refreshed(
            cached, self._cache, head, list(zip((seq for seq, _ in found), items, strict=True))
        )
        return answer(snapshot, system_item(self.agent_instructions))

    async def _decoded(self, rows: list[Any]) -> list[Item]:
        """Rows decoded, off the event loop when they are many."""
        if sum(len(r[1]) for r in rows) > _DECODE_INLINE_LIMIT:
            return await asyncio.to_thread(self._decode, rows)
        return self._decode(rows)

    def _decode(self, rows: list[Any]) -> list[Item]:
        where, conversation = self._where, self._conversation
        return [decode_item(data, seq, where, conversation) for seq, data in rows]

    async def add_items(self, items: list[Item]) -> None:
        if not items:
            return
        rows = encode_items(items, f"{self._where}, conversation {self._conversation}")
        sys_item = system_item(self.agent_instructions)
        system = None if sys_item is None else encode_items([sys_item], self._where)[0][1]
        sql = _sql(self.table_prefix)

        async def append(conn: Any) -> Any:
            args = (
                self.agent_name,
                self.conversation_id,
                [data for _, data in rows],
                [role for role, _ in rows],
                system,
                len(rows),
            )
            plan = await conn.fetchrow(sql["append"], *args)
            if plan is None:
                await conn.execute(sql["create"], self.agent_name, self.conversation_id)
                plan = await conn.fetchrow(sql["append"], *args)
            return plan

        plan = await self._run(append)
        # Committed: if the cache stood exactly where this append began, it holds the new items too.
        conv, first, generation = plan["id"], plan["next_seq"], plan["generation"]
        cached = self._cache
        if cached is None and plan["item_count"] == 0:
            cached = Snapshot(conv, generation, first)
        if cached is not None and cached.covers(conv, generation) and cached.next_seq == first:
            written = [(first + n, data) for n, data in enumerate([system] * plan["seed"] + [d for _, d in rows])]
            cached.add(zip(range(first, first + len(written)), self._decode(written), strict=True))
            self._cache = cached

    async def pop_item(self) -> Item | None:
        sql = _sql(self.table_prefix)

        self._cache = None  # removing items: the next read fetches the conversation whole

        async def pop(conn: Any) -> Item | None:
            async with conn.transaction():
                conv = await conn.fetchval(sql["lock"], self.agent_name, self.conversation_id)
                latest = None if conv is None else await conn.fetchrow(sql["latest_message"], conv)
                if latest is None:
                    return None  # no message, or only the system message, which stays
                item = decode_item(latest["data"], latest["seq"], self._where, self._conversation)
                # The message and the journal records written after it.
                await conn.execute(sql["delete_from"], conv, latest["seq"])
                return item

        return await self._run(pop)

    async def clear_session(self) -> None:
        sql = _sql(self.table_prefix)

        self._cache = None

        async def clear(conn: Any) -> None:
            async with conn.transaction():
                conv = await conn.fetchval(sql["lock"], self.agent_name, self.conversation_id)
                first = None if conv is None else await conn.fetchrow(sql["first"], conv)
                if first is None:
                    return
                keep_through = first["seq"] if first["role"] == "system" else first["seq"] - 1
                await conn.execute(sql["delete_after"], conv, keep_through)

        await self._run(clear)

    async def delete_conversation(self) -> bool:
        """Remove the conversation completely (system message included); False if it was not stored."""
        sql = _sql(self.table_prefix)

        self._cache = None

        async def delete(conn: Any) -> bool:
            return await conn.fetchval(sql["delete_conversation"], self.agent_name, self.conversation_id) is not None

        return await self._run(delete)

    async def close(self) -> None:
        """Close the pool this session shares with every session on its URL in this event loop.

        Those sessions (and this one) stay usable: the next call opens a new pool. A pool passed in
        as ``pool=`` is yours and stays open. Idempotent.
        """
        if self.url is not None:
            await PostgresSession.close_pools(self.url)

    async def _run(self, op: Callable[[Any], Awaitable[T]]) -> T:
        return await run_on(self.url, self.pool, self.table_prefix, op, f"conversation {self._conversation}")

    # -- pools and listing -------------------------------------------------------------------------

    @classmethod
    async def list_conversations(
        cls, url: str | None = None, pool: Any = None, table_prefix: str = "timestep_"
    ) -> list[ConversationInfo]:
        """Every conversation in the tables, most recently updated first."""
        if (url is None) == (pool is None):
            raise ConfigurationError("list_conversations needs either url= or pool=")
        sql = _sql(_check_prefix(table_prefix))

        async def fetch(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql["list"]))

        rows = await run_on(url, pool, table_prefix, fetch, "listing conversations")
        return [
            ConversationInfo(
                agent_name=r["agent_name"],
                conversation_id=r["conversation_id"],
                message_count=int(r["message_count"]),
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    @classmethod
    async def close_pools(cls, url: str | None = None) -> None:
        """Close the shared pools of the running event loop (all of them, or the one for ``url``).

        Call it before the loop ends (a shared pool lives as long as its loop otherwise); a pool you
        passed in yourself is yours to close.
        """
        per_loop = _pools.get(asyncio.get_running_loop(), {})
        for key in [k for k in per_loop if url is None or k == url]:
            task = per_loop.pop(key)
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                await task.result()[1].aclose()


@lru_cache(maxsize=64)
def describe_store(url: str | None, table_prefix: str) -> str:
    where = redact(url) if url is not None else "(a given pool)"
    return f"PostgreSQL store {where} (tables {table_prefix}*)"


async def run_on(url: str | None, pool: Any, prefix: str, op: Callable[[Any], Awaitable[T]], doing: str) -> T:
    """Run ``op`` on a pooled connection with the schema in place; driver failures become SessionErrors."""
    asyncpg = _asyncpg()
    try:
        if pool is None:
            assert url is not None
            pool = await shared_pool(url)
        await _ensure_schema(pool, prefix)
        async with pool.acquire() as conn:
            return await op(conn)
    except SessionError:
        raise
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SessionUnavailableError(
            f"{describe_store(url, prefix)} is unavailable ({doing}): {type(exc).__name__}: {exc}"
        ) from exc
