"""``run_agent``: the loop that calls the model, runs tools, and writes everything to the session.

One turn is: send the conversation to the model, store its reply, run the tool calls it asked for
(concurrently, results stored in call order), and go again until the model answers without tools,
a call pauses for approval, or the turn budget runs out. Every step is written to the session
before the next begins, so a run can stop anywhere, by a crash or a pause, and continue later from
the session alone. The decisions around a single tool call live in :mod:`timestep.execution`, and
the replay of a stored conversation in :mod:`timestep.approvals`; this loop stays short.

``run_agent`` returns a :class:`RunHandle` that is both awaitable (the processed result) and an async
iterator of events, so the three ways of using it in the README all come from one return value.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .agent import Agent
from .approvals import (
    ConversationState,
    Decision,
    Interruption,
    PendingCall,
    Seal,
    check_interrupt,
    delegate_received,
    load,
    parse_decision,
    replay,
)
from .exceptions import (
    ApprovalError,
    ConfigurationError,
    MaxTurnsExceeded,
    ModelResponseError,
    TimestepError,
    UsageLimitExceeded,
)
from .execution import ApprovalHandler, CallOutcome, Event, RunContext, execute_call
from .handoffs import HANDOFF_RECEIVED, delegate_session
from .model import ModelClient
from .result import default_result_processor
from .sessions.base import Item, Session
from .usage import Price, Usage, UsageLimits

if TYPE_CHECKING:
    from . import events
    from .tracing import Observer, Tracing

ResultProcessor = Callable[[AsyncIterable[Any]], Awaitable[Any]]
HistoryPolicy = Callable[[list[Item]], list[Item]]


@dataclass(frozen=True)
class RunConfig:
    """Options most runs never touch, kept out of ``run_agent``'s signature.

    ``history`` may trim what is *sent* to the model (see :func:`timestep.last_messages`); the
    session always keeps everything. ``approval_secret`` (default: ``$TIMESTEP_APPROVAL_SECRET``)
    signs the journal records that can make a tool run, so that write access to the store is not
    enough to approve a call. ``lock_timeout`` is how long a run waits for another run of the
    same conversation (in any process) to finish before it gives up with ``SessionBusyError``.
    ``limits`` bound the whole run, delegates included (see :mod:`timestep.usage`); ``prices`` (per
    million tokens, by model name) give the result a ``cost`` and make a cost limit possible.
    ``tracing`` (``True``, or a :class:`timestep.tracing.Tracing`) sends OpenTelemetry spans; off, the
    tracing module is never imported.
    """

    max_turns: int = 10
    max_handoff_depth: int = 5
    history: HistoryPolicy | None = None
    lock_timeout: float = 120.0
    approval_secret: str | bytes | None = field(default=None, repr=False)
    limits: UsageLimits | None = None
    prices: Mapping[str, Price] | None = None
    tracing: bool | Tracing = False


class RunHandle(Coroutine[Any, Any, Any]):
    """The run, not yet started: ``await`` it (or ``asyncio.run`` it) for the result, or ``async for``
    over its events.

    It is a coroutine in the ``collections.abc`` sense, because ``asyncio.run`` and
    ``asyncio.create_task`` accept nothing else; the run itself starts only when it is first
    awaited, stepped or iterated, so a handle that is never used does nothing.
    """

    def __init__(self, drive: Callable[[Callable[[Event], None]], Awaitable[None]], processor: ResultProcessor | None):
        self._drive = drive
        self._processor = processor
        self._used = False
        self._coro: Coroutine[Any, Any, Any] | None = None

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError("a run can be consumed once; call run_agent again to run again")
        self._used = True

    def __aiter__(self) -> AsyncIterator[events.Event]:
        self._claim()
        return cast("AsyncIterator[events.Event]", self._events())

    async def _events(self) -> AsyncIterator[Event]:
        """The run's events, handed from the run's task in batches: one wake-up per burst, not per event."""
        import asyncio  # at call time: ``import timestep`` stays light

        buffer: collections.deque[Event] = collections.deque()
        waiter: list[asyncio.Future[None]] = []

        def emit(event: Event) -> None:
            buffer.append(event)
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)

        task = asyncio.ensure_future(self._drive(emit))
        task.add_done_callback(lambda _: emit(_DONE))
        try:
            while True:
                while buffer:
                    event = buffer.popleft()
                    if event is _DONE:
                        await task  # the run's own exception, if it raised
                        return
                    yield event
                waiter[:] = [asyncio.get_running_loop().create_future()]
                await waiter[0]
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _coroutine(self) -> Coroutine[Any, Any, Any]:
        if self._coro is None:
            self._coro = self._result()
        return self._coro

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._coroutine().throw(typ, val, tb)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def _result(self) -> Any:
        if self._processor is None or self._processor is default_result_processor:
            # Nobody watches these events as they happen: collect them in the run's own task instead
            # of handing each one across to a second task.
            self._claim()
            events: list[Event] = []
            await self._drive(events.append)
            if self._processor is None:
                return events
            return await default_result_processor(_replay_events(events))
        return await self._processor(self)


_DONE: Any = {"type": "_done"}


async def _replay_events(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


def run_agent(
    agent: Agent,
    messages: list[Item],
    session: Session,
    stream: bool = False,
    result_processor: ResultProcessor | None = default_result_processor,
    *,
    approvals: dict[str, Any] | None = None,
    approval_handler: ApprovalHandler | None = None,
    client: Any = None,
    config: RunConfig | None = None,
) -> RunHandle:
    """Run ``agent`` on ``messages`` in ``session``.

    ``approvals`` answers pending interruptions by tool call id: ``True``, ``False``, a decline
    message, or ``{"approve": True, "args": {...}}`` to approve with edited arguments.
    ``approval_handler`` is asked inline instead of pausing. ``client`` is a :class:`ModelClient` or
    a configured ``openai.AsyncOpenAI``; by default ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` are used.
    """
    if not isinstance(agent, Agent):
        raise ConfigurationError(f"run_agent needs an Agent, got {type(agent).__name__}")
    if isinstance(messages, dict) or not isinstance(messages, list):
        raise ConfigurationError("messages must be a list of message dicts, e.g. [{'role': 'user', 'content': '...'}]")
    model_client = _resolve_client(client)
    cfg = config or RunConfig()
    decisions = {cid: parse_decision(cid, value) for cid, value in (approvals or {}).items()}
    observer = _observer(cfg, model_client)

    async def drive(emit: Callable[[Event], None]) -> None:
        ctx = RunContext(
            config=cfg,
            stream=stream,
            emit=emit if observer is None else observer.watch(emit),
            approvals=decisions,
            approval_handler=approval_handler,
            client=model_client,
            delegate=_delegate,
            usage=Usage(cfg.limits or UsageLimits(), cfg.prices or {}),
            observer=observer,
        )
        lock = getattr(session, "lock", None)
        async with lock(cfg.lock_timeout) if lock is not None else contextlib.nullcontext():
            has_messages = bool(messages) and approval_handler is None
            state = await _check_approvals(agent, session, decisions, has_messages, cfg.approval_secret)
            outcome = await _run_level(agent, list(messages), session, ctx, state=state)
        if outcome.status == "interrupted" and outcome.interruptions:
            _announce_pause(session, outcome.interruptions)

    return RunHandle(drive, result_processor)


def _observer(cfg: RunConfig, client: ModelClient) -> Observer | None:
    """The tracing observer, imported only when tracing is on: off, a run never touches OpenTelemetry."""
    if not cfg.tracing:
        return None
    try:
        from .tracing import Observer, Tracing
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing needs OpenTelemetry ({exc}): pip install 'timestep[otel]' (or -e '.[otel]' in a checkout)"
        ) from None
    return Observer(cfg.tracing if isinstance(cfg.tracing, Tracing) else Tracing(), client)


def _announce_pause(session: Session, waiting: list[Interruption]) -> None:
    """Tell the person, on the ``timestep`` logger, what waits and how to answer it.

    A paused run is a normal outcome, not an error, but a program that only prints its result would
    otherwise end without a word about the call that waits. Applications that show approvals
    themselves silence or route the ``timestep`` logger.
    """
    import json
    import logging

    log = logging.getLogger("timestep")
    if not log.isEnabledFor(logging.WARNING):
        return
    for i in waiting:
        what = "may already have run (its process stopped)" if i.kind == "unknown_outcome" else "waits for approval"
        args = json.dumps(i.args, ensure_ascii=False, sort_keys=True)
        log.warning(
            "%s's call %s(%s) in conversation %r %s: %s\n  resume with: run_agent(agent, [], session, "
            "approvals={%r: True})  (False or a message declines; see pending_interruptions())",
            i.agent,
            i.tool_name,
            args,
            session.conversation_id,
            what,
            i.prompt.strip(),
            i.tool_call_id,
        )


def _resolve_client(client: Any) -> ModelClient:
    if client is None:
        return _default_client()
    if isinstance(client, ModelClient):
        return client
    if hasattr(client, "base_url") and hasattr(client, "api_key"):
        try:  # one ModelClient (one connection pool) per openai client, not one per run
            found = _from_openai.get(client)
        except TypeError:  # not weak-referenceable
            return ModelClient.from_openai(client)
        if found is None:
            found = _from_openai[client] = ModelClient.from_openai(client)
        return found
    raise ConfigurationError(
        f"client must be a timestep ModelClient or an openai.AsyncOpenAI, got {type(client).__name__}"
    )


_clients: dict[tuple[str | None, str | None], ModelClient] = {}
_from_openai: weakref.WeakKeyDictionary[Any, ModelClient] = weakref.WeakKeyDictionary()


def _default_client() -> ModelClient:
    import os

    key = (os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY"))
    found = _clients.get(key)
    if found is None:
        found = _clients[key] = ModelClient.from_env()
    return found


# -- one level of a run (the caller, or a delegate) ----------------------------------------------


_NOT_SENT = (
    "the conversation had unfinished tool calls that now need a person's decision; "
    "the new message was not added: answer the interruptions, then send it again"
)


@dataclass
class LevelOutcome:
    status: str  # "completed" | "interrupted" | "error"
    final_output: str | None = None
    error: str | None = None
    interruptions: list[Interruption] | None = None
    limit: UsageLimitExceeded | None = None  # a usage limit ends the whole run, not just this level


async def _run_level(
    agent: Agent,
    new_messages: list[Item],
    session: Session,
    ctx: RunContext,
    journal: list[Item] | None = None,
    state: ConversationState | None = None,
) -> LevelOutcome:
    emit = ctx.emit
    head: Event = {"agent": agent.name, "depth": ctx.depth}
    emit({"type": "run_start", **head, "conversation_id": session.conversation_id})
    usage: dict[str, int] = {}
    outcome = await _advance(agent, new_messages, session, ctx, usage, journal, state)
    end: Event = {
        "type": "run_end",
        **head,
        "status": outcome.status,
        "final_output": outcome.final_output,
        "usage": usage,
    }
    if outcome.interruptions:
        end["interruptions"] = [i.as_dict() for i in outcome.interruptions]
    if ctx.depth == 0:
        end["run_usage"] = ctx.usage.summary()
    emit(end)
    if outcome.limit is not None and ctx.depth:
        raise outcome.limit
    return outcome


async def _advance(
    agent: Agent,
    new_messages: list[Item],
    session: Session,
    ctx: RunContext,
    usage: dict[str, int],
    journal: list[Item] | None,
    state: ConversationState | None,
) -> LevelOutcome:
    head: Event = {"agent": agent.name, "depth": ctx.depth}
    try:
        if state is None:
            state = replay(*await load(session))
        if state.pending:
            paused = await _run_calls(agent, session, ctx, state, state.pending)
            if paused:
                if new_messages:
                    ctx.emit({"type": "error", **head, "error": _NOT_SENT, "error_type": "ApprovalError"})
                return LevelOutcome("interrupted", interruptions=paused, error=_NOT_SENT if new_messages else None)
        elif not new_messages and state.final_output is not None:
            return LevelOutcome("completed", final_output=state.final_output)
        if new_messages:
            await _append(session, ctx, head, state, new_messages, journal or [])
        for _ in range(ctx.config.max_turns):
            reply, used = await _call_model(agent, state.messages, ctx, head, usage, state.call_ids)
            await _append(session, ctx, head, state, [reply], [used])
            ctx.usage.check_tokens()
            calls = reply.get("tool_calls")
            if not calls:
                return LevelOutcome("completed", final_output=reply.get("content") or "")
            pending = [PendingCall(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]
            paused = await _run_calls(agent, session, ctx, state, pending)
            if paused:
                return LevelOutcome("interrupted", interruptions=paused)
        raise MaxTurnsExceeded(
            f"{agent.name} did not reach an answer within max_turns={ctx.config.max_turns} model calls"
        )
    except ApprovalError:
        raise
    except TimestepError as exc:
        ctx.emit({"type": "error", **head, "error": str(exc), "error_type": type(exc).__name__})
        return LevelOutcome("error", error=str(exc), limit=exc if isinstance(exc, UsageLimitExceeded) else None)


async def _append(
    session: Session,
    ctx: RunContext,
    head: Event,
    state: ConversationState,
    messages: list[Item],
    journal: list[Item] | None = None,
) -> None:
    await session.add_items([*messages, *(journal or [])])
    state.messages.extend(messages)
    for m in messages:
        ctx.emit({"type": "message", **head, "message": m, "content": m.get("content")})


async def _run_calls(
    agent: Agent, session: Session, ctx: RunContext, state: ConversationState, calls: list[PendingCall]
) -> list[Interruption]:
    """Run the calls concurrently; store each result once every earlier call's result is stored.

    Tool messages are stored in call order, always: when a call pauses, the results of the calls
    after it wait in the journal, and are stored after it once it is answered.
    """
    import asyncio  # at call time: ``import timestep`` stays light

    head: Event = {"agent": agent.name, "depth": ctx.depth}
    ctx.usage.before_tool_calls(sum(1 for c in calls if c.result is None))
    if len(calls) == 1:
        outcomes = [await execute_call(agent, session, ctx, calls[0])]
        await _store_results(session, ctx, head, state, calls, outcomes)
    else:
        stored = [asyncio.Event() for _ in calls]
        outcomes = [CallOutcome(None)] * len(calls)
        held = [False]  # an earlier call paused: later results wait in the journal, so order holds

        async def keep(n: int) -> None:
            if outcomes[n].content is not None and calls[n].result is None:
                await session.add_items([{"journal": "result", "call": calls[n].id, "content": outcomes[n].content}])
                calls[n].result = outcomes[n].content

        async def one(n: int) -> None:
            outcomes[n] = await execute_call(agent, session, ctx, calls[n])
            if n and not stored[n - 1].is_set():
                await keep(n)  # safe while earlier calls still run
                await stored[n - 1].wait()
            if held[0]:
                await keep(n)
            elif outcomes[n].content is None:
                held[0] = True
            else:
                await _store_results(session, ctx, head, state, [calls[n]], [outcomes[n]])
            stored[n].set()

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the siblings: no task left waiting
                for n in range(len(calls)):
                    group.create_task(one(n))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
    return [i for o in outcomes for i in o.interruptions]


async def _store_results(
    session: Session,
    ctx: RunContext,
    head: Event,
    state: ConversationState,
    calls: list[PendingCall],
    outcomes: list[CallOutcome],
) -> None:
    results = [
        {"role": "tool", "tool_call_id": c.id, "content": o.content}
        for c, o in zip(calls, outcomes, strict=True)
        if o.content is not None
    ]
    if results:
        await _append(session, ctx, head, state, results)


# -- the model ------------------------------------------------------------------------------------


def _request(agent: Agent, messages: list[Item], ctx: RunContext) -> dict[str, Any]:
    if ctx.config.history is not None:
        messages = ctx.config.history(messages)
    if agent.instructions:
        if messages and messages[0].get("role") == "system":
            messages = [{"role": "system", "content": agent.instructions}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": agent.instructions}, *messages]
    body: dict[str, Any] = {"model": agent.model, "messages": messages, **agent.model_settings}
    if agent.tool_specs:
        body["tools"] = agent.tool_specs
    if ctx.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def _call_model(
    agent: Agent, messages: list[Item], ctx: RunContext, head: Event, usage: dict[str, int], ctx_ids: set[str]
) -> tuple[Item, Item]:
    """The reply, and the ``usage`` journal record to store with it."""
    body = _request(agent, messages, ctx)
    ctx.usage.before_model_call()
    fetch = _fetch(body, ctx, head)
    message, used, _ = await (fetch if ctx.observer is None else ctx.observer.model_call(head, body, fetch))
    if used:
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            usage[k] = usage.get(k, 0) + int(used.get(k) or 0)
    return _assistant_message(message, ctx_ids), ctx.usage.add(agent.name, agent.model, used)


_Fetched = tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]  # message, usage, the last choice and chunk


async def _fetch(body: dict[str, Any], ctx: RunContext, head: Event) -> _Fetched:
    if ctx.stream:
        return await _stream_reply(ctx.client, body, ctx, head)
    data = await ctx.client.complete(body)
    choice = data["choices"][0]
    return choice.get("message") or {}, data.get("usage"), {"choice": choice, "chunk": data}


async def _stream_reply(client: ModelClient, body: dict[str, Any], ctx: RunContext, head: Event) -> _Fetched:
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    seen: dict[int, int] = {}
    used = None
    chunk: dict[str, Any] = {}
    last: dict[str, Any] = {}
    async for chunk in client.stream(body):
        if chunk.get("usage"):
            used = chunk["usage"]
        for choice in chunk.get("choices") or ():
            last = choice
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                content.append(text)
                ctx.emit({"type": "content_delta", **head, "delta": text, "content": text})
            for tc in delta.get("tool_calls") or ():
                slot = calls.setdefault(_slot_index(calls, seen, tc), {"id": "", "name": "", "arguments": []})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"].append(fn.get("arguments") or "")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
            for _, c in sorted(calls.items())
        ]
    return message, used, {"choice": last, "chunk": chunk}


def _slot_index(calls: dict[int, dict[str, Any]], seen: dict[int, int], delta: dict[str, Any]) -> int:
    """Which call a streamed tool-call delta belongs to.

    OpenAI numbers calls with ``index``; some servers omit it, or send 0 for every call. So the
    server's index maps to a call of ours (``seen``), a delta without one continues the latest call,
    and a delta that brings a new id starts a new call instead of running into the previous one.
    """
    index = delta.get("index")
    if isinstance(index, int) and index in seen:
        slot = seen[index]
    elif isinstance(index, int) or not calls:
        slot = len(calls)
    else:
        slot = max(calls)
    current = calls.get(slot)
    new_id = delta.get("id")
    if current is not None and new_id and current["id"] and new_id != current["id"]:
        slot = len(calls)
    if isinstance(index, int):
        seen[index] = slot
    return slot


def _assistant_message(message: dict[str, Any], used_ids: set[str]) -> Item:
    """Keep the portable part of the model's reply; refuse one that says nothing at all.

    Tool call ids are how results, approvals and the journal find their call, so a missing id, or
    one already used in this conversation (some servers number calls from zero on every reply), is
    replaced by a fresh one.
    """
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if not content and not calls:
        raise ModelResponseError("the model replied with neither content nor tool calls")
    out: Item = {"role": "assistant", "content": content if isinstance(content, str) else None}
    if calls:
        clean = []
        for n, c in enumerate(calls):
            fn = c.get("function") or {}
            if not fn.get("name"):
                raise ModelResponseError(f"the model sent tool call #{n} without a function name")
            args = fn.get("arguments")
            call_id = c.get("id")
            if not isinstance(call_id, str) or not call_id or call_id in used_ids:
                call_id = f"call_{secrets.token_hex(12)}"
            used_ids.add(call_id)
            clean.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": args if isinstance(args, str) else _dumps(args)},
                }
            )
        out["tool_calls"] = clean
    return out


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value if value is not None else {})


# -- handoffs and approvals across levels ---------------------------------------------------------


async def _delegate(
    caller: Agent, target: Agent, session: Session, ctx: RunContext, call: PendingCall, args: dict[str, Any]
) -> CallOutcome:
    """Run ``target`` in its own session; its final answer is the transfer tool's result."""
    head: Event = {"agent": caller.name, "depth": ctx.depth, "tool_call_id": call.id, "target": target.name}
    if ctx.depth + 1 > ctx.config.max_handoff_depth:
        msg = (
            f"cannot hand off to {target.name}: the chain of handoffs is already {ctx.depth + 1} deep "
            f"(max_handoff_depth={ctx.config.max_handoff_depth})"
        )
        ctx.emit({"type": "tool_error", **head, **_call_fields(call, args), "error": msg})
        return CallOutcome(f"Error: {msg}", failed=True)
    sub = delegate_session(caller, target, session)
    lock = getattr(sub, "lock", None)  # two transfers to one delegate in one reply take turns
    async with lock(ctx.config.lock_timeout) if lock is not None else contextlib.nullcontext():
        _, journal = await load(sub)
        received = delegate_received(journal, call.id)
        message = str(args.get("message", ""))
        ctx.emit({"type": "handoff_start", **head, "message": message, "resumed": received})
        new = [] if received else [{"role": "user", "content": message}]
        # The marker goes after the message: a write torn between them re-delivers the message
        # rather than answering the new request with an old reply.
        suffix = None if received else [{"journal": HANDOFF_RECEIVED, "call": call.id}]
        outcome = await _run_level(target, new, sub, ctx.child(caller), suffix)
    ctx.emit({"type": "handoff_end", **head, "status": outcome.status, "output": outcome.final_output})
    if outcome.status == "interrupted":
        return CallOutcome(None, outcome.interruptions or [])
    if outcome.status == "error":
        error = f"{target.name} failed: {outcome.error}"
        ctx.emit({"type": "tool_error", **head, **_call_fields(call, args), "error": error})
        return CallOutcome(f"Error: the agent {target.name} failed: {outcome.error}", failed=True)
    return CallOutcome(outcome.final_output or "")


def _call_fields(call: PendingCall, args: dict[str, Any]) -> Event:
    return {"name": call.name, "tool": call.name, "arguments": args, "args": args}


async def pending_interruptions(agent: Agent, session: Session, config: RunConfig | None = None) -> list[Interruption]:
    """The tool calls waiting for a person in this conversation, its delegates' included.

    Read from the session alone, so a different process (a web handler, the command line) can show
    what is pending and then answer with ``run_agent(agent, [], session, approvals=...)``. A stored
    question that was changed since it was asked (or, with an approval secret, one not signed with
    it) is an ``ApprovalError``: a person must never be shown something other than what would run.
    """
    secret = (config or RunConfig()).approval_secret
    found = []
    for call, where in await _pending_interrupts(agent, session, 0):
        assert call.interrupt is not None
        record = call.interrupt
        check_interrupt(Seal.of(where, secret), call, record)
        found.append(
            Interruption(
                tool_call_id=call.id,
                tool_name=record.get("tool", call.name),
                args=record.get("args") or {},
                prompt=record.get("prompt") or "",
                agent=record.get("agent") or agent.name,
                kind=record.get("kind", "approval"),
            )
        )
    return found


async def _check_approvals(
    agent: Agent, session: Session, decisions: dict[str, Decision], has_messages: bool, secret: str | bytes | None
) -> ConversationState:
    """Refuse, before anything runs, approvals that match no pending call, and messages sent while calls wait."""
    state = replay(*await load(session))
    pending = await _pending_interrupts(agent, session, 0, state)
    if has_messages and pending:
        ids = ", ".join(p.id for p, _ in pending)
        raise ApprovalError(
            f"conversation {session.conversation_id!r} has tool calls awaiting approval ({ids}); "
            "resume it with run_agent(agent, [], session, approvals={...}) before sending a new message"
        )
    waiting = {p.id: p for p, _ in pending}
    where = {p.id: s for p, s in pending}
    for cid in decisions:
        p = waiting.get(cid)
        if p is None:
            known = ", ".join(waiting) or "none"
            raise ApprovalError(f"no tool call {cid!r} is awaiting approval (awaiting: {known})")
        assert p.interrupt is not None
        if p.interrupt.get("kind") == "unknown_outcome" and decisions[cid].args is not None:
            raise ApprovalError(
                f"tool call {cid!r} may already have run: approve or decline running it again, without new arguments"
            )
        if p.interrupt.get("call_fingerprint") != p.call_fingerprint:
            raise ApprovalError(
                f"tool call {cid!r} no longer matches the call that was put to the person "
                "(its arguments changed in the session); refusing to approve it"
            )
        check_interrupt(Seal.of(where[cid], secret), p, p.interrupt)
    return state


async def _pending_interrupts(
    agent: Agent, session: Session, depth: int, state: ConversationState | None = None
) -> list[tuple[PendingCall, Session]]:
    """Open interruptions at this level and, through pending handoffs, in every delegate below."""
    if state is None:
        state = replay(*await load(session))
    found: list[tuple[PendingCall, Session]] = []
    for p in state.pending:
        if p.interrupt is not None and p.decision is None:
            found.append((p, session))
            continue
        target = agent.get_handoff(p.name)
        if target is not None and p.started and depth < 64:
            found += await _pending_interrupts(target, delegate_session(agent, target, session), depth + 1)
    return found
