"""The Session protocol every conversation store implements.

A session is one agent's side of one conversation, kept as two ordered lists in one store:

* **messages**, the Chat Completions messages (every item with a ``role``, the system message
  included), which ``get_items`` returns and the model is sent;
* **the journal**, Timestep's own records (every item without a ``role``; they carry a ``journal``
  key): a tool call that started, a pause for approval, a person's decision. ``get_journal`` returns
  them. The journal is what lets a run resume in another process, and never run a tool twice blindly
  after a crash.

Both are written by one ``add_items`` call, in one atomic write, so a crash never separates a
message from the record written with it; they are read apart so that code made for the OpenAI
Agents SDK's Session (or the ``openai`` package's message types) only ever meets messages.

Four async methods make a store (``get_items``, ``add_items``, ``pop_item``, ``clear_session``),
so a new backend is a small class. ``get_journal`` is optional for a store of your own: without it
the run loop splits what ``get_items`` returns by the ``journal`` key. ``derive`` gives a handoff's
delegate a session in the same store. A store may also offer ``lock(timeout)``, an async context
manager the run holds while it changes the conversation, so that two runs of one conversation (two
processes resuming the same approval, say) take turns instead of both running a tool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..exceptions import SessionNameError

Item = dict[str, Any]

MAX_NAME = 200  # characters of a name once percent-encoded: what fits in a file name, in every store
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~")


@runtime_checkable
class Session(Protocol):
    """One agent's stored side of one conversation."""

    agent_name: str
    conversation_id: str
    agent_instructions: str | None

    @property
    def session_id(self) -> str:
        """The conversation id, under the name the OpenAI Agents SDK's Session protocol uses."""
        ...

    async def get_items(self, limit: int | None = None) -> list[Item]:
        """The messages in order (system message first), or the latest ``limit`` of them."""
        ...

    async def add_items(self, items: list[Item]) -> None:
        """Append messages and journal records, mixed, atomically: all of them, in order, or none."""
        ...

    async def pop_item(self) -> Item | None:
        """Remove and return the latest message, with the journal records written after it.

        Never the system message; None if there is no other message.
        """
        ...

    async def clear_session(self) -> None:
        """Forget the conversation's messages (all but the system message) and its whole journal."""
        ...

    async def get_journal(self) -> list[Item]:
        """The journal records, in the order they were written.

        Optional for a store of your own: when a session has no ``get_journal``, the run loop takes
        the items of ``get_items`` that have a ``journal`` key as the journal.
        """
        ...

    async def close(self) -> None:
        """Release what the store holds open for this session; idempotent (see each store)."""
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


def storable(item: Any) -> str | None:
    """Why ``item`` cannot be stored, or None: a store keeps messages and journal records only.

    Anything else (a Responses-style ``function_call`` item of the OpenAI Agents SDK, say) would
    come back from neither ``get_items`` nor a run, so it is refused when written, not lost later.
    """
    if not isinstance(item, dict):
        return f"an item must be a dict, got {type(item).__name__}"
    if "role" not in item and "journal" not in item:
        kind = f" (type {item['type']!r})" if isinstance(item.get("type"), str) else ""
        return (
            f"an item{kind} has neither 'role' nor 'journal': a session holds Chat Completions messages "
            "and Timestep's journal records, nothing else"
        )
    return None


def is_message(item: Item) -> bool:
    """A message has a ``role``; anything else stored is a journal record."""
    return "role" in item


def encode_name(name: str, what: str) -> str:
    """Percent-encode a checked name into one safe path component (reversible with ``unquote``).

    Only ASCII letters, digits, ``-``, ``_``, ``~`` and a ``.`` that is not the first character pass
    through, so ``..``, ``/``, ``\\`` can never leave a folder and a leading dot never hides a file.
    """
    out = []
    for n, ch in enumerate(name):
        if ch in _SAFE or (ch == "." and n > 0):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def check_names(agent_name: str, conversation_id: str) -> None:
    """One rule for names in every store, so a name that works in one works in all and reads back exactly.

    Refused, with a SessionNameError when the session is made: anything but a non-empty string, NUL
    (C strings, and so SQLite's and PostgreSQL's text, end at it), text that is not valid Unicode (a
    lone surrogate cannot be written as UTF-8, so it could never be listed back under its own name)
    and names longer than :data:`MAX_NAME` characters once percent-encoded (a file name's limit).
    """
    for what, value in (("agent_name", agent_name), ("conversation_id", conversation_id)):
        if not isinstance(value, str) or not value:
            raise SessionNameError(f"{what} must be a non-empty string, got {value!r}")
        if "\x00" in value:
            raise SessionNameError(f"{what} must not contain NUL characters, got {value!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SessionNameError(f"{what} is not valid Unicode text (a lone surrogate?): {value!r}") from None
        encoded = len(encode_name(value, what))
        if encoded > MAX_NAME:
            raise SessionNameError(
                f"{what} is too long to name a conversation ({encoded} characters once encoded, at most {MAX_NAME})"
            )
