"""Durable human-in-the-loop: the tool-call journal, pending calls, and approvals.

Everything a paused or crashed run needs in order to continue is in the session, as journal records
written around each tool call (items with a ``journal`` key, never sent to the model):

``started``    written just before a tool runs. A ``started`` call with no tool result is a call
               whose outcome is unknown (the process died while it ran): it is re-run only if the
               tool is marked idempotent, otherwise it pauses for a person to decide.
``interrupt``  a call paused for approval, with its arguments, prompt and a fingerprint of the
               exact tool call the model made.
``decision``   a person's answer: approve or decline, an optional message, and edited arguments
               (recorded beside the originals, never over them).
``result``     the result of a call that finished while an earlier call of the same message was
               still running: results are stored in call order, so this keeps a finished call's
               result safe until its turn comes.

:func:`replay` reads a session's items back into a :class:`ConversationState` without any I/O: the
messages to send to the model and, for the latest assistant message, which tool calls still lack a
result and why. An approval is bound to a tool call id *and* the fingerprint of that call's
arguments, so it can never authorise a different call, or the same call with other arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ApprovalError
from .handoffs import HANDOFF_RECEIVED
from .sessions.base import Item

InterruptKind = Literal["approval", "unknown_outcome", "message"]


@dataclass(frozen=True)
class Interruption:
    """A tool call waiting for a person. ``run_agent(..., approvals={tool_call_id: ...})`` answers it."""

    tool_call_id: str
    tool_name: str
    args: dict[str, Any]
    prompt: str
    agent: str
    kind: InterruptKind = "approval"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool_call_id": self.tool_call_id,
            "tool_name": self.tool_name,
            "args": self.args,
            "prompt": self.prompt,
            "agent": self.agent,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Decision:
    """A person's answer to an interruption."""

    approve: bool
    message: str | None = None
    args: dict[str, Any] | None = None  # edited arguments, when the person changed them


def parse_decision(tool_call_id: str, value: Any) -> Decision:
    """``True`` / ``False`` / ``"declined: reason"`` / ``{"approve": bool, "message": str, "args": {...}}``."""
    if isinstance(value, Decision):
        return value
    if isinstance(value, bool):
        return Decision(approve=value)
    if isinstance(value, str):
        return Decision(approve=False, message=value)
    if isinstance(value, dict):
        unknown = set(value) - {"approve", "approved", "message", "args"}
        approve = value.get("approve", value.get("approved"))
        if unknown or not isinstance(approve, bool):
            raise ApprovalError(
                f"approval for {tool_call_id!r} must look like {{'approve': True|False, 'message': str, "
                f"'args': dict}}; got {value!r}"
            )
        args = value.get("args")
        if args is not None and not isinstance(args, dict):
            raise ApprovalError(f"approval for {tool_call_id!r}: 'args' must be a dict of arguments")
        message = value.get("message")
        return Decision(approve=approve, message=str(message) if message is not None else None, args=args)
    raise ApprovalError(
        f"approval for {tool_call_id!r} must be True, False, a decline message or a dict; got {value!r}"
    )


def fingerprint(tool_name: str, arguments: Any) -> str:
    """A digest of one exact call: the tool's name and its arguments in canonical JSON."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    canonical = json.dumps([tool_name, arguments], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass
class PendingCall:
    """A tool call of the latest assistant message that has no result yet."""

    id: str
    name: str
    arguments: str
    started: bool = False
    started_args: dict[str, Any] | None = None  # the arguments the guardrails let through
    started_record: Item | None = None  # the journal record of the latest attempt
    interrupt: Item | None = None  # the latest interrupt record of this attempt
    decision: Item | None = None  # the decision on that interrupt, if one was recorded
    decided: list[tuple[Item, Item]] = field(default_factory=list)  # earlier (interrupt, decision) pairs
    handoff_received: bool = False
    result: str | None = None  # a result journaled before its turn to be stored in call order

    @property
    def call_fingerprint(self) -> str:
        return fingerprint(self.name, self.arguments)


@dataclass
class ConversationState:
    messages: list[Item]
    pending: list[PendingCall] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # of the latest assistant message
    call_ids: set[str] = field(default_factory=set)  # every tool call id used in the conversation
    pending_message: Item | None = None  # a user message waiting for a person (a message guardrail asked)

    @property
    def final_output(self) -> str | None:
        """The last assistant answer, if the conversation ends with one."""
        last = self.messages[-1] if self.messages else {}
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            content = last.get("content")
            return content if isinstance(content, str) else None
        return None


async def load(session: Any) -> tuple[list[Item], list[Item]]:
    """A session's messages and its journal, each in the order written.

    Stores that keep the journal apart say so with ``get_journal()``; for a user's own store that
    returns whatever it was given, the two are told apart by the ``journal`` key. A store that can
    read both at once (the database stores' ``get_items_and_journal()``) is asked once.
    """
    both = getattr(session, "get_items_and_journal", None)
    if both is not None:
        messages, journal = await both()
        return messages, journal
    get_journal = getattr(session, "get_journal", None)
    if get_journal is not None:
        return await session.get_items(), await get_journal()
    items = await session.get_items()
    return [i for i in items if "journal" not in i], [i for i in items if "journal" in i]


def replay(messages: list[Item], journal: Sequence[Item] = ()) -> ConversationState:
    """Rebuild what a run needs from stored messages and journal; pure, so it is tested without a store.

    Tool call ids are unique within a conversation, so a journal record finds its call by id alone:
    the order of records matters only among the records of one call.
    """
    if any("journal" in m for m in messages):  # one interleaved list, as older callers pass
        journal = [*journal, *(m for m in messages if "journal" in m)]
        messages = [m for m in messages if "journal" not in m]
    messages = [m for m in messages if "role" in m]
    ids = {c.get("id") for m in messages if m.get("tool_calls") for c in m["tool_calls"]}
    call_ids = {i for i in ids if isinstance(i, str)}
    last_call_msg = _latest_tool_call_message(messages)
    if last_call_msg < 0:
        return ConversationState(messages, call_ids=call_ids, pending_message=pending_message(journal))
    calls = messages[last_call_msg]["tool_calls"]
    pending_calls: dict[str, PendingCall] = {}
    for c in calls:
        fn = c.get("function", {})
        pending_calls[c["id"]] = PendingCall(c["id"], fn.get("name", ""), fn.get("arguments", ""))
    answered = {m.get("tool_call_id", "") for m in messages[last_call_msg + 1 :] if m.get("role") == "tool"}
    for record in journal:
        if (p := pending_calls.get(record.get("call", ""))) is not None:
            _apply_record(p, record)
    pending = [p for cid, p in pending_calls.items() if cid not in answered]
    return ConversationState(messages, pending, calls, call_ids)


def pending_message(journal: Sequence[Item]) -> Item | None:
    """The user message waiting for a person's decision, if the latest one is."""
    waiting: Item | None = None
    for record in journal:
        kind = record.get("journal")
        if kind == "message_interrupt":
            waiting = record
        elif kind == "message_decision" and waiting is not None and record.get("call") == waiting.get("call"):
            waiting = None
    return waiting


def _latest_tool_call_message(messages: list[Item]) -> int:
    """Index of the assistant message with tool calls that ends the conversation, or -1."""
    for n in range(len(messages) - 1, -1, -1):
        role = messages[n].get("role")
        if role == "assistant" and messages[n].get("tool_calls"):
            return n
        if role in ("user", "system", "assistant"):
            return -1
    return -1


def _apply_record(p: PendingCall, item: Item) -> None:
    kind = item.get("journal")
    if kind == "started":  # a new attempt: what was asked before it has been acted on
        p.started, p.started_args, p.started_record = True, item.get("args"), item
        p.interrupt, p.decision, p.decided = None, None, []
    elif kind == "interrupt":
        if p.interrupt is not None and p.decision is not None:
            p.decided.append((p.interrupt, p.decision))
        p.interrupt, p.decision = item, None
    elif kind == "decision":
        p.decision = item
    elif kind == "result":
        p.result = item.get("content")


def delegate_received(journal: list[Item], parent_call_id: str) -> bool:
    """Whether a delegate already received the message of this transfer call."""
    return any(r.get("journal") == HANDOFF_RECEIVED and r.get("call") == parent_call_id for r in journal)


# -- integrity: an approval covers exactly the call a person saw ---------------------------------

SECRET_ENV = "TIMESTEP_APPROVAL_SECRET"


def digest(record: Item) -> str:
    """A digest of one journal record (its signature left out), to bind a decision to its question."""
    body = {k: v for k, v in record.items() if k != "sig"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Seal:
    """Signs the journal records that can make a tool run, and checks them when they are read back.

    With a secret (``RunConfig(approval_secret=...)`` or ``$TIMESTEP_APPROVAL_SECRET``, never
    stored in the session), ``started``, ``interrupt`` and ``decision`` records carry an HMAC over
    the record and the conversation it belongs to, so write access to the store is not enough to
    approve a call, to change what was asked, or to move a record to another conversation. Without
    one, records are unsigned and only their consistency is checked.
    """

    secret: bytes | None
    scope: str

    @classmethod
    def of(cls, session: Any, secret: str | bytes | None) -> Seal:
        if secret is None:
            secret = os.environ.get(SECRET_ENV) or None
        key = secret.encode() if isinstance(secret, str) else secret
        return cls(key, json.dumps([session.agent_name, session.conversation_id], ensure_ascii=False))

    def sign(self, record: Item) -> Item:
        if self.secret:
            record["sig"] = self._mac(record)
        return record

    def check(self, record: Item, what: str, call_id: str) -> None:
        if not self.secret:
            return
        sig = record.get("sig")
        if not isinstance(sig, str) or not hmac.compare_digest(sig, self._mac(record)):
            state = "unsigned" if sig is None else "wrongly signed"
            raise ApprovalError(
                f"the {what} record of tool call {call_id!r} is {state}: it was not written by a run "
                "holding the approval secret; refusing it"
            )

    def _mac(self, record: Item) -> str:
        assert self.secret is not None
        body = {k: v for k, v in record.items() if k != "sig"}
        message = json.dumps([self.scope, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hmac.new(self.secret, message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def check_interrupt(seal: Seal, call: PendingCall, record: Item) -> None:
    """The question put to a person is the call the model made, with the arguments it shows."""
    seal.check(record, "interrupt", call.id)
    if record.get("call") != call.id or record.get("tool") != call.name:
        problem = "it names another call or tool"
    elif fingerprint(call.name, record.get("args")) != record.get("args_fingerprint"):
        problem = "the arguments it shows are not the ones it was asked about"
    elif record.get("call_fingerprint") != call.call_fingerprint:
        problem = "the model's call changed in the session since the question was asked"
    elif record.get("kind") == "unknown_outcome" and (
        call.started_args is None or fingerprint(call.name, call.started_args) != record.get("args_fingerprint")
    ):
        problem = "the arguments to run again are not the ones the person was shown"
    else:
        return
    raise ApprovalError(
        f"tool call {call.id!r}: the stored question no longer matches the call ({problem}); refusing it"
    )


def check_decision(seal: Seal, call: PendingCall, interrupt: Item, decision: Item) -> None:
    """A recorded decision answers this very question, and nothing else."""
    check_interrupt(seal, call, interrupt)
    seal.check(decision, "decision", call.id)
    edited = decision.get("args")
    if (
        decision.get("call") != call.id
        or decision.get("interrupt") != digest(interrupt)
        or not isinstance(decision.get("approve"), bool)
        or not (edited is None or isinstance(edited, dict))
    ):
        raise ApprovalError(
            f"tool call {call.id!r}: a recorded decision does not answer the question that was asked of it; refusing it"
        )


def check_started(seal: Seal, call: PendingCall) -> None:
    """The arguments of an attempt that may run again are the ones its journal record was signed with."""
    if call.started_record is not None:
        seal.check(call.started_record, "started", call.id)
