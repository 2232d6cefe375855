"""One string names a conversation store: ``open_store(spec)`` turns it into something to use.

The command line (and any program that takes a store from its configuration) needs to accept a
folder, an SQLite file or a PostgreSQL database without knowing which in advance, and then do the
same few things with any of them: open a session, list conversations, delete one. :class:`Store` is
that common face, and :func:`open_store` the one place that reads the string, so every entry point
accepts the same spellings and rejects the same mistakes with the same one-line message.

Spellings, following the ``file:`` URI convention SQLite itself uses:

* ``conversations`` or ``/var/lib/app/conversations``: a folder of JSONL files (FileSession);
* ``sqlite:///var/lib/app/conversations.db`` (absolute) or ``sqlite:conversations.db`` (relative);
* ``postgresql://user@host:5432/db`` or ``postgres://...``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

from ..exceptions import ConfigurationError
from .base import ConversationInfo, Session
from .file import FileSession
from .postgres import INSTALL_HINT, PostgresSession, describe_store, redact
from .sqlite import SQLiteSession

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_FORMS = "a folder path, sqlite:///absolute/path.db, sqlite:relative.db or postgresql://user@host/db"


class Store(ABC):
    """A place conversations live, whatever its kind. Use it as ``async with open_store(spec) as store``."""

    @abstractmethod
    def session(self, agent_name: str, conversation_id: str, agent_instructions: str | None = None) -> Session:
        """A session for one agent's side of one conversation in this store."""

    @abstractmethod
    async def list_conversations(self) -> list[ConversationInfo]:
        """Every conversation in the store, most recently updated first."""

    @abstractmethod
    async def delete(self, agent_name: str, conversation_id: str) -> bool:
        """Remove a conversation completely, system message included; False if there was none."""

    async def delegates(self, agent_name: str, conversation_id: str) -> list[ConversationInfo]:
        """The conversations of this one's delegates (handoffs), nested ones included.

        A delegate's conversation id is ``<conversation>~<caller agent's slug>`` (its own delegates add
        ``~<slug>`` again), but a name is not proof: any agent may hold a conversation so named. So a
        conversation counts as a delegate's only when its caller's side really transferred to that
        agent (a ``transfer_to_<agent>`` call stored there), followed down from this conversation.
        """
        return await self._delegates(await self.list_conversations(), agent_name, conversation_id)

    async def _delegates(
        self, listing: list[ConversationInfo], agent_name: str, conversation_id: str
    ) -> list[ConversationInfo]:
        from ..handoffs import delegate_conversation_id

        by_id: dict[str, list[ConversationInfo]] = {}
        for c in listing:
            by_id.setdefault(c.conversation_id, []).append(c)
        found: list[ConversationInfo] = []
        callers = [(agent_name, conversation_id)]
        while callers:
            caller, conversation = callers.pop()
            candidates = by_id.get(delegate_conversation_id(conversation, caller), [])
            called = await self._transfers(caller, conversation) if candidates else set()
            for c in candidates:
                if _transfer_tool(c.agent_name) in called and c not in found:
                    found.append(c)
                    callers.append((c.agent_name, c.conversation_id))
        return found

    async def _transfers(self, agent_name: str, conversation_id: str) -> set[str]:
        """The transfer tools this side of the conversation called."""
        from ..handoffs import TRANSFER_PREFIX

        session = self.session(agent_name, conversation_id)
        try:
            items = await session.get_items()
        finally:
            await session.close()
        return {
            str(name)
            for m in items
            if m.get("role") == "assistant"
            for call in m.get("tool_calls") or ()
            if isinstance(call, dict)
            and isinstance(name := (call.get("function") or {}).get("name"), str)
            and name.startswith(TRANSFER_PREFIX)
        }

    async def delete_with_delegates(self, agent_name: str, conversation_id: str) -> list[ConversationInfo]:
        """Delete a conversation and its delegates' conversations (and only those); what was deleted."""
        listing = await self.list_conversations()
        doomed = [c for c in listing if (c.agent_name, c.conversation_id) == (agent_name, conversation_id)]
        doomed += await self._delegates(listing, agent_name, conversation_id)
        return [c for c in doomed if await self.delete(c.agent_name, c.conversation_id)]

    @abstractmethod
    def describe(self) -> str:
        """One line saying what and where the store is (never a password)."""

    async def aclose(self) -> None:
        """Release connections the store opened (a no-op for stores that hold none)."""
        return None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class FileStore(Store):
    def __init__(self, storage_dir: str | os.PathLike[str]) -> None:
        self.storage_dir = Path(storage_dir)

    def session(self, agent_name: str, conversation_id: str, agent_instructions: str | None = None) -> FileSession:
        return FileSession(agent_name, conversation_id, agent_instructions, self.storage_dir)

    async def list_conversations(self) -> list[ConversationInfo]:
        return await asyncio.to_thread(FileSession.list_conversations, self.storage_dir)

    async def delete(self, agent_name: str, conversation_id: str) -> bool:
        return await self.session(agent_name, conversation_id).delete_conversation()

    def describe(self) -> str:
        return f"folder {self.storage_dir.resolve()} (one JSONL file per agent and conversation)"


class SQLiteStore(Store):
    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)

    def session(self, agent_name: str, conversation_id: str, agent_instructions: str | None = None) -> SQLiteSession:
        return SQLiteSession(agent_name, conversation_id, agent_instructions, self.db_path)

    async def list_conversations(self) -> list[ConversationInfo]:
        return await asyncio.to_thread(SQLiteSession.list_conversations, self.db_path)

    async def delete(self, agent_name: str, conversation_id: str) -> bool:
        return await self.session(agent_name, conversation_id).delete_conversation()

    def describe(self) -> str:
        return f"SQLite database {self.db_path.expanduser().resolve()}"


class PostgresStore(Store):
    def __init__(self, url: str, table_prefix: str = "timestep_") -> None:
        self.url = url
        self.table_prefix = table_prefix

    def session(self, agent_name: str, conversation_id: str, agent_instructions: str | None = None) -> PostgresSession:
        return PostgresSession(
            agent_name, conversation_id, agent_instructions, url=self.url, table_prefix=self.table_prefix
        )

    async def list_conversations(self) -> list[ConversationInfo]:
        return await PostgresSession.list_conversations(url=self.url, table_prefix=self.table_prefix)

    async def delete(self, agent_name: str, conversation_id: str) -> bool:
        return await self.session(agent_name, conversation_id).delete_conversation()

    def describe(self) -> str:
        return describe_store(self.url, self.table_prefix)

    async def aclose(self) -> None:
        await PostgresSession.close_pools(self.url)


def _transfer_tool(agent_name: str) -> str | None:
    """The tool that transfers to this agent; None for a name no transfer tool can be built from."""
    from ..exceptions import ConfigurationError
    from ..handoffs import handoff_tool_name  # at call time: handoffs imports the sessions package

    try:
        return handoff_tool_name(agent_name)
    except ConfigurationError:
        return None


def open_store(spec: str | os.PathLike[str]) -> Store:
    """The store a spec names: a folder path, ``sqlite:///abs.db``, ``sqlite:rel.db`` or ``postgresql://...``."""
    if isinstance(spec, os.PathLike):
        return _folder_store(os.fspath(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(f"a store must be {_FORMS}; got {spec!r}")
    spec = spec.strip()
    lowered = spec.lower()
    if lowered.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("asyncpg") is None:
            raise ConfigurationError(f"PostgreSQL store {redact(spec)} needs asyncpg: {INSTALL_HINT}")
        return PostgresStore(spec)
    if lowered.startswith("sqlite:"):
        return SQLiteStore(_sqlite_path(spec))
    if _URL_RE.match(spec):
        scheme = spec.split(":", 1)[0]
        raise ConfigurationError(f"unknown store kind {scheme!r} in {spec!r}: use {_FORMS}")
    return _folder_store(spec)


def _sqlite_path(spec: str) -> Path:
    rest = spec[len("sqlite:") :]
    if rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ConfigurationError(
                f"SQLite store {spec!r} names a host ({authority!r}); write sqlite:///absolute/path.db "
                "(three slashes) or sqlite:relative/path.db"
            )
        rest = "/" + path.lstrip("/")
    rest = unquote(rest.split("?", 1)[0])
    if rest in ("", "/"):
        raise ConfigurationError(
            f"SQLite store {spec!r} names no file: write sqlite:///absolute/path.db or sqlite:file.db"
        )
    return Path(rest).expanduser()


def _folder_store(spec: str) -> FileStore:
    path = Path(spec).expanduser()
    if path.exists() and not path.is_dir():
        try:
            with open(path, "rb") as fh:
                is_sqlite = fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
        except OSError:
            is_sqlite = False
        hint = f"sqlite:{spec}" if is_sqlite else _FORMS
        raise ConfigurationError(f"store {spec!r} is a file, not a folder; did you mean {hint}?")
    return FileStore(path)
