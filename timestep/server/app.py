"""``create_app``: Timestep agents as an HTTP API (FastAPI, SSE) with the web chat on top.

The app is a factory, so it can be served by ``timestep serve`` or mounted in an application of
one's own. Nothing here decides anything the library does not: a message starts ``run_agent``, a
decision is ``run_agent(agent, [], session, approvals=...)``, and what waits is
``pending_interruptions``. So every guarantee holds through the API as it does in a program: one
run at a time per conversation (the session's lock, across processes; and one run per
conversation in this server, so a second message is a 409 at once instead of a wait), approvals
bound to the call and its arguments (a call no longer pending is an ``ApprovalError``, a 409: of two
people approving the same call, one wins and the other is told), and nothing lost when the server
stops, because the session has everything and the server keeps nothing of its own that matters.

Sessions are made per request and never closed one by one: a store's sessions share its
connections, which :meth:`Store.aclose` releases when the app stops. Runs outlive their requests
(see :mod:`timestep.server.runs`). Errors are JSON with the status that says whose problem it is,
never a traceback: 400 a malformed request or id, 401 no token, 404 no such agent or conversation,
409 the conversation's state forbids it, 413 too large, 422 a body that does not fit its schema.
"""

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BeforeValidator
from pydantic_core import to_jsonable_python
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from ..agent import Agent
from ..approvals import ConversationState, load, replay
from ..exceptions import (
    ApprovalError,
    ConfigurationError,
    SessionBusyError,
    SessionNameError,
    SessionUnavailableError,
    TimestepError,
)
from ..run import RunConfig, pending_interruptions
from ..sessions.base import Session, check_names
from ..sessions.stores import Store, open_store
from . import schemas
from .runs import ConversationBusy, EventLog, Run, Runs, follow
from .security import BearerToken, BodyLimit

log = logging.getLogger("timestep.server")

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1024 * 1024

_STATUS = [
    (SessionNameError, 400),
    (ConfigurationError, 422),
    (ApprovalError, 409),
    (SessionBusyError, 409),
    (ConversationBusy, 409),
    (SessionUnavailableError, 503),
]
_KINDS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody} for code in (400, 401, 404, 409, 413, 422, 503)
}


class Server:
    """What the routes share: the agents by name, the store, the runs."""

    def __init__(self, agents: Mapping[str, Agent], store: Store, runs: Runs, config: RunConfig | None) -> None:
        self.agents = agents
        self.store = store
        self.runs = runs
        self.config = config
        self.created: set[tuple[str, str]] = set()

    def agent(self, name: str) -> Agent:
        found = self.agents.get(name)
        if found is None:
            raise HTTPException(404, f"no agent {name!r} is served here (agents: {', '.join(self.agents)})")
        return found

    def session(self, agent: Agent, conversation_id: str) -> Session:
        check_names(agent.name, conversation_id)
        return self.store.session(agent.name, conversation_id, agent.instructions)

    async def existing(self, agent: Agent, conversation_id: str) -> Session:
        """The session of a conversation that exists (created here, running, or stored), else a 404."""
        session = self.session(agent, conversation_id)
        known = (agent.name, conversation_id) in self.created or self.runs.current(agent.name, conversation_id)
        if not known and not await _stored(session):
            raise HTTPException(404, f"no conversation {conversation_id!r} of {agent.name}")
        return session

    async def pending(self, agent: Agent, session: Session) -> list[schemas.Pending]:
        return [
            schemas.Pending(**i.as_dict(), parameters=parameters_of(agent, i.agent, i.tool_name, i.kind))
            for i in await pending_interruptions(agent, session, self.config)
        ]


def create_app(
    agents: Agent | Sequence[Agent],
    store: Store | str = "conversations",
    *,
    client: Any = None,
    config: RunConfig | None = None,
    token: str | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The ASGI app serving ``agents``: the JSON API under ``/api``, the web chat at ``/``.

    ``store`` is a :class:`~timestep.sessions.Store` or a spec for :func:`~timestep.sessions.open_store`.
    ``client`` and ``config`` go to every ``run_agent``. With ``token``, every ``/api`` request but
    the OpenAPI document needs ``Authorization: Bearer <token>``.
    """
    served = _by_name([agents] if isinstance(agents, Agent) else list(agents))
    owned = isinstance(store, str)
    the_store = open_store(store) if isinstance(store, str) else store
    server = Server(served, the_store, Runs(client=client, config=config), config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await server.runs.aclose()
        if owned:
            await the_store.aclose()

    app = FastAPI(
        title="Timestep",
        summary="Conversations with Timestep agents; tool calls approved by a person",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.timestep = server
    _handlers(app)
    app.include_router(_routes(server), prefix="/api", responses=ERRORS)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    app.add_middleware(BodyLimit, max_bytes=max_body)
    if token is not None:
        if not token:
            raise ConfigurationError("the API token must not be empty")
        app.add_middleware(BearerToken, token=token)
    return app


def _by_name(agents: list[Agent]) -> dict[str, Agent]:
    if not agents:
        raise ConfigurationError("create_app needs at least one Agent")
    served: dict[str, Agent] = {}
    for agent in agents:
        if not isinstance(agent, Agent):
            raise ConfigurationError(f"create_app serves Agents, got {type(agent).__name__}")
        if agent.name in served:
            raise ConfigurationError(f"two agents are named {agent.name!r}: names pick the agent in the API")
        served[agent.name] = agent
    return served


MESSAGE_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"content": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_TEXT}},
    "required": ["content"],
    "additionalProperties": False,
}
"""What an edited user message must be: ``{"content": text}``, as a paused message's ``args`` are."""


def parameters_of(root: Agent, agent_name: str, tool_name: str, kind: str) -> dict[str, Any] | None:
    """The schema a decision's edited arguments must fit: the tool's, or a message's for a paused message."""
    if kind == "message":
        return MESSAGE_PARAMETERS
    return tool_parameters(root, agent_name, tool_name)


def tool_parameters(root: Agent, agent_name: str, tool_name: str) -> dict[str, Any] | None:
    """The JSON schema of a tool of ``root`` or of any agent it hands off to (where a call may wait)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        agent = todo.pop()
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        if agent.name == agent_name:
            for spec in agent.tool_specs:
                fn = spec.get("function") or {}
                if fn.get("name") == tool_name:
                    parameters: dict[str, Any] = fn.get("parameters") or {}
                    return parameters
        todo.extend(agent.handoffs)
    return None


def check_arguments(parameters: dict[str, Any] | None, args: dict[str, Any], tool_call_id: str) -> None:
    """Edited arguments must fit the tool's schema, or nothing is sent to the run (a 422)."""
    if parameters is None:
        return
    import jsonschema  # type: ignore[import-untyped]  # a dependency of the serve extra

    errors = sorted(jsonschema.Draft202012Validator(parameters).iter_errors(args), key=lambda e: list(e.path))
    if errors:
        details = [{"loc": ["args", *map(str, e.path)], "msg": e.message} for e in errors]
        raise _Unprocessable(f"the edited arguments of {tool_call_id!r} do not fit the tool's schema", details)


class _Unprocessable(Exception):
    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = details


def _error(status: int, kind: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def _handlers(app: FastAPI) -> None:
    async def timestep_error(_: Request, exc: Exception) -> Response:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            log.error("request failed: %s: %s", type(exc).__name__, exc)
        elif status == 503:
            log.warning("request refused, the store is unavailable: %s", exc)
        return _error(status, type(exc).__name__, str(exc) or type(exc).__name__)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _KINDS.get(exc.status_code, "HTTPError")
        return _error(exc.status_code, kind, str(exc.detail), None)

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        if any(d["type"] == "json_invalid" for d in details):
            return _error(400, "BadRequest", "the request body is not valid JSON", details)
        return _error(422, "ValidationError", "the request does not fit the API's schema", details)

    async def unprocessable(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Unprocessable)
        return _error(422, "ValidationError", str(exc), exc.details)

    async def unexpected(_: Request, exc: Exception) -> Response:
        log.error("request failed: %s", type(exc).__name__, exc_info=exc)
        return _error(500, "InternalError", "the server failed; see its log")

    app.add_exception_handler(TimestepError, timestep_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(_Unprocessable, unprocessable)
    app.add_exception_handler(Exception, unexpected)


async def _stored(session: Session) -> bool:
    """Whether the conversation has anything beyond its system message."""
    items = await session.get_items()
    if any(i.get("role") != "system" for i in items):
        return True
    get_journal = getattr(session, "get_journal", None)
    return bool(await get_journal()) if get_journal is not None else False


def _flag(value: Any) -> Any:
    """A boolean query parameter is ``true`` or ``false``, as the OpenAPI document says (not ``yes``, ``1``, ``on``)."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value == "true" if isinstance(value, str) else value


def _unfinished(state: ConversationState) -> bool:
    """Whether a run of this conversation stopped before its end: calls without a result, or no answer yet."""
    last = state.messages[-1] if state.messages else {}
    return bool(state.pending) or last.get("role") in ("user", "tool")


def _check_routable(conversation_id: str) -> None:
    """An id the API's URLs can name: one path segment, so no ``/`` and not ``.`` or ``..``."""
    if "/" in conversation_id or conversation_id in (".", ".."):
        raise SessionNameError(
            f"conversation_id {conversation_id!r} cannot be named in a URL path: "
            "use one without '/' that is not '.' or '..'"
        )


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


_RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The run's result; with `Accept: text/event-stream`, its events as they happen",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    202: {"model": schemas.Started, "description": "Started in the background (`?background=true`)"},
}


def _routes(server: Server) -> APIRouter:  # noqa: C901 - one closure per route, each short
    router = APIRouter()
    runs = server.runs

    def agent_of(agent: str) -> Agent:
        return server.agent(agent)

    AgentDep = Annotated[Agent, Depends(agent_of)]
    Background = Annotated[
        bool, BeforeValidator(_flag), Query(description="Answer 202 at once; follow the run on /events")
    ]

    @router.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/agents", response_model=schemas.AgentList, summary="The agents served here")
    async def list_agents() -> schemas.AgentList:
        return schemas.AgentList(agents=[_agent_info(a) for a in server.agents.values()])

    @router.get(
        "/agents/{agent}/conversations", response_model=schemas.ConversationList, summary="An agent's conversations"
    )
    async def list_conversations(agent: AgentDep) -> schemas.ConversationList:
        found = [c for c in await server.store.list_conversations() if c.agent_name == agent.name]
        known = {c.conversation_id for c in found}
        out = [
            schemas.ConversationSummary(
                agent=agent.name,
                conversation_id=c.conversation_id,
                message_count=c.message_count,
                updated_at=c.updated_at,
                running=runs.current(agent.name, c.conversation_id) is not None,
            )
            for c in found
        ]
        out += [
            schemas.ConversationSummary(
                agent=agent.name, conversation_id=cid, message_count=0, updated_at=None, running=False
            )
            for name, cid in sorted(server.created)
            if name == agent.name and cid not in known
        ]
        return schemas.ConversationList(conversations=out)

    @router.post(
        "/agents/{agent}/conversations",
        status_code=201,
        response_model=schemas.ConversationSummary,
        summary="Start a conversation (stored once its first message is sent)",
    )
    async def create_conversation(
        agent: AgentDep, body: schemas.NewConversation | None = None
    ) -> schemas.ConversationSummary:
        cid = (body.conversation_id if body is not None else None) or _new_id()
        _check_routable(cid)
        session = server.session(agent, cid)
        if (agent.name, cid) in server.created or await _stored(session):
            raise HTTPException(409, f"conversation {cid!r} already exists")
        server.created.add((agent.name, cid))
        return schemas.ConversationSummary(
            agent=agent.name, conversation_id=cid, message_count=0, updated_at=None, running=False
        )

    @router.get(
        "/agents/{agent}/conversations/{conversation_id}",
        response_model=schemas.Conversation,
        summary="A conversation: its messages, the calls waiting, whether a run is going on",
    )
    async def show_conversation(agent: AgentDep, conversation_id: str) -> schemas.Conversation:
        event_log = runs.log(agent.name, conversation_id)
        cursor = event_log.event_id(event_log.last)  # before reading: a message stored meanwhile comes again
        session = await server.existing(agent, conversation_id)
        stored, journal = await load(session)
        messages = [m for m in stored if m.get("role") != "system"]
        pending = await server.pending(agent, session)
        running = runs.current(agent.name, conversation_id) is not None
        return schemas.Conversation(
            agent=agent.name,
            conversation_id=conversation_id,
            messages=messages,
            pending=pending,
            running=running,
            unfinished=not running and not pending and _unfinished(replay(stored, journal)),
            cursor=cursor,
        )

    @router.delete(
        "/agents/{agent}/conversations/{conversation_id}",
        status_code=204,
        response_class=Response,
        summary="Delete a conversation and its delegates' conversations",
    )
    async def delete_conversation(agent: AgentDep, conversation_id: str) -> Response:
        server.session(agent, conversation_id)  # the id is checked as the stores check it
        if runs.current(agent.name, conversation_id) is not None:
            raise ConversationBusy(f"conversation {conversation_id!r} has a run in progress")
        deleted = await server.store.delete_with_delegates(agent.name, conversation_id)
        created = (agent.name, conversation_id) in server.created
        server.created.discard((agent.name, conversation_id))
        runs.forget(agent.name, conversation_id)
        if not deleted and not created:
            raise HTTPException(404, f"no conversation {conversation_id!r} of {agent.name}")
        return Response(status_code=204)

    @router.post(
        "/agents/{agent}/conversations/{conversation_id}/messages",
        response_model=schemas.RunResult,
        responses=_RUN_RESPONSES,
        summary="Send a user message: starts a run",
    )
    async def post_message(
        request: Request,
        agent: AgentDep,
        conversation_id: str,
        body: schemas.UserMessage,
        background: Background = False,
    ) -> Any:
        session = server.session(agent, conversation_id)
        run = await runs.start(agent, session, [{"role": "user", "content": body.content}])
        server.created.discard((agent.name, conversation_id))
        return await _answer(request, run, conversation_id, background)

    @router.get(
        "/agents/{agent}/conversations/{conversation_id}/pending",
        response_model=schemas.PendingList,
        summary="The calls waiting for a person, delegates' included",
    )
    async def list_pending(agent: AgentDep, conversation_id: str) -> schemas.PendingList:
        session = await server.existing(agent, conversation_id)
        return schemas.PendingList(pending=await server.pending(agent, session))

    @router.post(
        "/agents/{agent}/conversations/{conversation_id}/decisions",
        response_model=schemas.RunResult,
        responses=_RUN_RESPONSES,
        summary="Approve, decline or approve with edited arguments: resumes the run",
    )
    async def post_decisions(
        request: Request,
        agent: AgentDep,
        conversation_id: str,
        body: schemas.Decisions,
        background: Background = False,
    ) -> Any:
        session = await server.existing(agent, conversation_id)
        approvals = {d.tool_call_id: d.as_value() for d in body.decisions}
        if len(approvals) != len(body.decisions):
            raise HTTPException(400, "a tool call is decided twice in one request")
        for _ in range(100):
            await runs.wait_idle(agent.name, conversation_id)  # a decision being applied: this one comes after
            waiting = {p.tool_call_id: p for p in await server.pending(agent, session)}
            for d in body.decisions:
                p = waiting.get(d.tool_call_id)
                if p is None:
                    raise ApprovalError(
                        f"tool call {d.tool_call_id!r} is not waiting for a decision (already decided, or never asked)"
                    )
                if d.args is not None:
                    check_arguments(p.parameters, d.args, d.tool_call_id)
            try:
                run = await runs.start(agent, session, [], approvals)
            except ConversationBusy:
                continue  # another decision started first: see what it left
            return await _answer(request, run, conversation_id, background)
        raise ConversationBusy(f"conversation {conversation_id!r} stays busy")

    @router.get(
        "/agents/{agent}/conversations/{conversation_id}/events",
        responses={200: {"description": "Server-sent events", "content": {"text/event-stream": {}}}},
        response_class=Response,
        summary="Follow the conversation's events (since this server started)",
    )
    async def events(
        agent: AgentDep,
        conversation_id: str,
        last_event_id: Annotated[str | None, Header(max_length=100)] = None,
        after: Annotated[str | None, Query(max_length=100, description="Like Last-Event-ID")] = None,
        follow_live: Annotated[
            bool, BeforeValidator(_flag), Query(alias="follow", description="Keep following new events")
        ] = True,
    ) -> Response:
        await server.existing(agent, conversation_id)
        event_log = runs.log(agent.name, conversation_id)
        try:
            start = event_log.cursor(last_event_id or after)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if not follow_live:
            return EventSourceResponse(_sse(event_log, event_log.after(start)))
        return EventSourceResponse(_follow_sse(event_log, start, None), ping=15)

    return router


def _agent_info(agent: Agent) -> schemas.AgentInfo:
    tools = []
    for spec in agent.tool_specs:
        fn = spec.get("function") or {}
        tools.append(
            schemas.ToolInfo(name=fn["name"], description=fn.get("description"), parameters=fn.get("parameters") or {})
        )
    output = None
    if agent.output is not None:
        output = schemas.OutputInfo(name=agent.output.name, schema=agent.output.schema, wrapped=agent.output.wrapped)
    return schemas.AgentInfo(
        name=agent.name, model=agent.model, tools=tools, handoffs=[h.name for h in agent.handoffs], output=output
    )


async def _answer(request: Request, run: Run, conversation_id: str, background: bool) -> Any:
    if background:
        cursor = run.log.event_id(run.first - 1)
        return JSONResponse(
            schemas.Started(conversation_id=conversation_id, status="running", cursor=cursor).model_dump(),
            status_code=202,
        )
    if "text/event-stream" in request.headers.get("accept", ""):
        return EventSourceResponse(_follow_sse(run.log, run.first - 1, run), ping=15)
    return schemas.RunResult(**await run.result())


async def _sse(event_log: EventLog, batch: list[tuple[int, dict[str, Any]]]) -> AsyncIterator[ServerSentEvent]:
    for n, event in batch:
        yield _frame(event_log, n, event)


async def _follow_sse(event_log: EventLog, after: int, until: Run | None) -> AsyncIterator[ServerSentEvent]:
    async for n, event in follow(event_log, after, until):
        yield _frame(event_log, n, event)


def _frame(event_log: EventLog, n: int, event: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(event, ensure_ascii=False, default=_jsonable), id=event_log.event_id(n))


def _jsonable(value: Any) -> Any:
    """A typed final answer (``run_end``'s ``output``: a pydantic model, a dataclass...) as JSON data."""
    try:
        return to_jsonable_python(value)
    except Exception:  # pydantic cannot say: its text, rather than a failed stream
        return str(value)
