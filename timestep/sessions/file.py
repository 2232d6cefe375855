"""FileSession: one JSONL file per agent and conversation, the embedded default.

How it keeps every message, and keeps appends cheap:

* **Append-only.** ``add_items`` writes the new lines at the end of the file with one ``write`` on a
  descriptor opened ``O_APPEND``; nothing already stored is rewritten, so the cost of an append does
  not grow with the conversation.
* **Advisory locks.** Writers hold ``flock(LOCK_EX)`` while they write and readers ``LOCK_SH`` while
  they read, so two processes appending to one conversation never interleave or lose a line, and a
  reader never mistakes a line being written for a torn one.
* **Torn lines are repaired, not dropped.** A process killed mid-write leaves a last line without
  its newline. Whoever next holds the exclusive lock moves those bytes to ``<file>.torn`` (kept for a
  person to inspect) and truncates the file back to its last complete line. A damaged line anywhere
  else is a :class:`~timestep.exceptions.SessionCorruptError` naming the file and line: never a
  silent drop.
* **Safe names.** Agent names and conversation ids are percent-encoded into file names (only ASCII
  letters, digits, ``-``, ``_``, ``~`` and a ``.`` that is not the first character pass through), so
  ``..``, ``/`` or ``\\`` can never leave ``storage_dir``, names with spaces work, and the
  original names can be listed back. Names every store refuses (NUL, lone surrogates, too long:
  :func:`~timestep.sessions.base.check_names`) are refused here too.
* **Messages and journal in one file.** Journal records are lines like any other, so one append
  writes a message and its record together; reads split them (a line with a ``role`` is a message).
* **One file per conversation.** The run lock (``lock()``) is an open-file-description lock on a
  byte far past the end of the ``.jsonl`` itself, not a second file.
* **A read cache.** Each session remembers what it has parsed and the file's size; the next read
  parses only the bytes appended since (by anyone), so a long conversation is parsed once.
* **The event loop stays free.** Small operations (the common case: a lock that is free and a few
  KB to read) run inline, because a thread hop costs more than the work; a contended lock or a large
  read moves to a worker thread.

``pop_item`` and ``clear_session`` truncate in place (same file, same lock), never rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ..exceptions import SessionBusyError, SessionCorruptError, SessionNameError, SessionUnavailableError
from .base import ConversationInfo, Item, check_names, encode_name, is_message, storable, system_item

T = TypeVar("T")

_INLINE_READ_LIMIT = 256 * 1024
_RUN_LOCK_BYTE = 1 << 62  # far past any data: locking a byte beyond the end of a file is allowed
_TAIL = 256


class _WouldBlock(Exception):
    """An operation that should not run on the event loop thread; retry it in a worker thread."""


def decode_name(encoded: str) -> str:
    from urllib.parse import unquote

    return unquote(encoded, errors="replace")  # names are checked valid UTF-8 when written


class FileSession:
    """A conversation stored as ``<storage_dir>/<agent>/<conversation>.jsonl``."""

    def __init__(
        self,
        agent_name: str,
        conversation_id: str,
        agent_instructions: str | None = None,
        storage_dir: str | os.PathLike[str] = "conversations",
        *,
        fsync: bool = False,
    ) -> None:
        check_names(agent_name, conversation_id)
        self.agent_name = agent_name
        self.conversation_id = conversation_id
        self.agent_instructions = agent_instructions
        self.storage_dir = Path(storage_dir)
        self.fsync = fsync
        root = self.storage_dir.resolve()
        self.path = (
            root / encode_name(agent_name, "agent_name") / (encode_name(conversation_id, "conversation_id") + ".jsonl")
        )
        if self.path.parent.parent != root:  # belt and braces: encoding already guarantees this
            raise SessionNameError(f"conversation {conversation_id!r} would be stored outside {root}")
        self._items: list[Item] = []
        self._offset = 0
        self._tail = b""  # the last bytes of what the cache holds, to notice a rewritten end
        self._stamp: tuple[int, int] | None = None  # (inode, mtime_ns) of the cached view
        self._held: tuple[int, int] | None = None  # (descriptor, thread) of the run lock this session holds

    def __repr__(self) -> str:
        return f"FileSession({self.agent_name!r}, {self.conversation_id!r}, storage_dir={str(self.storage_dir)!r})"

    @property
    def session_id(self) -> str:
        """The conversation id, as the OpenAI Agents SDK's Session protocol names it."""
        return self.conversation_id

    def derive(self, agent_name: str, conversation_id: str, agent_instructions: str | None) -> FileSession:
        # The resolved folder: a delegate's file must not move if the working directory changes.
        return FileSession(agent_name, conversation_id, agent_instructions, self.path.parent.parent, fsync=self.fsync)

    # -- async API -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, timeout: float = 120.0) -> AsyncIterator[None]:
        """Hold this conversation for one run, across processes and within one.

        An open-file-description lock (``F_OFD_SETLK``) on one byte far past the end of the
        conversation's own ``.jsonl``, so opening a conversation creates one file, not two. It is
        independent of the ``flock`` every append and read takes (Linux keeps the two kinds apart),
        and, unlike a classic POSIX lock, closing another descriptor of the file (every append does)
        never drops it, and a second ``open`` in the same process is a second holder that waits. The
        kernel drops it when the holder's descriptor closes, so a crash never strands the
        conversation. Where there are no such locks, ``flock`` on a ``<file>.lock`` beside it.
        """
        import asyncio  # at call time: ``import timestep`` stays light

        ofd = hasattr(fcntl, "F_OFD_SETLK")
        lock_path = str(self.path) if ofd else str(self.path) + ".lock"
        fd = self._open_lock(lock_path)
        lent = False
        try:
            deadline = time.monotonic() + timeout
            delay = 0.005
            while not _try_lock(fd, ofd):
                if time.monotonic() >= deadline:
                    raise SessionBusyError(
                        f"conversation {self.conversation_id!r} of {self.agent_name!r} is still being run "
                        f"elsewhere after {timeout:g} s ({lock_path})"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
            if ofd and self._held is None:
                # The run's reads and appends on this thread reuse this descriptor: no open and close each.
                self._held, lent = (fd, threading.get_ident()), True
            yield
        finally:
            if lent:
                self._held = None
            os.close(fd)

    def _open_lock(self, lock_path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND  # as appends open it: the run's appends may use it
        try:
            return os.open(lock_path, flags, 0o600)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(lock_path, flags, 0o600)

    def _borrow(self, blocking: bool) -> int:
        """The run lock's descriptor, for an operation that runs inline on the lock holder's thread; else -1.

        Only inline: the operation then runs start to end without yielding, so no other operation of
        this process can share the descriptor's ``flock`` halfway through (a worker thread opens its own).
        """
        held = self._held
        if blocking or held is None or held[1] != threading.get_ident():
            return -1
        return held[0]

    def _release(self, fd: int, borrowed: bool) -> None:
        if borrowed:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            os.close(fd)

    async def get_items(self, limit: int | None = None) -> list[Item]:
        if limit is not None and limit <= 0:
            return []
        messages = [item for item in await self._run(self._read) if is_message(item)]
        return messages if limit is None else messages[-limit:]

    async def get_journal(self) -> list[Item]:
        return [item for item in await self._run(self._read) if not is_message(item)]

    async def add_items(self, items: list[Item]) -> None:
        if not items:
            return
        problem = next((p for p in map(storable, items) if p is not None), None)
        if problem is not None:
            raise SessionCorruptError(f"cannot store an item in {self.path}: {problem}", location=str(self.path))
        try:
            lines = [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in items]
            data = ("\n".join(lines) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError: text that is not utf-8
            raise SessionCorruptError(f"cannot store an item in {self.path}: {exc}", location=str(self.path)) from exc
        stored = [json.loads(line) for line in lines]  # the cache holds what a reload would read
        await self._run(lambda blocking: self._append(data, stored, blocking))

    async def pop_item(self) -> Item | None:
        return await self._run(self._pop)

    async def clear_session(self) -> None:
        await self._run(self._clear)

    async def delete_conversation(self) -> bool:
        """Remove the conversation completely (system message included); False if it was not stored.

        Refused with SessionBusyError while a run holds the conversation: its lock lives on the file,
        and a file unlinked under a run would let the next run lock a new one at the same time.
        """
        import asyncio

        return await asyncio.to_thread(self._delete)

    def _delete(self) -> bool:
        """Unlink under the writers' lock, so a conversation is never deleted halfway through an append."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if hasattr(fcntl, "F_OFD_SETLK") and not _try_lock(fd, True):
                raise SessionBusyError(
                    f"conversation {self.conversation_id!r} of {self.agent_name!r} is being run; "
                    f"not deleted ({self.path})"
                )
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
        finally:
            os.close(fd)
        for sidecar in (".torn", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(self.path) + sidecar).unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only succeeds when no other conversation of this agent is left
        return True

    async def close(self) -> None:
        """Nothing to release: a FileSession keeps no file open between calls (a held ``lock()``
        closes its own). Idempotent; the session stays usable afterwards."""
        return None

    async def _run(self, op: Callable[[bool], T]) -> T:
        try:
            return op(False)
        except _WouldBlock:
            import asyncio  # only when the work must leave the event loop

            return await asyncio.to_thread(op, True)

    # -- the file, under its lock ------------------------------------------------------------------

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                return os.open(self.path, flags, 0o600)
            except OSError as exc:
                raise SessionUnavailableError(f"cannot create {self.path}: {exc.strerror}") from exc
        except OSError as exc:
            raise SessionUnavailableError(f"cannot open {self.path}: {exc.strerror}") from exc

    @staticmethod
    def _lock(fd: int, mode: int, blocking: bool) -> None:
        if blocking:
            fcntl.flock(fd, mode)
            return
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _WouldBlock from None
            raise

    def _read(self, blocking: bool) -> list[Item]:
        fd = self._borrow(blocking)
        borrowed = fd >= 0
        try:
            if not borrowed:
                fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            sys_item = system_item(self.agent_instructions)
            return [sys_item] if sys_item else []
        try:
            self._lock(fd, fcntl.LOCK_SH, blocking)
            st = os.fstat(fd)
            if not self._sync_cache(fd, st, blocking):
                # A torn tail: repair it under the exclusive lock, then read again.
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not borrowed:
                    os.close(fd)
                    fd = self._open(os.O_RDWR | os.O_APPEND)
                self._lock(fd, fcntl.LOCK_EX, blocking)
                self._repair_tail(fd)
                self._sync_cache(fd, os.fstat(fd), blocking)
            if not self._items:
                sys_item = system_item(self.agent_instructions)
                return [sys_item] if sys_item else []
            return list(self._items)
        finally:
            self._release(fd, borrowed)

    def _sync_cache(self, fd: int, st: os.stat_result, blocking: bool) -> bool:
        """Bring the cache up to date with the file; False if the file ends in a torn line."""
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._stamp is not None and st.st_ino == self._stamp[0]:
            if st.st_size == self._offset and stamp == self._stamp:
                return True
            start = self._offset if st.st_size > self._offset and self._tail_unchanged(fd) else None
        else:
            start = None
        if start is None:
            self._items, self._offset, self._tail = [], 0, b""
            start = 0
        if not blocking and st.st_size - start > _INLINE_READ_LIMIT:
            raise _WouldBlock
        data = os.pread(fd, st.st_size - start, start)
        end = data.rfind(b"\n") + 1
        if end != len(data):
            return False
        self._items.extend(self._parse(data, len(self._items)))
        self._offset = start + end
        self._tail = (self._tail + data)[-_TAIL:]
        self._stamp = stamp
        return True

    def _tail_unchanged(self, fd: int) -> bool:
        """Whether what this cache read last is still where it was: if another writer popped and then
        appended, the file grew but the cached end no longer matches, and only a full read is right."""
        return os.pread(fd, len(self._tail), self._offset - len(self._tail)) == self._tail

    def _parse(self, data: bytes, lines_before: int) -> list[Item]:
        items = []
        for n, line in enumerate(data.splitlines(), start=lines_before + 1):
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise SessionCorruptError(
                    f"{self.path}, line {n}: not valid JSON ({exc}); the file was changed outside Timestep",
                    location=str(self.path),
                    line=n,
                ) from None
            if not isinstance(item, dict):
                raise SessionCorruptError(
                    f"{self.path}, line {n}: expected a JSON object, found {type(item).__name__}",
                    location=str(self.path),
                    line=n,
                )
            items.append(item)
        return items

    def _repair_tail(self, fd: int) -> None:
        """Move an incomplete last line (a writer killed mid-write) to ``<file>.torn``; keep the rest."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            chunk = os.pread(fd, step, pos - step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        torn = os.pread(fd, size - keep, keep)
        with open(str(self.path) + ".torn", "ab") as sidecar:
            sidecar.write(torn + b"\n")
        os.ftruncate(fd, keep)

    def _append(self, data: bytes, items: list[Item], blocking: bool) -> None:
        fd = self._borrow(blocking)
        borrowed = fd >= 0
        if not borrowed:
            fd = self._open(os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            self._lock(fd, fcntl.LOCK_EX, blocking)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # deleted while we waited: write to the path's new file instead
                stale, fd = fd, -1
                self._release(stale, borrowed)
                borrowed = False
                fd = self._open(os.O_RDWR | os.O_APPEND | os.O_CREAT)
                self._lock(fd, fcntl.LOCK_EX, blocking)
                st = os.fstat(fd)
            size = st.st_size
            in_sync = self._stamp is not None and self._stamp == (st.st_ino, st.st_mtime_ns) and size == self._offset
            # What this cache read last ends in a newline; anything else may end in a torn line.
            if size and not in_sync and os.pread(fd, 1, size - 1) != b"\n":
                self._repair_tail(fd)
                size = os.fstat(fd).st_size
            if size == 0:
                in_sync = True
                self._items, self._offset, self._tail = [], 0, b""
                sys_item = system_item(self.agent_instructions)
                if sys_item is not None:
                    data = (json.dumps(sys_item, ensure_ascii=False) + "\n").encode() + data
                    items = [sys_item, *items]
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:  # a full disk, say: take back the part that was written, all or nothing
                os.ftruncate(fd, size)
                raise SessionUnavailableError(f"cannot append to {self.path}: {exc.strerror or exc}") from exc
            if in_sync:
                st = os.fstat(fd)
                self._items.extend(items)
                self._offset = st.st_size
                self._tail = (self._tail + data)[-_TAIL:]
                self._stamp = (st.st_ino, st.st_mtime_ns)
        finally:
            if fd >= 0:
                self._release(fd, borrowed)

    def _truncate_to(self, keep_items: int | None, blocking: bool) -> Item | None:
        """Cut the file after its first ``keep_items`` lines (None: before its latest message other
        than the system message, found under the lock); the first line cut, or None."""
        fd = self._open(os.O_RDWR | os.O_APPEND)
        try:
            self._lock(fd, fcntl.LOCK_EX, blocking)
            self._repair_tail(fd)
            self._sync_cache(fd, os.fstat(fd), True)
            if keep_items is None:
                keep_items = _latest_message(self._items)
            removed = self._items[keep_items] if keep_items < len(self._items) else None
            if removed is None:
                return None
            data = os.pread(fd, self._offset, 0)
            pos = 0
            for _ in range(keep_items):
                pos = data.index(b"\n", pos) + 1
            os.ftruncate(fd, pos)
            st = os.fstat(fd)
            del self._items[keep_items:]
            self._offset = pos
            self._tail = data[:pos][-_TAIL:]
            self._stamp = (st.st_ino, st.st_mtime_ns)
            return removed
        finally:
            os.close(fd)

    def _pop(self, blocking: bool) -> Item | None:
        try:
            # Cut at the latest message: the journal records written after it go with it.
            return self._truncate_to(None, blocking)
        except FileNotFoundError:
            return None

    def _clear(self, blocking: bool) -> None:
        items = self._read(blocking)
        floor = 1 if items and items[0].get("role") == "system" else 0
        with contextlib.suppress(FileNotFoundError):
            self._truncate_to(floor, blocking)

    # -- listing -----------------------------------------------------------------------------------

    @staticmethod
    def list_conversations(storage_dir: str | os.PathLike[str] = "conversations") -> list[ConversationInfo]:
        """Every conversation under ``storage_dir``, most recently updated first."""
        root = Path(storage_dir)
        found = []
        for agent_dir in root.iterdir() if root.is_dir() else ():
            if not agent_dir.is_dir():
                continue
            for f in agent_dir.glob("*.jsonl"):
                st = f.stat()
                if st.st_size == 0:
                    continue  # nothing stored: only locked by a run that wrote nothing, or emptied
                with open(f, "rb") as fh:
                    count = sum(1 for line in fh if _is_message_line(line))
                found.append(
                    ConversationInfo(
                        agent_name=decode_name(agent_dir.name),
                        conversation_id=decode_name(f.name[: -len(".jsonl")]),
                        message_count=count,
                        updated_at=datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
        return sorted(found, key=lambda c: c.updated_at, reverse=True)


def _latest_message(items: list[Item]) -> int:
    """Index of the latest message that is not a leading system message; ``len(items)`` if none."""
    floor = 1 if items and items[0].get("role") == "system" else 0
    return next((n for n in range(len(items) - 1, floor - 1, -1) if is_message(items[n])), len(items))


def _try_lock(fd: int, ofd: bool) -> bool:
    """Take the run lock without waiting; False if another holder has it."""
    try:
        if ofd:
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (0, as OFD locks require).
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _RUN_LOCK_BYTE, 1, 0))
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _is_message_line(line: bytes) -> bool:
    """A stored message, not a journal record (whose arguments may well contain a ``role`` key)."""
    if b'"role"' not in line:
        return False
    try:
        item = json.loads(line)
    except ValueError:
        return False
    return isinstance(item, dict) and "role" in item
