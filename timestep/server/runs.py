"""Runs that outlive the request that started them, and the numbered event log clients follow.

A browser tab that closes, a proxy that drops an idle stream or a program that only wanted to
start a run must not stop the agent halfway through a tool call. So an HTTP request never runs the
agent itself: :meth:`Runs.start` starts ``run_agent`` as a task of the server, and every event it
yields goes into the conversation's :class:`EventLog`. A request that streams, and any later
request (a reload, another tab, a reconnect with ``Last-Event-ID``), only *reads* that log.

Event ids are ``<epoch>-<n>``: ``n`` counts the conversation's events since this server started,
and ``epoch`` is drawn when it starts. After a restart the old epoch no longer matches, so a client
that reconnects with an id from before gets the new server's log from its first event instead of
silently skipping it. Events of runs from before a restart are not replayed: what those runs did is
in the session (messages and journal), which is what a client reads on (re)connecting, and the calls
still waiting come from ``pending_interruptions``. The log keeps the latest ``limit`` events of each
conversation; a follower that falls further behind continues from the oldest one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..agent import Agent
from ..exceptions import SessionBusyError, TimestepError
from ..result import default_result_processor
from ..run import RunConfig, run_agent
from ..sessions.base import Item, Session

log = logging.getLogger("timestep.server")

Event = dict[str, Any]
EVENT_ID = re.compile(r"(?P<epoch>[0-9a-f]{1,64})-(?P<n>[0-9]{1,18})")


class EventLog:
    """One conversation's events since the server started, numbered, with followers woken on append."""

    def __init__(self, epoch: str, limit: int) -> None:
        self.epoch = epoch
        self._events: deque[tuple[int, Event]] = deque(maxlen=limit)
        self._last = 0
        self._wake: asyncio.Future[None] | None = None

    @property
    def last(self) -> int:
        return self._last

    def event_id(self, n: int) -> str:
        return f"{self.epoch}-{n}"

    def cursor(self, last_event_id: str | None) -> int:
        """The number after which a client that saw ``last_event_id`` continues (0: from the start).

        An id that is not an event id at all is a ``ValueError`` (the client's mistake, a 400):
        only a well-formed one of another server (from before a restart) means "from the start".
        """
        if not last_event_id:
            return 0
        found = EVENT_ID.fullmatch(last_event_id.strip())
        if found is None:
            raise ValueError(f"{last_event_id!r} is not an event id (they look like {self.event_id(0)!r})")
        if found["epoch"] != self.epoch:
            return 0  # another server's id: everything this server has
        return min(int(found["n"]), self._last)

    def append(self, event: Event) -> None:
        self._last += 1
        self._events.append((self._last, event))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._wake = None

    def after(self, n: int) -> list[tuple[int, Event]]:
        if not self._events or n >= self._last:
            return []
        first = self._events[0][0]
        return list(self._events)[max(0, n + 1 - first) :]

    def next_change(self) -> asyncio.Future[None]:
        """A future done at the next append. Made at once, not in a task that starts later: an
        event appended in between would otherwise be missed, and the follower would wait forever."""
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake


@dataclass
class Run:
    """One ``run_agent`` call, as a task of the server: its events, and whether it got going."""

    log: EventLog
    first: int  # the number of the run's first event in the log
    events: list[Event] = field(default_factory=list)
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def result(self) -> dict[str, Any]:
        if self.task is not None:
            await asyncio.shield(self.task)
        return await default_result_processor(_iterate(self.events))


async def _iterate(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


class ConversationBusy(SessionBusyError):
    """A run of this conversation is already going on in this server (a 409 at once, not a wait)."""


@dataclass
class _Conversation:
    log: EventLog
    run: Run | None = None


class Runs:
    """The server's runs and event logs, by (agent, conversation id).

    Logs of conversations that have no run going are dropped, oldest first, beyond ``keep`` of
    them, so a long-lived server's memory does not grow with every conversation it ever served.
    """

    def __init__(self, client: Any = None, config: RunConfig | None = None, limit: int = 5000, keep: int = 1000):
        self.epoch = secrets.token_hex(4)
        self.client = client
        self.config = config
        self._limit = limit
        self._keep = keep
        self._conversations: OrderedDict[tuple[str, str], _Conversation] = OrderedDict()

    def log(self, agent_name: str, conversation_id: str) -> EventLog:
        return self._get((agent_name, conversation_id)).log

    def current(self, agent_name: str, conversation_id: str) -> Run | None:
        found = self._conversations.get((agent_name, conversation_id))
        return found.run if found is not None and found.run is not None and not found.run.done else None

    def _get(self, key: tuple[str, str]) -> _Conversation:
        found = self._conversations.get(key)
        if found is None:
            found = self._conversations[key] = _Conversation(EventLog(self.epoch, self._limit))
            self._forget_idle()
        self._conversations.move_to_end(key)
        return found

    def _forget_idle(self) -> None:
        extra = len(self._conversations) - self._keep
        for key in list(self._conversations)[:extra] if extra > 0 else ():
            if self._conversations[key].run is None or self._conversations[key].run.done:  # type: ignore[union-attr]
                del self._conversations[key]

    def forget(self, agent_name: str, conversation_id: str) -> None:
        self._conversations.pop((agent_name, conversation_id), None)

    async def wait_idle(self, agent_name: str, conversation_id: str) -> None:
        """Let a run of this conversation finish (the next decision then sees what it decided)."""
        run = self.current(agent_name, conversation_id)
        if run is not None and run.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(run.task)

    async def start(
        self, agent: Agent, session: Session, messages: list[Item], approvals: dict[str, Any] | None = None
    ) -> Run:
        """Start a run as a server task; return once it got going, or raise why it could not.

        What ``run_agent`` refuses before it starts (an approval for a call that is no longer pending,
        a message sent while calls wait, another process holding the conversation) is raised here,
        so the request that asked gets the error instead of a stream that ends at once.
        """
        conversation = self._get((agent.name, session.conversation_id))
        if conversation.run is not None and not conversation.run.done:
            raise ConversationBusy(f"conversation {session.conversation_id!r} has a run in progress")
        run = Run(conversation.log, conversation.log.last + 1)
        conversation.run = run
        handle = run_agent(
            agent, messages, session, stream=True, approvals=approvals, client=self.client, config=self.config
        )
        run.task = asyncio.get_running_loop().create_task(self._drive(handle, run, agent.name))
        await asyncio.wait([run.started, run.task], return_when=asyncio.FIRST_COMPLETED)
        if not run.started.done() or run.started.cancelled() or run.started.exception() is not None:
            # The task ended without a single event: it raised (a store that is down, a refused
            # approval), and the request gets that error, streamed or not, not an empty stream.
            conversation.run = None
            await run.task
            raise RuntimeError("the run ended before it started")  # pragma: no cover - run_agent always emits
        return run

    async def _drive(self, handle: Any, run: Run, agent_name: str) -> None:
        try:
            async for event in handle:
                self._record(run, event)
        except TimestepError as exc:
            if not run.started.done():
                run.started.set_exception(exc)
                run.started.exception()  # retrieved: the request re-raises it from the task
                raise
            self._record(run, _error_event(agent_name, str(exc), type(exc).__name__))
        except Exception as exc:
            log.exception("run of %s failed", agent_name)
            if not run.started.done():
                run.started.set_exception(exc)
                run.started.exception()
                raise
            self._record(run, _error_event(agent_name, "the run failed unexpectedly (see the server log)", "Error"))
        finally:
            if not run.started.done():
                run.started.cancel()

    def _record(self, run: Run, event: Event) -> None:
        if event.get("type") == "error":  # on the stream, and in the server's log: nobody may be watching
            log.warning("run of %s: %s: %s", event.get("agent"), event.get("error_type"), event.get("error"))
        if not run.started.done():
            run.started.set_result(None)
        run.events.append(event)
        run.log.append(event)

    async def aclose(self) -> None:
        """Cancel the runs still going (their sessions hold everything done so far)."""
        tasks = [c.run.task for c in self._conversations.values() if c.run is not None and c.run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _error_event(agent_name: str, message: str, error_type: str) -> Event:
    return {"type": "error", "agent": agent_name, "depth": 0, "error": message, "error_type": error_type}


async def follow(log: EventLog, after: int, until: Run | None = None) -> AsyncIterator[tuple[int, Event]]:
    """The log's events after number ``after``, then each new one as it comes.

    With ``until``, it ends once that run is over and its last event was given; otherwise it
    follows for as long as the client stays.
    """
    while True:
        batch = log.after(after)
        for n, event in batch:
            after = n
            yield n, event
        if until is not None and until.done and not log.after(after):
            return
        if not batch:
            # Shared with the other followers and the run itself: waited on, never cancelled here.
            waits: set[asyncio.Future[Any]] = {log.next_change()}
            if until is not None and until.task is not None:
                waits.add(until.task)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
