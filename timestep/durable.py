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
* **One run at a time per conversation, twice over.** The queue is partitioned with a partition
  concurrency of one, and a conversation always lands in the same partition, so DBOS never starts
  two runs of one conversation at once and no worker slot waits on a busy conversation;
  ``PostgresSession.lock`` still holds inside the run, for runs started outside the queue. The
  partitions are a fixed number of buckets (``DurableClient(partitions=...)``, 256 by default), a
  conversation's bucket a hash of its agent and id: DBOS looks over every partition that has work
  on each dequeue, so one partition per conversation made a backlog of 10,000 conversations crawl,
  while 256 buckets keep that cheap and cap only how many runs go at once (at 256).
* **Dead workers are found by heartbeat.** DBOS recovers a dead executor's workflows when an
  executor with the same id restarts, or when told to (its admin API or Conductor do that). Workers
  here write a heartbeat row every ``heartbeat`` seconds; a worker that sees another's row older
  than ``dead_after`` deletes it (one ``DELETE ... RETURNING``, so exactly one worker claims it)
  and puts that executor's unfinished workflows back on their queues with DBOS's public
  ``resume_workflow``, for any live worker.
* **Model requests within a rate, across workers.** With ``model_limiter``, each model request
  first takes a permit from a second DBOS queue with DBOS's rate limiter (see :class:`_Pacer`).
* **Few writes per run.** A run's events reach its DBOS stream in batches (:class:`_EventStream`),
  and a client waits for all its runs with one query (:meth:`DurableClient._ended`).

``dbos`` is an optional extra (``pip install -e '.[dbos]'``), imported when this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from .agent import Agent
from .exceptions import ConfigurationError
from .model import ModelClient
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

__all__ = ["DurableClient", "DurableRun", "RunInfo", "Worker", "run_states"]

APP = "timestep"  # the DBOS application: queues and workflows are owned by it, clients included
WORKFLOW = "timestep_run"
PARTITIONS = 256  # buckets conversations are spread over on the run queue (see the module's docstring)
QUEUE = "timestep"
VERSION = "timestep-durable-1"  # the DBOS application version every worker shares, so any recovers any
EVENTS = "events"
PERMIT_WORKFLOW = "timestep_model_permit"
MODEL_QUEUE_SUFFIX = "_model"
STARTUP_GRACE = 30.0  # seconds a starting worker's heartbeat row counts as fresh
EVENT_BATCH = 0.05  # seconds a run's event stream waits after a write, gathering the next batch
RESULT_POLL = 0.1  # seconds between a client's looks at the runs it waits for (one query for all)
PERMIT_DELAY = 0.25  # seconds from DBOS starting a permit to its model request going out
PACE_MARGIN = 0.25  # seconds added to the model limiter's period: room for a request to be late

_ENDED = ["SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]
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
    config = dataclasses.replace(worker.config or RunConfig(), message_key=workflow_id)
    events: list[Any] = []
    stream = _EventStream()
    handle = run_agent(
        agent, messages, session, result_processor=None, approvals=approvals, client=worker.model_client, config=config
    )
    try:
        async for event in handle:
            events.append(event)
            stream.add(event)
    finally:
        await stream.flush()
    return await default_result_processor(_replay(events))


class _EventStream:
    """A run's events into its DBOS stream, in batches: one write in flight at a time, then a pause
    of ``EVENT_BATCH`` seconds (cut short when the run ends), each write carrying every event that
    arrived since the last (a list per stream value).

    One write per event cost a transaction and a thread hop each (sixteen per one-tool run); a
    reader now sees an event at most ``EVENT_BATCH`` seconds plus one write later.
    """

    def __init__(self) -> None:
        self._pending: list[Any] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def add(self, event: Any) -> None:
        self._pending.append(event)
        if self._writer is not None and self._writer.done():
            self._writer.result()  # a failed write fails the step now, not at the end
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())  # copies the step's context

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await DBOS.write_stream_async(EVENTS, batch)
            with contextlib.suppress(TimeoutError):  # what arrives meanwhile rides in the next write
                await asyncio.wait_for(self._closing.wait(), EVENT_BATCH)

    async def flush(self) -> None:
        self._closing.set()  # the run ended: no more waiting between writes
        if self._writer is not None:
            await self._writer  # raises what a write raised: the step fails and is retried
        if self._pending:
            await self._drain()


async def _replay(events: list[Any]) -> AsyncIterator[Any]:
    for event in events:
        yield event


# -- model calls within a rate limit, across all workers -------------------------------------------


@DBOS.workflow(name=PERMIT_WORKFLOW)
async def _permit() -> None:
    """Does nothing: DBOS starting it, within the model queue's rate limiter, is the permission."""


class _Pacer:
    """Model requests within ``model_limiter``, for all the workers on a queue together.

    Before each model request, a run enqueues a permit (an empty workflow) on the queue
    ``<queue>_model``, which has DBOS's rate limiter and no partitions: DBOS starts at most
    ``limit`` permits in any ``period`` seconds across every worker, first come first served, so
    runs of different conversations take turns. The request goes out ``PERMIT_DELAY`` seconds
    after DBOS started its permit (by the database's clock, which DBOS stamps starts with), so the
    requests' times are the starts shifted by a constant. Sending is never exact (a busy event
    loop, the network): DBOS is given the period plus ``PACE_MARGIN``, so a request up to that late
    still leaves no ``period``-second window at the endpoint with more than ``limit`` requests; a
    permit noticed more than half that margin late is dropped and a new one taken (the other half
    is left for sending). One task per worker looks up all its runs' permits in one query.
    """

    def __init__(self, client: Any, queue: str, offset: float, poll: float) -> None:
        self._client = client
        self.queue = queue
        self.offset = offset  # the database's clock minus ours, in seconds
        self.poll = poll
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        self.dropped = 0  # permits noticed too late and replaced

    @classmethod
    async def open(cls, worker: Worker) -> _Pacer:
        url = _sqlalchemy_url(worker.url)
        client = await asyncio.to_thread(
            DBOSClient, system_database_url=url, dbos_system_schema=worker.schema, application_name=APP
        )
        pool = await shared_pool(worker.url)
        async with pool.acquire() as conn:
            before = time.time()
            now = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
            offset = now - (before + time.time()) / 2
        return cls(client, worker.queue + MODEL_QUEUE_SUFFIX, offset, min(worker.polling_interval, 0.02))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.to_thread(self._client.destroy)

    async def acquire(self) -> None:
        """Wait until this worker may send one model request."""
        while True:
            permit = f"permit-{uuid.uuid4().hex}"
            options: EnqueueOptions = {
                "workflow_name": PERMIT_WORKFLOW,
                "queue_name": self.queue,
                "workflow_id": permit,
                "app_version": VERSION,
            }
            started = self._waiting[permit] = asyncio.get_running_loop().create_future()
            try:
                await self._client.enqueue_async(options)
                self._wake.set()
                started_ms = await started
            finally:
                self._waiting.pop(permit, None)
            due = started_ms / 1000 + PERMIT_DELAY - self.offset  # by our clock
            if time.time() <= due + PACE_MARGIN / 2:
                await asyncio.sleep(max(due - time.time(), 0.0))
                if time.time() <= due + PACE_MARGIN / 2:  # the loop may have been busy meanwhile
                    return
            self.dropped += 1

    async def _watch(self) -> None:
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.poll)
            try:
                found = await self._client.list_workflows_async(
                    workflow_ids=list(self._waiting), load_input=False, load_output=False
                )
            except Exception as exc:  # the database is away: the runs wait, the next look may succeed
                DBOS.logger.warning("timestep model pacing: %s", exc)
                continue
            for status in found:
                started = self._waiting.get(status.workflow_id)
                if status.dequeued_at is not None and started is not None and not started.done():
                    started.set_result(status.dequeued_at)


class _PacedClient(ModelClient):
    """The worker's model client, each request first waiting for its turn from a :class:`_Pacer`.
    A request retried inside the client (a 429 or a dropped connection) is not paced again."""

    pacer: _Pacer

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.pacer.acquire()
        return await super().complete(body)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        await self.pacer.acquire()
        async for chunk in super().stream(body):
            yield chunk


def _paced(client: Any, pacer: _Pacer) -> _PacedClient:
    if client is None:
        client = ModelClient.from_env()
    elif not isinstance(client, ModelClient):
        client = ModelClient.from_openai(client)  # an openai.AsyncOpenAI, as run_agent accepts
    paced = _PacedClient(**{f.name: getattr(client, f.name) for f in dataclasses.fields(client)})
    paced.pacer = pacer
    return paced


# -- workers ---------------------------------------------------------------------------------------


class Worker:
    """This process as a DBOS executor running Timestep runs: ``async with Worker(url, [agent]): ...``.

    DBOS keeps one executor per process, so there is one ``Worker`` per process. ``agents`` are the
    agents this worker can run, by name; every worker on a queue must have the same ones.
    ``worker_concurrency`` caps the runs this process makes at once, ``global_concurrency`` all
    workers together, ``limiter`` (``{"limit": n, "period": seconds}``) how many runs start per
    period across all workers, and ``model_limiter`` (the same form) how many model requests all
    workers on the queue send per period. ``polling_interval`` is how often DBOS looks for queued
    runs (and permits).
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
        model_limiter: dict[str, float] | None = None,
        client: Any = None,
        config: RunConfig | None = None,
        table_prefix: str = "timestep_",
        lease_ttl: float | None = None,
        executor_id: str | None = None,
        heartbeat: float | None = None,
        dead_after: float = 10.0,
        polling_interval: float = 0.05,
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
        self.model_limiter = model_limiter
        self.client = client
        self.model_client: Any = client  # what runs call the model with: paced when model_limiter is set
        self.config = config
        self.table_prefix = table_prefix
        self.lease_ttl = lease_ttl
        self.executor_id = executor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.heartbeat = heartbeat if heartbeat is not None else dead_after / 4  # several beats per deadline
        self.dead_after = dead_after
        self.polling_interval = polling_interval
        self.schema = schema
        self._beat: asyncio.Task[None] | None = None
        self._pacer: _Pacer | None = None
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
        # DBOS's launch blocks this loop for a second or more (longer on a busy machine), before any
        # heartbeat can run: the first row is dated STARTUP_GRACE seconds ahead, so no live worker
        # takes this one for dead meanwhile. One that dies while starting is recovered that much later.
        await self._create_table()
        await self._beat_once(ahead=STARTUP_GRACE)
        DBOS(
            config={
                "name": APP,
                "system_database_url": _sqlalchemy_url(self.url),
                "executor_id": self.executor_id,
                "application_version": VERSION,
                "dbos_system_schema": self.schema,
                "log_level": "WARNING",
                "notification_listener_polling_interval_sec": 0.05,
            }
        )
        if self.model_limiter is not None:  # before launch: a run dequeued at once is already paced
            self._pacer = await _Pacer.open(self)
            self.model_client = _paced(self.client, self._pacer)
            # The first request would import aiohttp and open the connection pool, blocking this loop
            # between a permit's time and its request: done now instead.
            await self.model_client._session()
        # Only this queue (and its model queue): DBOS would otherwise dequeue from every queue in the
        # database, and a worker of another queue, with other agents or limits, would take these runs.
        DBOS.listen_queues([self.queue, self.queue + MODEL_QUEUE_SUFFIX])
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
        if self.model_limiter is not None:
            await asyncio.to_thread(
                DBOS.register_queue,
                self.queue + MODEL_QUEUE_SUFFIX,
                limiter={**self.model_limiter, "period": self.model_limiter["period"] + PACE_MARGIN},  # type: ignore[arg-type]
                polling_interval_sec=self.polling_interval,
            )
        await self._beat_once()
        self._beat = asyncio.get_running_loop().create_task(self._keep_beating())

    async def stop(self) -> None:
        """Leave the queue; runs still going here are recovered by another worker, as after a crash."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        if self._pacer is not None:
            await self._pacer.close()
            self._pacer = None
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

    async def _create_table(self) -> None:
        try:
            await self._run(
                "CREATE TABLE IF NOT EXISTS {p}workers (executor_id text PRIMARY KEY, seen_at timestamptz NOT NULL)"
            )
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "23505":  # unique_violation: two workers at once, one made it
                raise

    async def _beat_once(self, ahead: float = 0.0) -> None:
        await self._run(
            "INSERT INTO {p}workers (executor_id, seen_at) VALUES ($1, now() + make_interval(secs => $2)) "
            "ON CONFLICT (executor_id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
            self.executor_id,
            ahead,
        )

    async def _recover(self, executor_id: str) -> int:
        """Put a dead executor's unfinished workflows back on their queues, through DBOS's public
        API: ``resume_workflow`` makes a ``PENDING`` workflow ``ENQUEUED`` again, on its own queue
        (so the concurrency caps and the conversation's partition still apply), and a live worker
        dequeues it and runs it from its last recorded step."""
        pending = await DBOS.list_workflows_async(
            status="PENDING", executor_id=executor_id, app_version=VERSION, load_input=False, load_output=False
        )
        for status in pending:
            await DBOS.resume_workflow_async(status.workflow_id, queue_name=status.queue_name or self.queue)
        return len(pending)

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
                    count = await self._recover(row[0])
                    self.recovered.append(row[0])
                    DBOS.logger.warning("recovered %d runs of executor %s", count, row[0])
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
        await self._client._ended(self.run_id)
        handle = await self._client._dbos.retrieve_workflow_async(self.run_id)
        result: dict[str, Any] = await handle.get_result()
        return result

    async def events(self) -> AsyncIterator[Any]:
        """The run's events so far, then live until it ends. A step cut short by a crash left its
        events here; the retried step's events follow them, starting again at ``run_start``."""
        async for value in self._client._dbos.read_stream_async(self.run_id, EVENTS, polling_interval_sec=0.05):
            for event in value if isinstance(value, list) else [value]:  # events are written in batches
                yield event


class DurableClient:
    """Start, find and resume durable runs, from a worker or any other process (no agent code needed)."""

    def __init__(self, dbos: Any, queue: str, partitions: int = PARTITIONS) -> None:
        if partitions < 1:
            raise ConfigurationError(f"partitions must be at least 1, got {partitions}")
        self._dbos = dbos
        self.queue = queue
        self.partitions = partitions
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def _ended(self, run_id: str) -> None:
        """Wait until a run has ended. Every run this client waits for is looked up in one query
        every ``RESULT_POLL`` seconds: a caller waiting on 10,000 runs costs one query, not 10,000."""
        ended = self._waiting.get(run_id)
        if ended is None:
            ended = self._waiting[run_id] = asyncio.get_running_loop().create_future()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        await asyncio.shield(ended)

    async def _watch(self) -> None:
        while self._waiting:
            try:
                found = await self._dbos.list_workflows_async(
                    workflow_ids=list(self._waiting), status=_ENDED, load_input=False, load_output=False
                )
            except Exception as exc:  # every waiter learns it, none hangs
                for waiter in self._waiting.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._waiting.clear()
                return
            for status in found:
                ended = self._waiting.pop(status.workflow_id, None)
                if ended is not None and not ended.done():
                    ended.set_result(None)
            if self._waiting:
                await asyncio.sleep(RESULT_POLL)

    @classmethod
    async def connect(
        cls, url: str, *, queue: str = QUEUE, schema: str = "dbos", partitions: int = PARTITIONS
    ) -> DurableClient:
        """A client for the runs in this database (whose DBOS tables a worker has created).

        ``partitions`` is how many buckets conversations are spread over (see the module's
        docstring); every client of one queue must use the same number, or one conversation could
        land in two buckets and run twice at once (its session lock would still keep them apart).
        """

        def make() -> Any:
            from dbos import run_dbos_database_migrations

            run_dbos_database_migrations(_sqlalchemy_url(url), schema=schema)
            # The runs it queues are owned by the workers' application, as DBOS asks of a client
            # whose database other applications may share.
            return DBOSClient(system_database_url=_sqlalchemy_url(url), dbos_system_schema=schema, application_name=APP)

        return cls(await asyncio.to_thread(make), queue, partitions)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
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
            "queue_partition_key": partition_key(name, conversation_id, self.partitions),
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


def partition_key(agent_name: str, conversation_id: str, partitions: int = PARTITIONS) -> str:
    """The queue partition a conversation's runs go to: the same one every time, one of ``partitions``."""
    import hashlib

    digest = hashlib.blake2b(f"{agent_name}\x00{conversation_id}".encode("utf-8", "surrogatepass"), digest_size=8)
    return f"bucket-{int.from_bytes(digest.digest(), 'big') % partitions}"


async def run_states(url: str, *, schema: str = "dbos") -> dict[tuple[str, str], str]:
    """The state of each conversation's newest durable run, by ``(agent, conversation_id)``: what
    ``timestep sessions list`` shows. Reads only; creates no table."""
    client = await asyncio.to_thread(DBOSClient, system_database_url=_sqlalchemy_url(url), dbos_system_schema=schema)
    try:
        found = await client.list_workflows_async(name=WORKFLOW, sort_desc=True)
    finally:
        await asyncio.to_thread(client.destroy)
    states: dict[tuple[str, str], str] = {}
    for status in found:
        if status.input and len(status.input["args"]) >= 2:
            agent, conversation = status.input["args"][:2]
            states.setdefault((str(agent), str(conversation)), _state_of(status.status, status.output))
    return states


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
