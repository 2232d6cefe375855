"""Durable queued runs: DBOS workflows over PostgreSQL, on any number of worker processes.

Why it is built the way it is:

* **DBOS, not a queue of our own.** A run is a DBOS workflow on a DBOS queue in the same PostgreSQL
  database as the conversations (:class:`~timestep.PostgresSession`). DBOS stores the queue, the
  workflow's status, its result and its event stream, caps how many runs go at once (per worker and
  globally), limits how fast runs start, and re-runs a workflow whose process died.
* **One workflow per turn, one step per workflow.** The workflow makes one ``run_agent`` call, as a
  DBOS step. The model call and every tool call inside it are made safe by Timestep's journal, as
  in any run: a tool call that started but has no stored result is an unknown outcome (re-run only
  if the tool is idempotent, otherwise it waits for a person). A step that a crash cut short has no
  recorded output, so the recovered workflow runs it again; ``RunConfig.message_key`` (the workflow
  id) keeps the user's message from being stored twice.
* **A pause ends the workflow.** A run that waits for a person finishes with status
  ``interrupted``; nothing holds a worker, a connection or a thread while the person thinks. A
  decision (from any process, through :class:`DurableClient`) enqueues a new workflow that resumes
  the conversation.
* **One run at a time per conversation, twice over.** The queue is partitioned by conversation with
  a partition concurrency of one, so DBOS never starts two runs of one conversation at once and no
  worker slot waits on a busy conversation; ``PostgresSession.lock`` still holds inside the run,
  for runs started outside the queue.
* **Dead workers are found by heartbeat.** DBOS recovers a dead executor's workflows when an
  executor with the same id restarts, or when told to (its admin API or Conductor do that). Workers
  here write a heartbeat row every ``heartbeat`` seconds; a worker that sees another's row older
  than ``dead_after`` deletes it (one ``DELETE ... RETURNING``, so exactly one worker claims it)
  and asks DBOS to recover that executor's workflows, which DBOS puts back on the queue for any
  live worker.

``dbos`` is an optional extra (``pip install -e '.[dbos]'``), imported when this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from .agent import Agent
from .exceptions import ConfigurationError
from .result import default_result_processor
from .run import RunConfig, run_agent
from .sessions.base import Item
from .sessions.postgres import PostgresSession, shared_pool

try:
    from dbos import DBOS, DBOSClient, EnqueueOptions
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "durable runs need DBOS: install it with pip install dbos (or pip install -e '.[dbos]' in a Timestep checkout)"
    ) from None

__all__ = ["DurableClient", "DurableRun", "RunInfo", "Worker"]

WORKFLOW = "timestep_run"
QUEUE = "timestep"
VERSION = "timestep-durable-1"  # the DBOS application version every worker shares, so any recovers any
EVENTS = "events"

_STATES = {"ENQUEUED": "queued", "DELAYED": "queued", "PENDING": "running", "CANCELLED": "cancelled"}


# -- the workflow, run by whichever worker dequeues it -------------------------------------------


@DBOS.workflow(name=WORKFLOW)
async def _run_workflow(
    agent_name: str, conversation_id: str, messages: list[Item], approvals: dict[str, Any] | None
) -> dict[str, Any]:
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None
    result: dict[str, Any] = await _turn(agent_name, conversation_id, messages, approvals, workflow_id)
    return result


@DBOS.step(name="timestep_turn")
async def _turn(
    agent_name: str, conversation_id: str, messages: list[Item], approvals: dict[str, Any] | None, workflow_id: str
) -> dict[str, Any]:
    worker = Worker.current()
    agent = worker.agent(agent_name)
    session = worker.session(agent, conversation_id)
    config = worker.config or RunConfig()
    config = RunConfig(**{**config.__dict__, "message_key": workflow_id})
    events: list[Any] = []
    handle = run_agent(
        agent, messages, session, result_processor=None, approvals=approvals, client=worker.client, config=config
    )
    async for event in handle:
        events.append(event)
        await DBOS.write_stream_async(EVENTS, event)
    return await default_result_processor(_replay(events))


async def _replay(events: list[Any]) -> AsyncIterator[Any]:
    for event in events:
        yield event


# -- workers ---------------------------------------------------------------------------------------


class Worker:
    """This process as a DBOS executor running Timestep runs: ``async with Worker(url, [agent]): ...``.

    DBOS keeps one executor per process, so there is one ``Worker`` per process. ``agents`` are the
    agents this worker can run, by name; every worker on a queue must have the same ones.
    ``worker_concurrency`` caps the runs this process makes at once, ``global_concurrency`` all
    workers together, and ``limiter`` (``{"limit": n, "period": seconds}``) how many runs start per
    period across all workers: each run makes one model call per model turn (two for a question
    answered with one tool), so a model's request rate divided by that is the limit to set.
    """

    _current: Worker | None = None

    def __init__(
        self,
        url: str,
        agents: Sequence[Agent],
        *,
        queue: str = QUEUE,
        worker_concurrency: int | None = 8,
        global_concurrency: int | None = None,
        limiter: dict[str, float] | None = None,
        client: Any = None,
        config: RunConfig | None = None,
        table_prefix: str = "timestep_",
        lease_ttl: float | None = None,
        executor_id: str | None = None,
        heartbeat: float | None = None,
        dead_after: float = 10.0,
        polling_interval: float = 0.1,
        schema: str = "dbos",
    ) -> None:
        if not agents:
            raise ConfigurationError("a Worker needs at least one agent to run")
        self.url = url
        self._agents = {a.name: a for a in agents}
        self.queue = queue
        self.worker_concurrency = worker_concurrency
        self.global_concurrency = global_concurrency
        self.limiter = limiter
        self.client = client
        self.config = config
        self.table_prefix = table_prefix
        self.lease_ttl = lease_ttl
        self.executor_id = executor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.heartbeat = heartbeat if heartbeat is not None else dead_after / 4  # several beats per deadline
        self.dead_after = dead_after
        self.polling_interval = polling_interval
        self.schema = schema
        self._beat: asyncio.Task[None] | None = None
        self.recovered: list[str] = []  # executors whose workflows this worker handed back to the queue

    @classmethod
    def current(cls) -> Worker:
        if cls._current is None:
            raise ConfigurationError("no timestep Worker is running in this process")
        return cls._current

    def agent(self, name: str) -> Agent:
        found = self._agents.get(name)
        if found is None:
            raise ConfigurationError(f"this worker has no agent named {name!r} (it has: {', '.join(self._agents)})")
        return found

    def session(self, agent: Agent, conversation_id: str) -> PostgresSession:
        extra = {} if self.lease_ttl is None else {"lease_ttl": self.lease_ttl}
        return PostgresSession(
            agent.name, conversation_id, agent.instructions, url=self.url, table_prefix=self.table_prefix, **extra
        )

    async def start(self) -> None:
        """Join the queue: from now on this process dequeues and runs workflows on this event loop."""
        if Worker._current is not None:
            raise ConfigurationError("a timestep Worker is already running in this process")
        Worker._current = self
        await self._beat_once()
        DBOS(
            config={
                "name": "timestep",
                "system_database_url": _sqlalchemy_url(self.url),
                "executor_id": self.executor_id,
                "application_version": VERSION,
                "dbos_system_schema": self.schema,
                "log_level": "WARNING",
                "notification_listener_polling_interval_sec": 0.05,
            }
        )
        DBOS.launch()  # on this loop: DBOS runs dequeued async workflows on the loop that launched it
        await asyncio.to_thread(
            DBOS.register_queue,
            self.queue,
            worker_concurrency=self.worker_concurrency,
            global_concurrency=self.global_concurrency,
            partition_concurrency=1,
            limiter=self.limiter,  # type: ignore[arg-type]
            polling_interval_sec=self.polling_interval,
        )
        self._beat = asyncio.get_running_loop().create_task(self._keep_beating())

    async def stop(self) -> None:
        """Leave the queue; runs still going here are recovered by another worker, as after a crash."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        await asyncio.to_thread(DBOS.destroy)
        await self._run("UPDATE {p}workers SET seen_at = '-infinity' WHERE executor_id = $1", self.executor_id)
        Worker._current = None

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self, sql: str, *args: Any) -> list[Any]:
        pool = await shared_pool(self.url)
        async with pool.acquire() as conn:
            rows: list[Any] = await conn.fetch(sql.format(p=self.table_prefix), *args)
            return rows

    async def _beat_once(self) -> None:
        await self._run(
            "CREATE TABLE IF NOT EXISTS {p}workers (executor_id text PRIMARY KEY, seen_at timestamptz NOT NULL)"
        )
        await self._run(
            "INSERT INTO {p}workers (executor_id, seen_at) VALUES ($1, now()) "
            "ON CONFLICT (executor_id) DO UPDATE SET seen_at = now()",
            self.executor_id,
        )

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat_once()
                dead = await self._run(
                    "DELETE FROM {p}workers WHERE seen_at < now() - make_interval(secs => $1) RETURNING executor_id",
                    self.dead_after,
                )
                for row in dead:
                    handles = await asyncio.to_thread(DBOS._recover_pending_workflows, [row[0]])
                    self.recovered.append(row[0])
                    DBOS.logger.warning("recovered %d runs of executor %s", len(handles), row[0])
            except (OSError, ConnectionError) as exc:  # the database is away: try again at the next beat
                DBOS.logger.warning("timestep worker heartbeat failed: %s", exc)


# -- clients: any process that starts runs, reads them, or answers approvals ------------------------


@dataclass(frozen=True)
class RunInfo:
    """One durable run as ``DurableClient.runs`` lists it."""

    run_id: str
    agent: str
    conversation_id: str
    state: str  # queued | running | completed | interrupted | error | failed | cancelled


class DurableRun:
    """A handle to one durable run, from any process: its state, its events, its result."""

    def __init__(self, client: DurableClient, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"DurableRun({self.run_id!r})"

    async def state(self) -> str:
        """``queued``, ``running``, then the run's own status (``completed``, ``interrupted``,
        ``error``); ``failed`` if the run raised, ``cancelled`` if DBOS cancelled it."""
        handle = await self._client._dbos.retrieve_workflow_async(self.run_id)
        status = await handle.get_status()
        return _state_of(status.status, status.output)

    async def result(self) -> dict[str, Any]:
        """Wait for the run to end and return its result, as ``run_agent`` would have."""
        handle = await self._client._dbos.retrieve_workflow_async(self.run_id)
        result: dict[str, Any] = await handle.get_result()
        return result

    async def events(self) -> AsyncIterator[Any]:
        """The run's events so far, then live until it ends. A step cut short by a crash left its
        events here; the retried step's events follow them, starting again at ``run_start``."""
        async for event in self._client._dbos.read_stream_async(self.run_id, EVENTS, polling_interval_sec=0.05):
            yield event


class DurableClient:
    """Start, find and resume durable runs, from a worker or any other process (no agent code needed)."""

    def __init__(self, dbos: Any, queue: str) -> None:
        self._dbos = dbos
        self.queue = queue

    @classmethod
    async def connect(cls, url: str, *, queue: str = QUEUE, schema: str = "dbos") -> DurableClient:
        """A client for the runs in this database (whose DBOS tables a worker has created)."""

        def make() -> Any:
            from dbos import run_dbos_database_migrations

            run_dbos_database_migrations(_sqlalchemy_url(url), schema=schema)
            return DBOSClient(system_database_url=_sqlalchemy_url(url), dbos_system_schema=schema)

        return cls(await asyncio.to_thread(make), queue)

    async def close(self) -> None:
        await asyncio.to_thread(self._dbos.destroy)

    async def __aenter__(self) -> DurableClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(
        self,
        agent: Agent | str,
        messages: list[Item],
        conversation_id: str,
        *,
        approvals: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> DurableRun:
        """Queue a run; it runs on some worker. A ``run_id`` already used returns that run instead."""
        name = agent.name if isinstance(agent, Agent) else agent
        options: EnqueueOptions = {
            "workflow_name": WORKFLOW,
            "queue_name": self.queue,
            "workflow_id": run_id or f"run-{uuid.uuid4().hex}",
            "queue_partition_key": f"{name}/{conversation_id}",
            "app_version": VERSION,
        }
        handle = await self._dbos.enqueue_async(options, name, conversation_id, list(messages), approvals)
        return DurableRun(self, handle.get_workflow_id())

    async def resume(self, agent: Agent | str, conversation_id: str, approvals: dict[str, Any]) -> DurableRun:
        """Answer a paused run's interruptions: a new run continues the conversation on some worker."""
        return await self.start(agent, [], conversation_id, approvals=approvals)

    def run(self, run_id: str) -> DurableRun:
        return DurableRun(self, run_id)

    async def runs(self, *, limit: int | None = None) -> list[RunInfo]:
        """Every durable run, newest first: queued, running, paused (``interrupted``) and finished."""
        found = await self._dbos.list_workflows_async(name=WORKFLOW, limit=limit, sort_desc=True)
        out = []
        for status in found:
            args = status.input["args"] if status.input else ("?", "?")
            out.append(RunInfo(status.workflow_id, args[0], args[1], _state_of(status.status, status.output)))
        return out


def _state_of(status: str, output: Any) -> str:
    if status == "SUCCESS":
        return str(output.get("status", "completed")) if isinstance(output, dict) else "completed"
    return _STATES.get(status, "failed")


def _sqlalchemy_url(url: str) -> str:
    """DBOS speaks SQLAlchemy, whose plain ``postgresql://`` means psycopg2; DBOS ships psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
