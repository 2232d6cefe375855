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
    check_started,
    delegate_received,
    load,
    parse_decision,
    replay,
)
from .conversation import (
    AnswerGate,
    Checked,
    check_message_record,
    check_messages,
    message_interruption,
    resume_message,
    settle_answer,
)
from .exceptions import (
    ApprovalError,
    ConfigurationError,
    MaxTurnsExceeded,
    ModelHTTPError,
    ModelResponseError,
    OutputValidationError,
    TimestepError,
    UsageLimitExceeded,
)
from .execution import ApprovalHandler, CallOutcome, Event, RunContext, execute_call, unknown_outcome_record
from .handoffs import HANDOFF_RECEIVED, delegate_session
from .model import ModelClient
from .output import FINAL_ANSWER_TOOL
from .result import ResultBuilder, default_result_processor
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
    ``message_key`` makes delivering ``messages`` idempotent: they are stored together with a
    journal record carrying the key, and a run whose key is already in the journal adds them no
    more, so a run retried after a crash (a durable worker's, an HTTP client's) never sends twice.
    """

    max_turns: int = 10
    max_handoff_depth: int = 5
    max_answer_retries: int = 2
    history: HistoryPolicy | None = None
    lock_timeout: float = 120.0
    approval_secret: str | bytes | None = field(default=None, repr=False)
    limits: UsageLimits | None = None
    prices: Mapping[str, Price] | None = None
    tracing: bool | Tracing = False
    message_key: str | None = None


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
            if self._processor is None:
                events: list[Event] = []
                await self._drive(events.append)
                return events
            builder = ResultBuilder()
            await self._drive(builder.add)
            return builder.result
        return await self._processor(self)


_DONE: Any = {"type": "_done"}


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
            new, marker = await _undelivered(session, messages, cfg.message_key)
            has_messages = bool(new) and approval_handler is None
            state = await _check_approvals(agent, session, decisions, has_messages, cfg.approval_secret)
            outcome = await _run_level(agent, new, session, ctx, marker, state=state)
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
            f"tracing needs OpenTelemetry ({exc}): pip install -e '.[otel]' in a Timestep checkout"
        ) from None
    return Observer(cfg.tracing if isinstance(cfg.tracing, Tracing) else Tracing(), client)


DELIVERED = "delivered"


async def _undelivered(session: Session, messages: list[Item], key: str | None) -> tuple[list[Item], list[Item] | None]:
    """The messages still to store, and the journal record stored with them (see ``RunConfig.message_key``)."""
    if key is None or not messages:
        return list(messages), None
    _, journal = await load(session)
    if any(r.get("journal") == DELIVERED and r.get("key") == key for r in journal):
        return [], None
    return list(messages), [{"journal": DELIVERED, "key": key}]


def _announce_pause(session: Session, waiting: list[Interruption]) -> None:
    """Tell the person, on the ``timestep`` logger, what waits and how to answer it.

    A paused run is a normal outcome, not an error, but a program that only prints its result would
    otherwise end without a word about the call that waits. Applications that show approvals
    themselves silence or route the ``timestep`` logger.
    """
    import json
    import logging

    log = logging.getLogger("timestep.approvals")
    if not log.isEnabledFor(logging.WARNING):
        return
    for i in waiting:
        what = "may already have run (its process stopped)" if i.kind == "unknown_outcome" else "waits for approval"
        args = json.dumps(i.args, ensure_ascii=False, sort_keys=True)
        subject = f"user message {args}" if i.kind == "message" else f"call {i.tool_name}({args})"
        log.warning(
            "%s's %s in conversation %r %s: %s\n  resume with: run_agent(agent, [], session, "
            "approvals={%r: True})  (False or a message declines; see pending_interruptions())",
            i.agent,
            subject,
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
    status: str  # "completed" | "interrupted" | "blocked" | "error"
    final_output: str | None = None
    error: str | None = None
    interruptions: list[Interruption] | None = None
    output: Any = None  # the typed final answer, with an output_type
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
    if agent.output is not None and outcome.status == "completed":
        end["output"] = outcome.output
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
        stopped = await _settle_waiting(agent, new_messages, session, ctx, head, state)
        if stopped is not None:
            return stopped
        if new_messages:
            checked = await check_messages(agent, session, ctx, head, new_messages)
            await _append(session, ctx, head, state, checked.messages, [*checked.journal, *(journal or [])])
            if checked.status is not None:
                return _stopped(checked)
        return await _turns(agent, session, ctx, head, usage, state)
    except ApprovalError:
        raise
    except TimestepError as exc:
        ctx.emit({"type": "error", **head, "error": str(exc), "error_type": type(exc).__name__})
        return LevelOutcome("error", error=str(exc), limit=exc if isinstance(exc, UsageLimitExceeded) else None)


async def _settle_waiting(
    agent: Agent, new_messages: list[Item], session: Session, ctx: RunContext, head: Event, state: ConversationState
) -> LevelOutcome | None:
    """Answer what waits from the last run (a paused message, pending calls); an outcome if that ends the run."""
    if state.pending_message is not None:
        checked = await resume_message(agent, session, ctx, head, state.pending_message)
        await _append(session, ctx, head, state, checked.messages, checked.journal)
        return _stopped(checked) if checked.status is not None else None
    if state.pending:
        paused = await _run_calls(agent, session, ctx, state, state.pending)
        if paused:
            if new_messages:
                ctx.emit({"type": "error", **head, "error": _NOT_SENT, "error_type": "ApprovalError"})
            return LevelOutcome("interrupted", interruptions=paused, error=_NOT_SENT if new_messages else None)
    elif not new_messages and state.final_output is not None:
        return LevelOutcome("completed", final_output=state.final_output)
    return None


async def _turns(
    agent: Agent, session: Session, ctx: RunContext, head: Event, usage: dict[str, int], state: ConversationState
) -> LevelOutcome:
    """Model call, tool calls, again, until an answer, a pause, or the turn budget runs out."""
    retry: list[Item] = []  # a rejected answer and why, sent with the next request only
    attempts = 0
    for _ in range(ctx.config.max_turns):
        reply, gate, used = await _call_model(agent, [*state.messages, *retry], ctx, head, usage, state.call_ids)
        calls = reply.get("tool_calls")
        if not calls or (agent.output is not None and _final_answer_call(calls)):
            settled = await settle_answer(agent, reply, gate)
            await _append(session, ctx, head, state, settled.messages, [used, *settled.journal])
            ctx.usage.check_tokens()
            if settled.status is not None:
                return LevelOutcome(settled.status, final_output=settled.text, output=settled.output)
            attempts += 1
            if attempts > ctx.config.max_answer_retries:
                raise OutputValidationError(
                    f"{agent.name} gave no acceptable answer in {attempts} attempts: {settled.problem}"
                )
            retry = settled.retry
            continue
        retry = []
        await _append(session, ctx, head, state, [reply], [used])
        ctx.usage.check_tokens()
        pending = [PendingCall(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]
        paused = await _run_calls(agent, session, ctx, state, pending)
        if paused:
            return LevelOutcome("interrupted", interruptions=paused)
    raise MaxTurnsExceeded(f"{agent.name} did not reach an answer within max_turns={ctx.config.max_turns} model calls")


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


def _final_answer_call(calls: list[Item]) -> bool:
    return len(calls) == 1 and calls[0]["function"]["name"] == FINAL_ANSWER_TOOL


def _stopped(checked: Checked) -> LevelOutcome:
    if checked.status == "interrupted":
        assert checked.interruption is not None
        return LevelOutcome("interrupted", interruptions=[checked.interruption])
    return LevelOutcome(checked.status or "blocked", final_output=checked.text)


# Endpoints (base URL, model) that refused the JSON-schema response format: they get the final-answer tool.
_no_response_format: set[tuple[str, str]] = set()


def _output_mode(agent: Agent, ctx: RunContext) -> str | None:
    if agent.output is None:
        return None
    if agent.output_mode == "auto":
        return "tool" if (ctx.client.base_url, agent.model) in _no_response_format else "json_schema"
    return agent.output_mode


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
    mode = _output_mode(agent, ctx)
    if mode is not None:
        assert agent.output is not None
        if mode == "json_schema":
            body["response_format"] = agent.output.response_format()
        else:
            body["tools"] = [*agent.tool_specs, agent.output.tool_spec()]
    if ctx.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def _call_model(
    agent: Agent, messages: list[Item], ctx: RunContext, head: Event, usage: dict[str, int], ctx_ids: set[str]
) -> tuple[Item, AnswerGate, Item]:
    """The reply, its answer gate, and the ``usage`` journal record to store with it."""
    body = _request(agent, messages, ctx)
    gate = AnswerGate(agent, ctx.emit, head, ctx.stream)
    try:
        message, used = await _exchange(body, ctx, gate, head)
    except ModelHTTPError as exc:
        if "response_format" not in body or agent.output_mode != "auto" or exc.status_code not in (400, 422):
            raise
        # This endpoint does not take a JSON-schema response format: ask for the final-answer tool.
        _no_response_format.add((ctx.client.base_url, agent.model))
        body = _request(agent, messages, ctx)
        message, used = await _exchange(body, ctx, gate, head)
    if used:
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            usage[k] = usage.get(k, 0) + int(used.get(k) or 0)
    reply = _assistant_message(message, ctx_ids)
    # Text beside tool calls is not the answer, but the person reads it: it is guarded the same.
    if (
        reply.get("tool_calls")
        and reply.get("content")
        and gate.guardrails
        and (await gate.finish(reply["content"])).action != "proceed"
    ):
        reply["content"] = None
    return reply, gate, ctx.usage.add(agent.name, agent.model, used)


async def _exchange(body: dict[str, Any], ctx: RunContext, gate: AnswerGate, head: Event) -> tuple[dict[str, Any], Any]:
    """One model request: counted against the run's limits, and traced when tracing is on."""
    ctx.usage.before_model_call()
    fetch = _fetch(body, ctx, gate)
    message, used, _ = await (fetch if ctx.observer is None else ctx.observer.model_call(head, body, fetch))
    return message, used


_Fetched = tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]  # message, usage, the last choice and chunk


async def _fetch(body: dict[str, Any], ctx: RunContext, gate: AnswerGate) -> _Fetched:
    if ctx.stream:
        return await _stream_reply(ctx.client, body, gate)
    data = await ctx.client.complete(body)
    choice = data["choices"][0]
    return choice.get("message") or {}, data.get("usage"), {"choice": choice, "chunk": data}


async def _stream_reply(client: ModelClient, body: dict[str, Any], gate: AnswerGate) -> _Fetched:
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
                await gate.feed(text)
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

    A call that started and has no result (its process stopped while it ran) is listed too, as the
    ``unknown_outcome`` question a resumed run would ask, unless its tool is idempotent (a resumed
    run simply runs it again): a person sees it, and may answer it, before any run has asked.
    """
    secret = (config or RunConfig()).approval_secret
    found = []
    for call, where, _ in await _pending_interrupts(agent, session, 0, secret=secret):
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
    for level, record, where in await _pending_messages(agent, session):
        check_message_record(Seal.of(where, secret), record)
        found.append(message_interruption(record, level))
    return found


async def _check_approvals(
    agent: Agent, session: Session, decisions: dict[str, Decision], has_messages: bool, secret: str | bytes | None
) -> ConversationState:
    """Refuse, before anything runs, approvals that match no pending call, and messages sent while calls wait."""
    state = replay(*await load(session))
    pending = await _pending_interrupts(agent, session, 0, state, secret)
    messages = {str(r["call"]): (r, s) for _, r, s in await _pending_messages(agent, session, 0, state)}
    for record, level_session in messages.values():
        check_message_record(Seal.of(level_session, secret), record)
    if has_messages and (pending or messages):
        ids = ", ".join([*(p.id for p, _, _ in pending), *messages])
        raise ApprovalError(
            f"conversation {session.conversation_id!r} has tool calls awaiting approval ({ids}); "
            "resume it with run_agent(agent, [], session, approvals={...}) before sending a new message"
        )
    waiting = {p.id: p for p, _, _ in pending}
    where = {p.id: s for p, s, _ in pending}
    for cid in decisions:
        p = waiting.get(cid)
        if p is None and cid in messages:
            continue
        if p is None:
            known = ", ".join([*waiting, *messages]) or "none"
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
    # A stopped call decided before any run asked about it: its question is stored now, as the
    # resumed run would have stored it, so the decision answers a question the journal holds. One
    # not decided is left for the run to ask (and store) as it always has.
    for p, level_session, unasked in pending:
        if unasked and p.id in decisions and p.interrupt is not None:
            await level_session.add_items([p.interrupt])
        elif unasked:
            p.interrupt = None
    return state


async def _pending_interrupts(
    agent: Agent,
    session: Session,
    depth: int,
    state: ConversationState | None = None,
    secret: str | bytes | None = None,
) -> list[tuple[PendingCall, Session, bool]]:
    """Open interruptions at this level and, through pending handoffs, in every delegate below.

    Each comes with its level's session and whether its question is not stored yet: a started
    call left without a result, whose ``unknown_outcome`` question is made here as a resumed run
    would make it (and set on the call, so that a run going on from ``state`` finds it asked).
    """
    if state is None:
        state = replay(*await load(session))
    found: list[tuple[PendingCall, Session, bool]] = []
    for p in state.pending:
        if p.interrupt is not None and p.decision is None:
            found.append((p, session, False))
            continue
        target = agent.get_handoff(p.name)
        if target is not None and p.started and depth < 64:
            below = delegate_session(agent, target, session)
            found += await _pending_interrupts(target, below, depth + 1, secret=secret)
        elif _stopped_unknown(agent, p):
            seal = Seal.of(session, secret)
            check_started(seal, p)
            args = p.started_args if p.started_args is not None else {}
            p.interrupt, p.decision = seal.sign(unknown_outcome_record(agent, p, args)), None
            found.append((p, session, True))
    return found


def _stopped_unknown(agent: Agent, p: PendingCall) -> bool:
    """A call that started, has no result and no question yet, and that would not simply run again."""
    if not p.started or p.result is not None or p.interrupt is not None:
        return False
    tool = agent.get_tool(p.name)
    return agent.get_handoff(p.name) is None and not (tool is not None and tool.idempotent)


async def _pending_messages(
    agent: Agent, session: Session, depth: int = 0, state: ConversationState | None = None
) -> list[tuple[Agent, Item, Session]]:
    """User messages waiting for a person (a message guardrail asked), here and in delegates below."""
    if state is None:
        state = replay(*await load(session))
    found: list[tuple[Agent, Item, Session]] = []
    if state.pending_message is not None:
        found.append((agent, state.pending_message, session))
    for p in state.pending:
        target = agent.get_handoff(p.name)
        if target is not None and p.started and depth < 64:
            found += await _pending_messages(target, delegate_session(agent, target, session), depth + 1)
    return found
