"""The read cache the database stores keep per session, so a long conversation is decoded once.

A run reads its whole conversation at every start, and a server holding a chat open starts a run
per user turn: without a cache, turn ``n`` fetches and decodes all ``n`` earlier messages again.
Each :class:`~timestep.sessions.sqlite.SQLiteSession` and
:class:`~timestep.sessions.postgres.PostgresSession` object therefore remembers what it has read
(messages and journal, decoded) as a :class:`Snapshot`, and every read asks the database only for
what it does not hold, in one statement:

* **What says the cache is still good.** The conversation's row id and its ``generation``, a number
  every ``pop_item`` and ``clear_session`` changes (and a new row starts at: SQLite may give a
  re-created conversation the id of a deleted one). While both are unchanged, the conversation has
  only grown, and the rows with a ``seq`` past the cached ones are exactly what is new, whoever
  wrote them (another session object, another process, another machine). When either changed, the
  same statement returns the whole conversation and the snapshot is rebuilt.
* **One statement.** ``conversations LEFT JOIN items`` on ``seq`` past the cached position (or from
  the start when the row id or generation differ from the cached ones) gives the check and the new
  rows together, from one consistent view of the database: never a generation from before a pop
  and rows from after it.
* **Own appends extend it directly.** An append that finds the conversation exactly where the
  snapshot left it (same row, same generation, next ``seq`` right after the cached ones) adds its
  items to the snapshot, so the next read has nothing to fetch. Any other append leaves the
  snapshot alone; the next read fetches what came between.
* **What it does not see.** A row changed in place by hand (an ``UPDATE`` outside Timestep) after
  a session read it: that session keeps the item as it read it; a new session object reads the row.
  Nor a pop or clear by a Timestep from before the ``0003_generation`` migration, which removes
  rows without changing the generation: processes sharing a database should run the same version.
* **Reads return copies of the lists.** The items themselves are shared with the snapshot, as
  FileSession's read cache shares its own: change a copy (``copy.deepcopy``) if you need to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .base import Item


@dataclass
class Snapshot:
    """What one session object has read of its conversation, and where in the database it stopped."""

    conv: int  # the conversations row id
    generation: int  # changed by every pop_item and clear_session
    next_seq: int  # the first seq not yet read: anything at or past it is new
    messages: list[Item] = field(default_factory=list)
    journal: list[Item] = field(default_factory=list)

    def covers(self, conv: int, generation: int) -> bool:
        """Whether rows read for (``conv``, ``generation``) continue this snapshot."""
        return self.conv == conv and self.generation == generation

    def add(self, rows: Iterable[tuple[int, Item]]) -> None:
        """Append (seq, item) rows read or written at or past ``next_seq``, skipping any already held."""
        for seq, item in rows:
            if seq < self.next_seq:
                continue
            (self.messages if "role" in item else self.journal).append(item)
            self.next_seq = seq + 1


def refreshed(
    base: Snapshot | None,
    current: Snapshot | None,
    head: tuple[int, int, int] | None,
    items: list[tuple[int, Item]],
) -> tuple[Snapshot | None, Snapshot | None]:
    """(the snapshot to keep, the snapshot to answer from) after one read.

    The read asked from ``base``'s position; ``current`` is the session's snapshot now, which other
    tasks of the same session may have changed meanwhile. ``head`` is (row id, generation, next seq)
    as read (next seq 0 where the store keeps none), None when the conversation has no row; ``items``
    the (seq, item) rows read: those past ``base`` when it covers ``head``, else the whole conversation.
    """
    if head is None:
        return None, None
    conv, generation, next_seq = head
    if base is not None and base.covers(conv, generation):
        # Rows past base only: they continue base, not whatever replaced it meanwhile.
        base.add(items)
        base.next_seq = max(base.next_seq, next_seq)
        return (base if current is base else current), base
    # The whole conversation. A snapshot of the same row and generation holds a prefix of it.
    fresh = current if current is not None and current.covers(conv, generation) else Snapshot(conv, generation, 1)
    fresh.add(items)
    fresh.next_seq = max(fresh.next_seq, next_seq)
    return fresh, fresh


def answer(snapshot: Snapshot | None, system: Item | None) -> tuple[list[Item], list[Item]]:
    """The lists a read returns (the caller's own copies): messages, led by the system message a
    conversation with none stored reports, and the journal."""
    if snapshot is None or not snapshot.messages:
        return ([system] if system else []), ([] if snapshot is None else list(snapshot.journal))
    return list(snapshot.messages), list(snapshot.journal)
