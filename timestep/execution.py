"""One tool call, start to finish: arguments, guardrails, approval, journal, the tool, its result.

:func:`execute_call` never raises for anything the model or a tool did wrong: a bad call becomes a
tool message the model can read, plus an event. What it returns says whether the call produced a
result or paused for a person.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .approvals import (
    Decision,
    Interruption,
    PendingCall,
    Seal,
    check_decision,
    check_interrupt,
    check_started,
    digest,
    fingerprint,
    parse_decision,
)
from .guardrails import GuardrailInterrupt, InputGuardrail, OutputGuardrail, labels
from .tools import ToolArgumentsError, ToolContext, render_result, valid_text
from .usage import Usage

if TYPE_CHECKING:
    import asyncio

    from .agent import Agent
    from .model import ModelClient
    from .run import RunConfig
    from .sessions.base import Session
    from .tracing import Observer

Event = dict[str, Any]
ApprovalHandler = Callable[[Interruption], Any]


def _new_lock() -> asyncio.Lock:
    import asyncio  # here, not at import time: ``import timestep`` stays light

    return asyncio.Lock()


@dataclass
class RunContext:
    """What every level of a run (the caller and its delegates) shares, plus this level's place."""

    config: RunConfig
    stream: bool
    emit: Callable[[Event], None]
    approvals: dict[str, Decision]
    approval_handler: ApprovalHandler | None
    client: ModelClient
    delegate: Callable[..., Awaitable[CallOutcome]]
    approval_lock: asyncio.Lock = field(default_factory=lambda: _new_lock())
    depth: int = 0
    inherited_guardrails: tuple[InputGuardrail | OutputGuardrail, ...] = ()
    usage: Usage = field(default_factory=Usage)  # the whole run's, shared by every level
    observer: Observer | None = None  # tracing, when it is on

    def child(self, caller: Agent) -> RunContext:
        return replace(
            self,
            depth=self.depth + 1,
            inherited_guardrails=(
                *self.inherited_guardrails,
                *(g for g in caller.guardrails if isinstance(g, InputGuardrail | OutputGuardrail)),
            ),
        )


@dataclass
class CallOutcome:
    """A tool message's content, or the interruptions that keep the call pending."""

    content: str | None
    interruptions: list[Interruption] = field(default_factory=list)
    failed: bool = False  # the content is an error message (its tool_error event is already out)


class _Stop(Exception):
    """Ends a call early with the content the model should read."""

    def __init__(self, content: str) -> None:
        self.content = content


async def execute_call(agent: Agent, session: Session, ctx: RunContext, call: PendingCall) -> CallOutcome:
    name = call.name
    base: Event = {"agent": agent.name, "depth": ctx.depth, "tool_call_id": call.id, "name": name, "tool": name}
    if call.result is not None:  # it finished before the last run stopped; only storing it was left
        return CallOutcome(call.result)
    seal = Seal.of(session, ctx.config.approval_secret)
    _check_answers(seal, call)  # a stored decision is checked before it is acted on
    try:
        args = _parse_arguments(ctx, call, {**base, "arguments": call.arguments, "args": call.arguments})
        base["arguments"] = base["args"] = args
        if call.interrupt is not None and call.decision is None:
            check_interrupt(seal, call, call.interrupt)
            if call.id in ctx.approvals:
                decision = ctx.approvals.pop(call.id)
            elif ctx.approval_handler is not None:
                decision = parse_decision(call.id, await _ask_handler(ctx, call.interrupt, agent))
            else:
                return _still_pending(ctx, call, base, agent)
            call.decision = await _record_decision(session, ctx, call, decision, base)
        if call.started:
            return await _resume_started(agent, session, ctx, call, base)
        if call.decision is not None and not call.decision["approve"]:
            ctx.emit({"type": "tool_error", **base, "error": "declined by a person", "declined": True})
            raise _Stop(_declined_text(call.decision.get("message"), rerun=False))
        ctx.emit({"type": "tool_call", **base})
        checked = await _input_guardrails(agent, session, ctx, call, base, args)
        if checked is None:
            return CallOutcome(None, [_interruption_from(call.interrupt, agent)])
        return await _call_and_check(agent, session, ctx, call, base, checked)
    except _Stop as stop:
        return CallOutcome(stop.content)


async def _call_and_check(
    agent: Agent, session: Session, ctx: RunContext, call: PendingCall, base: Event, args: dict[str, Any]
) -> CallOutcome:
    """Journal the start, run the tool (or the delegate), then the output chain."""
    base["arguments"] = base["args"] = args
    handoff = agent.get_handoff(call.name)
    tool = agent.get_tool(call.name)
    if handoff is None:
        if tool is None:
            raise _fail(ctx, base, f"there is no tool named {call.name!r}; available: {', '.join(agent.tool_names)}")
        try:
            call_args = tool.validate(args)
        except ToolArgumentsError as exc:
            raise _fail(ctx, base, str(exc)) from None
    seal = Seal.of(session, ctx.config.approval_secret)
    _check_answers(seal, call)  # and again just before the tool runs
    # Every attempt is journaled, a re-run too: a crash during it must again count as unknown.
    await session.add_items([seal.sign({"journal": "started", "call": call.id, "args": _jsonable(args)})])
    call.started, call.started_args = True, args
    call.interrupt, call.decision, call.decided = None, None, []
    if handoff is not None:
        outcome = await ctx.delegate(agent, handoff, session, ctx, call, args)
        if outcome.content is None:
            return outcome
        if outcome.failed:
            raise _Stop(outcome.content)
        # Output guardrails see every tool's result in one shape: what it returned, and for a
        # transfer a dict with the delegate's answer under "result" (as a seed-style tool returns).
        result: Any = {"result": outcome.content}
    else:
        assert tool is not None
        context = ToolContext(tool_call_id=call.id, agent_name=agent.name, conversation_id=session.conversation_id)
        try:
            result = await tool.invoke(call_args, context)
        except Exception as exc:
            raise _fail(ctx, base, f"{call.name} raised {type(exc).__name__}: {exc}") from None
    result = await _output_guardrails(agent, ctx, call, base, args, result)
    answer = result.get("result") if handoff is not None and isinstance(result, dict) and len(result) == 1 else None
    # The caller's model reads a delegate's answer as it is, not wrapped.
    content = valid_text(answer) if isinstance(answer, str) else render_result(result)
    ctx.emit({"type": "tool_result", **base, "result": content})
    return CallOutcome(content)


async def _resume_started(
    agent: Agent, session: Session, ctx: RunContext, call: PendingCall, base: Event
) -> CallOutcome:
    """A call that passed its guardrails and started before the last run stopped.

    A handoff resumes inside its delegate. A tool whose outcome is unknown runs again only if it is
    idempotent or a person says so; otherwise it pauses as an ``unknown_outcome`` interruption.
    """
    check_started(Seal.of(session, ctx.config.approval_secret), call)
    args = call.started_args if call.started_args is not None else base["arguments"]
    tool = agent.get_tool(call.name)
    if agent.get_handoff(call.name) is None and not (tool is not None and tool.idempotent):
        if call.interrupt is None or call.interrupt.get("kind") != "unknown_outcome":
            await _ask(agent, session, ctx, call, base, unknown_outcome_record(agent, call, args))
            if call.decision is None:
                return CallOutcome(None, [_interruption_from(call.interrupt, agent)])
        assert call.decision is not None
        if not call.decision["approve"]:
            ctx.emit({"type": "tool_error", **base, "error": "declined by a person", "declined": True})
            raise _Stop(_declined_text(call.decision.get("message"), rerun=True))
    ctx.emit({"type": "tool_call", **base, "arguments": args, "args": args, "retry": True})
    return await _call_and_check(agent, session, ctx, call, base, args)


def _check_answers(seal: Seal, call: PendingCall) -> None:
    """Every recorded decision of this attempt answers its own question, unchanged since."""
    for interrupt, decision in call.decided:
        check_decision(seal, call, interrupt, decision)
    if call.interrupt is not None and call.decision is not None:
        check_decision(seal, call, call.interrupt, call.decision)


def _still_pending(ctx: RunContext, call: PendingCall, base: Event, agent: Agent) -> CallOutcome:
    assert call.interrupt is not None
    record = call.interrupt
    ctx.emit(
        {
            "type": "interrupt",
            **base,
            "arguments": record.get("args"),
            "args": record.get("args"),
            "prompt": record.get("prompt"),
            "kind": record.get("kind"),
        }
    )
    return CallOutcome(None, [_interruption_from(record, agent)])


def _parse_arguments(ctx: RunContext, call: PendingCall, base: Event) -> dict[str, Any]:
    raw = call.arguments or "{}"
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise _fail(ctx, base, f"the arguments for {call.name} are not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise _fail(ctx, base, f"the arguments for {call.name} must be a JSON object, not {type(args).__name__}")
    return args


def _fail(ctx: RunContext, base: Event, error: str, **extra: Any) -> _Stop:
    error = valid_text(error)
    ctx.emit({"type": "tool_error", **base, "error": error, **extra})
    return _Stop(f"Error: {error}")


async def _input_guardrails(
    agent: Agent, session: Session, ctx: RunContext, call: PendingCall, base: Event, args: dict[str, Any]
) -> dict[str, Any] | None:
    """Run the input chain; the arguments to call the tool with, or None if the call paused."""
    if agent.get_tool(call.name) is None and agent.get_handoff(call.name) is None:
        raise _fail(ctx, base, f"there is no tool named {call.name!r}; available: {', '.join(agent.tool_names)}")
    chain = [g for g in (*ctx.inherited_guardrails, *agent.guardrails) if isinstance(g, InputGuardrail)]
    for _ in range(len(chain) + 2):
        checked, edited = await _run_input_chain(agent, session, ctx, call, base, chain, args)
        if edited is None:
            return checked
        args = edited  # a person edited the arguments: the whole chain checks them again
    raise _blocked(ctx, base, "input", "approvals", "the edited arguments kept changing; the call was not made")


async def _run_input_chain(
    agent: Agent,
    session: Session,
    ctx: RunContext,
    call: PendingCall,
    base: Event,
    chain: list[InputGuardrail],
    args: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One pass: (arguments to call with, None), (None, None) if paused, or (None, edited) to restart."""
    for g, label in zip(chain, labels(chain), strict=True):
        try:
            verdict = await g.check(call.name, args)
        except GuardrailInterrupt as interrupt:
            asked = interrupt.tool_args or args
            decision = await _approve(agent, session, ctx, call, base, label, interrupt.prompt, asked)
            if decision is None:
                return None, None
            if not decision["approve"]:
                ctx.emit({"type": "tool_error", **base, "error": "declined by a person", "declined": True})
                raise _Stop(_declined_text(decision.get("message"), rerun=False)) from None
            edited = decision.get("args")
            if edited is not None and edited != args:
                return None, edited
            continue
        except Exception as exc:
            raise _blocked(ctx, base, "input", g.name, f"the guardrail failed ({type(exc).__name__}: {exc})") from None
        if verdict.action == "block":
            raise _blocked(ctx, base, "input", g.name, verdict.reason or "blocked")
        if verdict.action == "modify_args" and verdict.args is not None:
            args = verdict.args
            ctx.emit({"type": "guardrail_modified", **base, "stage": "input", "guardrail": g.name})
    return args, None


async def _approve(
    agent: Agent,
    session: Session,
    ctx: RunContext,
    call: PendingCall,
    base: Event,
    guardrail: str,
    prompt: str,
    asked: dict[str, Any],
) -> dict[str, Any] | None:
    """The decision that covers this interrupt: recorded, asked inline, or none yet (pause).

    A recorded decision covers an interrupt only for the exact arguments the person saw (or the
    arguments they edited in): an approval never authorises a different call.
    """
    asked_fp = fingerprint(call.name, asked)
    answered = [*call.decided, *([(call.interrupt, call.decision)] if call.interrupt and call.decision else [])]
    for interrupt, decision in answered:
        edited = decision.get("args")
        covered = {interrupt.get("args_fingerprint")} | ({fingerprint(call.name, edited)} if edited else set())
        if interrupt.get("guardrail") == guardrail and asked_fp in covered:
            return decision
    record = {
        "journal": "interrupt",
        "call": call.id,
        "kind": "approval",
        "tool": call.name,
        "args": _jsonable(asked),
        "args_fingerprint": asked_fp,
        "call_fingerprint": call.call_fingerprint,
        "prompt": prompt,
        "guardrail": guardrail,
        "agent": agent.name,
    }
    await _ask(agent, session, ctx, call, base, record)
    return call.decision


async def _ask(
    agent: Agent, session: Session, ctx: RunContext, call: PendingCall, base: Event, record: dict[str, Any]
) -> None:
    """Record the interrupt, then ask the inline handler if there is one, else announce the pause."""
    await session.add_items([Seal.of(session, ctx.config.approval_secret).sign(record)])
    if call.interrupt is not None and call.decision is not None:
        call.decided.append((call.interrupt, call.decision))
    call.interrupt, call.decision = record, None
    if ctx.approval_handler is None:
        ctx.emit(
            {
                "type": "interrupt",
                **base,
                "arguments": record["args"],
                "args": record["args"],
                "prompt": record["prompt"],
                "kind": record["kind"],
            }
        )
        return
    answer = await _ask_handler(ctx, record, agent)
    call.decision = await _record_decision(session, ctx, call, parse_decision(call.id, answer), base)


async def _ask_handler(ctx: RunContext, record: dict[str, Any], agent: Agent) -> Any:
    """One question at a time: concurrent tool calls must not talk over each other at a terminal."""
    assert ctx.approval_handler is not None
    async with ctx.approval_lock:
        answer = ctx.approval_handler(_interruption_from(record, agent))
        if inspect.isawaitable(answer):
            answer = await answer
    return answer


async def _record_decision(
    session: Session, ctx: RunContext, call: PendingCall, decision: Decision, base: Event
) -> dict[str, Any]:
    assert call.interrupt is not None
    record: dict[str, Any] = {
        "journal": "decision",
        "call": call.id,
        "approve": decision.approve,
        "message": decision.message,
        "original_args": call.interrupt.get("args"),
        "interrupt": digest(call.interrupt),
    }
    if decision.args is not None:
        record["args"] = decision.args
    await session.add_items([Seal.of(session, ctx.config.approval_secret).sign(record)])
    ctx.emit(
        {
            "type": "approval",
            **base,
            "approved": decision.approve,
            "message": decision.message,
            "edited_arguments": decision.args,
        }
    )
    return record


def unknown_outcome_record(agent: Agent, call: PendingCall, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "journal": "interrupt",
        "call": call.id,
        "kind": "unknown_outcome",
        "tool": call.name,
        "args": args,
        "args_fingerprint": fingerprint(call.name, args),
        "call_fingerprint": call.call_fingerprint,
        "prompt": (
            f"{call.name} was running when the process stopped; it may or may not have happened. "
            "Approve to run it again, or decline to tell the model it was not retried."
        ),
        "guardrail": None,
        "agent": agent.name,
    }


def _blocked(ctx: RunContext, base: Event, stage: str, guardrail: str, reason: str) -> _Stop:
    ctx.emit({"type": "guardrail_blocked", **base, "stage": stage, "guardrail": guardrail, "reason": reason})
    what = "call" if stage == "input" else "result"
    return _Stop(
        f"Blocked by guardrail {guardrail!r}: {reason}. The {what} was not {'made' if stage == 'input' else 'shown'}."
    )


async def _output_guardrails(
    agent: Agent, ctx: RunContext, call: PendingCall, base: Event, args: dict[str, Any], result: Any
) -> Any:
    for g in (*ctx.inherited_guardrails, *agent.guardrails):
        if not isinstance(g, OutputGuardrail):
            continue
        try:
            verdict = await g.check(call.name, args, result)
        except GuardrailInterrupt:
            raise _blocked(ctx, base, "output", g.name, "output guardrails cannot ask for approval") from None
        except Exception as exc:
            raise _blocked(ctx, base, "output", g.name, f"the guardrail failed ({type(exc).__name__}: {exc})") from None
        if verdict.action == "block":
            raise _blocked(ctx, base, "output", g.name, verdict.reason or "blocked")
        if verdict.action == "modify_result":
            result = verdict.result
            ctx.emit({"type": "guardrail_modified", **base, "stage": "output", "guardrail": g.name})
    return result


def _declined_text(message: str | None, *, rerun: bool) -> str:
    what = "re-running this call (its first attempt may or may not have happened)" if rerun else "this tool call"
    return f"A person declined {what}" + (f": {message}" if message else ".")


def _interruption_from(record: dict[str, Any] | None, agent: Agent) -> Interruption:
    assert record is not None
    return Interruption(
        tool_call_id=record["call"],
        tool_name=record["tool"],
        args=record.get("args") or {},
        prompt=record.get("prompt") or "",
        agent=record.get("agent") or agent.name,
        kind=record.get("kind", "approval"),
    )


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """What a guardrail handed over, in a form the journal can store (dates and the like as text)."""
    try:
        json.dumps(value, ensure_ascii=False)
        return value
    except (TypeError, ValueError):
        result: dict[str, Any] = json.loads(json.dumps(value, ensure_ascii=False, default=str))
        return result
