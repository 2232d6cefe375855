"""Guarding the conversation itself: what goes into an agent, and what comes out of it.

:class:`~timestep.guardrails.MessageGuardrail`\\ s see each incoming user message before any model
call; :class:`~timestep.guardrails.AnswerGuardrail`\\ s see the agent's answer. With ``stream=True``
an answer is released to the event stream only as far as every answer guardrail has passed it
(:class:`AnswerGate`), so a block part-way means the person never saw the blocked text. The typed
final answer (``output_type``) is read here too, because a guardrail's rewrite must still be a
valid answer.

What is stored: a blocked message is not stored (the model never sees it); a journal record says
which guardrail blocked it and why. A redacted message is stored redacted, and the original is not
kept anywhere. A blocked answer is stored as the refusal the person got, with a journal record of
the guardrail, the reason and the model's original text (never sent to the model again).
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .approvals import Decision, Interruption, Seal, digest, fingerprint, parse_decision
from .exceptions import OutputValidationError
from .guardrails import AnswerGuardrail, GuardrailInterrupt, GuardrailResult, MessageGuardrail, labels

if TYPE_CHECKING:
    from .agent import Agent
    from .execution import RunContext
    from .sessions.base import Item, Session

Event = dict[str, Any]
MESSAGE_TOOL = "message"  # the "tool" name an interruption of a user message carries
_SENTENCE_END = re.compile(r"[.!?…](?=\s)|\n")


@dataclass
class Verdict:
    """The combined verdict of a chain of guardrails on one text."""

    action: str = "proceed"  # proceed | block | replace | retry
    guardrail: str | None = None
    reason: str | None = None
    text: str | None = None  # the replacement, for "replace"


async def _judge(guardrail: MessageGuardrail | AnswerGuardrail, text: str) -> GuardrailResult:
    """A guardrail's verdict; one that fails, fails closed."""
    try:
        return await guardrail.check(text)
    except GuardrailInterrupt:
        raise
    except Exception as exc:
        return GuardrailResult.block(f"the guardrail failed ({type(exc).__name__}: {exc})")


# -- answers ----------------------------------------------------------------------------------------


class AnswerGate:
    """Holds an answer back until the answer guardrails have passed it, and says what they decided.

    ``feed`` takes each streamed piece; at every guardrail's checkpoint the text so far is checked
    and what all of them passed is released as ``content_delta`` events. ``finish`` checks the
    whole answer. Without answer guardrails every piece is released at once: streaming is unchanged.
    """

    def __init__(self, agent: Agent, emit: Callable[[Event], None], head: Event, stream: bool) -> None:
        self.guardrails = agent.answer_guardrails
        self.labels = labels(self.guardrails)
        self.emit = emit
        self.head = head
        self.stream = stream
        self.text = ""
        self.released = 0
        self.passed = [0] * len(self.guardrails)
        self.stopped: Verdict | None = None  # a block, or a verdict only the whole answer can settle

    async def feed(self, piece: str) -> None:
        self.text += piece
        if not self.guardrails:
            self._release(len(self.text))
            return
        if self.stopped is not None:
            return
        for n, g in enumerate(self.guardrails):
            upto = _checkpoint(g, self.text)
            if upto is None or upto <= self.passed[n]:
                continue
            verdict = await _judge(g, self.text[:upto])
            if verdict.action == "proceed":
                self.passed[n] = upto
            else:
                self.stopped = Verdict(verdict.action, self.labels[n], verdict.reason, _text_of(verdict))
                if verdict.action == "block":
                    self._announce(self.stopped)
                return
        self._release(min(self.passed))

    async def finish(self, text: str) -> Verdict:
        """The verdict on the whole answer; what passes is released."""
        if self.stopped is not None and self.stopped.action == "block":
            return self.stopped
        if self.stream and not self.text:
            self.text = text  # an answer that did not stream as text (a final-answer tool call)
        original, rewritten_by = text, None
        for n, g in enumerate(self.guardrails):
            verdict = await _judge(g, text)
            if verdict.action == "replace" and isinstance(verdict.result, str):
                text, rewritten_by = verdict.result, self.labels[n]
            elif verdict.action != "proceed":
                found = Verdict(verdict.action, self.labels[n], verdict.reason, _text_of(verdict))
                self._announce(found)
                return found
        if text == original:
            self._release(len(self.text))
            return Verdict(text=text)
        self._announce(Verdict("replace", rewritten_by))
        if self.released == 0:  # nothing of the original was shown: show the rewrite instead
            self.text = text
            self._release(len(text))
        return Verdict("replace", rewritten_by, None, text)

    def _release(self, upto: int) -> None:
        if self.stream and upto > self.released:
            piece = self.text[self.released : upto]
            self.released = upto
            self.emit({"type": "content_delta", **self.head, "delta": piece, "content": piece})

    def _announce(self, verdict: Verdict) -> None:
        self.emit(
            {
                "type": "guardrail",
                **self.head,
                "stage": "answer",
                "guardrail": verdict.guardrail or "",
                "action": verdict.action,
                "reason": verdict.reason,
                "released": self.released,
            }
        )


def _checkpoint(g: AnswerGuardrail, text: str) -> int | None:
    """How much of ``text`` this guardrail can judge now, or None before its first checkpoint."""
    if g.checkpoint == "answer":
        return None
    if isinstance(g.checkpoint, int):
        return len(text) // g.checkpoint * g.checkpoint or None
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return ends[-1] if ends else None


def _text_of(result: GuardrailResult) -> str | None:
    return result.result if isinstance(result.result, str) else None


@dataclass
class Settled:
    """What to make of a reply that could be the final answer."""

    messages: list[Item] = field(default_factory=list)  # to store, in order
    journal: list[Item] = field(default_factory=list)  # to store with them
    status: str | None = None  # "completed" | "blocked"; None: ask the model again
    text: str | None = None
    output: Any = None
    retry: list[Item] = field(default_factory=list)  # sent with the next request, not stored
    problem: str | None = None


async def settle_answer(agent: Agent, reply: Item, gate: AnswerGate) -> Settled:
    """Guard and (with ``output_type``) validate a reply without tool calls, or a final-answer call."""
    spec = agent.output
    calls = reply.get("tool_calls") or []
    if calls:  # the final-answer tool
        call = calls[0]
        args = call["function"]["arguments"]
        assert spec is not None
        try:
            value = spec.parse(args)
        except OutputValidationError as exc:
            err = {"role": "tool", "tool_call_id": call["id"], "content": f"Error: {exc}. Call final_answer again."}
            return Settled(messages=[reply, err], problem=str(exc))
        text = spec.dump(value)
        prefix = [reply, {"role": "tool", "tool_call_id": call["id"], "content": "Answer received."}]
    else:
        text, prefix = reply.get("content") or "", []
    verdict = await gate.finish(text)
    if verdict.action == "block":
        refusal = f"I can't give that answer: {verdict.reason or 'a guardrail blocked it'}."
        record = {
            "journal": "answer_blocked",
            "guardrail": verdict.guardrail,
            "reason": verdict.reason,
            "content": text,
        }
        return Settled([*prefix, {"role": "assistant", "content": refusal}], [record], "blocked", refusal)
    if verdict.action == "retry":
        record = {"journal": "answer_retry", "guardrail": verdict.guardrail, "reason": verdict.reason, "content": text}
        ask = {"role": "user", "content": f"Your answer was not accepted ({verdict.reason}). Please answer again."}
        return Settled(journal=[record], retry=[_as_text_reply(reply, text), ask], problem=verdict.reason)
    final = verdict.text if verdict.text is not None else text
    output = None
    if spec is not None:
        try:
            output = spec.parse(final)
        except OutputValidationError as exc:
            ask = {"role": "user", "content": f"Your answer did not match the required format: {exc}. Answer again."}
            record = {"journal": "answer_invalid", "error": str(exc), "content": final}
            return Settled(journal=[record], retry=[_as_text_reply(reply, final), ask], problem=str(exc))
    stored = {"role": "assistant", "content": final}
    return Settled([*prefix, stored], [], "completed", final, output)


def _as_text_reply(reply: Item, text: str) -> Item:
    return {"role": "assistant", "content": text} if reply.get("tool_calls") else reply


# -- incoming messages -------------------------------------------------------------------------------


@dataclass
class Checked:
    """The messages to store after the message guardrails, or why the run stops before the model."""

    messages: list[Item]
    journal: list[Item] = field(default_factory=list)
    status: str | None = None  # "blocked" | "interrupted"
    text: str | None = None
    interruption: Interruption | None = None


Approved = set[tuple[str, str]]  # (guardrail label, fingerprint of the text a person let through)


async def check_messages(
    agent: Agent,
    session: Session,
    ctx: RunContext,
    head: Event,
    messages: list[Item],
    *,
    start: int = 0,
    first: int = 0,
    approved: Approved | None = None,
) -> Checked:
    """Run the message guardrails over each user message from ``start``; redact, block, ask or pause.

    A person's approval lets the chain go on with the next guardrail; an edit starts the whole
    chain again on the edited text, as for a tool call's arguments (the guardrail that asked is
    not asked again about the text the person approved). ``first`` and ``approved`` resume a chain
    after a paused message's decision: from the guardrail after the one that asked, or (an edit)
    from the first one.
    """
    chain = agent.message_guardrails
    if not chain:
        return Checked(messages)
    out = [dict(m) for m in messages]
    for n, m in enumerate(out):
        if n < start or m.get("role") != "user" or not isinstance(m.get("content"), str):
            continue
        stop = await _guard(agent, session, ctx, head, out, m, first if n == start else 0, set(approved or ()))
        if stop is not None:
            return stop
    return Checked(out)


async def _guard(
    agent: Agent,
    session: Session,
    ctx: RunContext,
    head: Event,
    out: list[Item],
    m: Item,
    first: int,
    approved: Approved,
) -> Checked | None:
    """The chain over one message (edited in place); why the run stops, or None to go on."""
    chain = agent.message_guardrails
    names = labels(chain)
    for _ in range(len(chain) + 2):
        restart = False
        for g, label in list(zip(chain, names, strict=True))[first:]:
            text = m["content"]
            try:
                verdict = await _judge(g, text)
            except GuardrailInterrupt as interrupt:
                if (label, _fingerprint(text)) in approved:
                    continue
                decided = await _ask_inline(agent, ctx, label, interrupt, text)
                if decided is None:
                    return _pause(agent, session, ctx, head, label, interrupt, out, text, approved)
                if not decided.approve:
                    return _blocked(ctx, head, label, _declined(decided.message))
                edited = decided.args.get("content") if decided.args is not None else None
                approved.add((label, _fingerprint(text)))
                if isinstance(edited, str) and edited != text:
                    m["content"] = edited
                    approved.add((label, _fingerprint(edited)))
                    restart = True
                    break
                continue
            if verdict.action == "block":
                return _blocked(ctx, head, label, verdict.reason or "blocked")
            if verdict.action == "replace" and isinstance(verdict.result, str):
                m["content"] = verdict.result
                _announce(ctx, head, label, "replace", verdict.reason)
        if not restart:
            return None
        first = 0  # an edit: the whole chain checks the edited text again
    return _blocked(ctx, head, "approvals", "the edited message kept changing; it was not sent")


def _fingerprint(text: str) -> str:
    return fingerprint(MESSAGE_TOOL, {"content": text})


def _blocked(ctx: RunContext, head: Event, label: str, reason: str) -> Checked:
    _announce(ctx, head, label, "block", reason)
    record = {"journal": "message_blocked", "guardrail": label, "reason": reason}
    return Checked([], [record], "blocked", reason)


def _announce(ctx: RunContext, head: Event, label: str, action: str, reason: str | None) -> None:
    ctx.emit({"type": "guardrail", **head, "stage": "message", "guardrail": label, "action": action, "reason": reason})


async def _ask_inline(agent: Agent, ctx: RunContext, label: str, interrupt: GuardrailInterrupt, text: str) -> Any:
    if ctx.approval_handler is None:
        return None
    question = Interruption(
        f"msg_{secrets.token_hex(8)}", MESSAGE_TOOL, {"content": text}, interrupt.prompt, agent.name, "message"
    )
    async with ctx.approval_lock:
        answer = ctx.approval_handler(question)
        if inspect.isawaitable(answer):
            answer = await answer
    return parse_decision(question.tool_call_id, answer)


def _pause(
    agent: Agent,
    session: Session,
    ctx: RunContext,
    head: Event,
    label: str,
    interrupt: GuardrailInterrupt,
    messages: list[Item],
    text: str,
    approved: Approved | None = None,
) -> Checked:
    mid = f"msg_{secrets.token_hex(12)}"
    args = {"content": text}
    record = {
        "journal": "message_interrupt",
        "call": mid,
        "kind": "message",
        "tool": MESSAGE_TOOL,
        "args": args,
        "args_fingerprint": fingerprint(MESSAGE_TOOL, args),
        "prompt": interrupt.prompt,
        "guardrail": label,
        "agent": agent.name,
        "messages": messages,
    }
    if approved:  # what a person already let through, before this question: not asked again
        record["approved"] = sorted([label, fp] for label, fp in approved)
    Seal.of(session, ctx.config.approval_secret).sign(record)
    question = Interruption(mid, MESSAGE_TOOL, args, interrupt.prompt, agent.name, "message")
    ctx.emit(_interrupt_event(head, question))
    return Checked([], [record], "interrupted", None, question)


def _interrupt_event(head: Event, i: Interruption) -> Event:
    return {
        "type": "interrupt",
        **head,
        "tool_call_id": i.tool_call_id,
        "name": MESSAGE_TOOL,
        "tool": MESSAGE_TOOL,
        "arguments": i.args,
        "args": i.args,
        "prompt": i.prompt,
        "kind": "message",
    }


def _declined(message: str | None) -> str:
    return f"A person declined this message{': ' + message if message else '.'}"


def message_interruption(record: Item, agent: Agent) -> Interruption:
    return Interruption(
        record["call"],
        MESSAGE_TOOL,
        record.get("args") or {},
        record.get("prompt") or "",
        record.get("agent") or agent.name,
        "message",
    )


def check_message_record(seal: Seal, record: Item) -> None:
    """A paused message's question is the message it shows, signed when there is a secret."""
    from .exceptions import ApprovalError

    seal.check(record, "interrupt", str(record.get("call")))
    args = record.get("args")
    messages = record.get("messages")
    shown = isinstance(args, dict) and fingerprint(MESSAGE_TOOL, args) == record.get("args_fingerprint")
    users = (
        [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    )
    if not shown or not users or not isinstance(args, dict) or users[-1].get("content") != args.get("content"):
        raise ApprovalError(
            f"message {record.get('call')!r}: the stored question no longer matches the message; refusing it"
        )


async def resume_message(agent: Agent, session: Session, ctx: RunContext, head: Event, record: Item) -> Checked:
    """Answer a paused user message: the decision given, the inline handler, or pause again."""
    mid = str(record["call"])
    seal = Seal.of(session, ctx.config.approval_secret)
    check_message_record(seal, record)
    if mid in ctx.approvals:
        decision = ctx.approvals.pop(mid)
    elif ctx.approval_handler is not None:
        async with ctx.approval_lock:
            answer = ctx.approval_handler(message_interruption(record, agent))
            if inspect.isawaitable(answer):
                answer = await answer
        decision = parse_decision(mid, answer)
    else:
        question = message_interruption(record, agent)
        ctx.emit(_interrupt_event(head, question))
        return Checked([], [], "interrupted", None, question)
    decided: Item = {
        "journal": "message_decision",
        "call": mid,
        "approve": decision.approve,
        "message": decision.message,
        "interrupt": digest(record),
    }
    if decision.args is not None:
        decided["args"] = decision.args
    seal.sign(decided)
    ctx.emit(
        {
            "type": "approval",
            **head,
            "tool_call_id": mid,
            "name": MESSAGE_TOOL,
            "tool": MESSAGE_TOOL,
            "arguments": record.get("args"),
            "args": record.get("args"),
            "approved": decision.approve,
            "message": decision.message,
            "edited_arguments": decision.args,
        }
    )
    if not decision.approve:
        return Checked([], [decided], "blocked", _declined(decision.message))
    return await _after_decision(agent, session, ctx, head, record, decision, decided)


async def _after_decision(
    agent: Agent, session: Session, ctx: RunContext, head: Event, record: Item, decision: Decision, decided: Item
) -> Checked:
    """An approved message goes on through the guardrails after the one that asked; an edited one
    through the whole chain again, before any model sees it."""
    messages = [dict(m) for m in record["messages"]]
    last = max(n for n, m in enumerate(messages) if m.get("role") == "user")
    shown = str(messages[last].get("content"))
    label = str(record.get("guardrail"))
    earlier = record.get("approved")
    pairs = earlier if isinstance(earlier, list) else []
    approved = {(str(a[0]), str(a[1])) for a in pairs if isinstance(a, list) and len(a) == 2}
    approved.add((label, _fingerprint(shown)))
    edited = decision.args.get("content") if decision.args else None
    names = labels(agent.message_guardrails)
    first = names.index(label) + 1 if label in names else 0
    if isinstance(edited, str) and edited != shown:
        messages[last]["content"] = edited
        approved.add((label, _fingerprint(edited)))
        first = 0
    checked = await check_messages(agent, session, ctx, head, messages, start=last, first=first, approved=approved)
    checked.journal.insert(0, decided)
    return checked
