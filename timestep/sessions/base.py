"""The Session protocol every conversation store implements.

A session is one agent's side of one conversation: an ordered list of *items*. Most items are
Chat Completions messages (they have a ``role``). The rest are Timestep's journal records (they have
a ``journal`` key and no ``role``): a tool call that started, a pause for approval, a person's
decision. The run loop sends only messages to the model; the journal is what lets a run resume in
another process, and never run a tool twice blindly after a crash.

Four async methods make a store, so a new backend is a small class; ``derive`` gives a handoff's
delegate a session in the same store. A store may also offer ``lock(timeout)``, an async context
manager the run holds while it changes the conversation, so that two runs of one conversation (two
processes resuming the same approval, say) take turns instead of both running a tool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

Item = dict[str, Any]


@runtime_checkable
class Session(Protocol):
    """One agent's stored side of one conversation."""

    agent_name: str
    conversation_id: str
    agent_instructions: str | None

    async def get_items(self, limit: int | None = None) -> list[Item]:
        """All items in order, or the latest ``limit`` of them (still in order)."""
        ...

    async def add_items(self, items: list[Item]) -> None:
        """Append items atomically: all of them, in order, or none."""
        ...

    async def pop_item(self) -> Item | None:
        """Remove and return the latest item (never the system message); None if there is none."""
        ...

    async def clear_session(self) -> None:
        """Forget the conversation, keeping the system message."""
        ...

    def derive(self, agent_name: str, conversation_id: str, agent_instructions: str | None) -> Session:
        """A session for another agent in the same store (used for handoffs)."""
        ...


@dataclass(frozen=True)
class ConversationInfo:
    """One stored conversation, as ``timestep sessions list`` shows it."""

    agent_name: str
    conversation_id: str
    message_count: int
    updated_at: datetime


def system_item(instructions: str | None) -> Item | None:
    return {"role": "system", "content": instructions} if instructions else None


def is_message(item: Item) -> bool:
    return "role" in item
