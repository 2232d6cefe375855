"""``timestep chat``: a conversation with an Agent in the terminal, and the turn loop ``demo`` shares.

The whole chat runs on one event loop (an :class:`asyncio.Runner`), driven one turn at a time from
an ordinary loop that reads the next message between turns. That gives Ctrl-C a clear meaning: at
the prompt it clears the line; during a turn the Runner cancels the turn's task, and
:func:`close_unfinished` then answers any tool call the turn left open, so the stored conversation
stays one the model accepts and ``--conversation`` can continue it.

Questions asked during a run (approvals) must not block the event loop in a way Ctrl-C cannot
interrupt, so on a terminal they wait for the input line with the loop's reader instead of
``input()``.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click
from rich.text import Text

from ..agent import Agent
from ..approvals import Interruption, load, replay
from ..handoffs import delegate_session
from ..model import ModelClient
from ..run import pending_interruptions, run_agent
from ..sessions import Session, Store, open_store
from .loading import load_agent, make_client, with_model
from .render import Output, Renderer, is_tty, show_interruption

Approver = Callable[[Interruption], Awaitable[Any]]

# Turn failures that mean the endpoint itself is wrong (address, key, model name), not one bad turn.
ENDPOINT_ERRORS = frozenset({"ModelConnectionError", "ModelHTTPError"})
EXIT_COMMANDS = frozenset({"/exit", "/quit", "/q"})
HELP_TEXT = "Type a message and press Enter. /exit or Ctrl-D leaves; Ctrl-C stops a reply."


class TurnCancelled(Exception):
    """The person stopped the turn while a question was on screen."""


class LeftWaiting(Exception):
    """Input ended while an approval was being asked: the call stays paused in the session."""


@dataclass
class TurnResult:
    """How a turn ended, from its top-level events."""

    status: str = "completed"
    error: str | None = None
    error_type: str | None = None
    interruptions: list[Interruption] = field(default_factory=list)


def new_conversation_id() -> str:
    """Sortable by time, short enough to type, unique enough for one person's conversations."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


# -- one turn ---------------------------------------------------------------------------------------


async def run_turn(
    agent: Agent,
    session: Session,
    messages: list[dict[str, Any]],
    *,
    client: ModelClient,
    renderer: Renderer,
    approve: Approver,
    approvals: dict[str, Any] | None = None,
) -> TurnResult:
    """Run once, rendering every event as it arrives; approvals are asked inline through ``approve``."""
    handle = run_agent(
        agent,
        messages,
        session,
        stream=True,
        result_processor=None,
        approvals=approvals,
        approval_handler=approve,
        client=client,
    )
    result = TurnResult()
    renderer.wait()
    try:
        async for typed in handle:
            event: dict[str, Any] = dict(typed)
            renderer.event(event)
            if event.get("depth", 0) != 0:
                continue
            if event["type"] == "error":
                result.error, result.error_type = str(event.get("error")), str(event.get("error_type"))
            elif event["type"] == "run_end":
                result.status = str(event.get("status"))
                result.interruptions = [Interruption(**i) for i in event.get("interruptions") or ()]
    finally:
        renderer.close()
    return result


async def converse(
    agent: Agent,
    session: Session,
    messages: list[dict[str, Any]],
    *,
    client: ModelClient,
    renderer: Renderer,
    approve: Approver,
    approvals: dict[str, Any] | None = None,
) -> TurnResult:
    """A turn, plus answering any pause it ends in (a delegate's stale question) until it is done."""
    result = await run_turn(
        agent, session, messages, client=client, renderer=renderer, approve=approve, approvals=approvals
    )
    for _ in range(10):
        if result.status != "interrupted" or not result.interruptions:
            break
        answers = {i.tool_call_id: await approve(i) for i in result.interruptions}
        result = await run_turn(
            agent, session, [], client=client, renderer=renderer, approve=approve, approvals=answers
        )
    return result


# -- the state a turn can leave behind ---------------------------------------------------------------


async def close_unfinished(agent: Agent, session: Session, depth: int = 0) -> int:
    """Answer every tool call a cancelled turn left without a result; returns how many.

    Without this the next message would re-run (or ask about) calls the person just stopped. A
    handoff that was under way is closed inside its delegate's session first.
    """
    state = replay(*await load(session))
    results = []
    for call in state.pending:
        target = agent.get_handoff(call.name)
        if target is not None and depth < 32:
            await close_unfinished(target, delegate_session(agent, target, session), depth + 1)
        text = (
            "Cancelled by the person while it was running: it may or may not have taken effect."
            if call.started
            else "Not run: the person cancelled the turn before this call started."
        )
        results.append({"role": "tool", "tool_call_id": call.id, "content": text})
    if results:
        await session.add_items(results)
    return len(results)


# -- reading from the person ---------------------------------------------------------------------------


class Terminal:
    """Reads what the person types: between turns, and while a run waits for an approval.

    prompt_toolkit is used when it is installed and this is a terminal; otherwise ``input()`` (with
    readline's line editing where available). When stdin is not a terminal, lines are read as they
    come and echoed, so a piped session's output reads like the conversation it was.
    """

    def __init__(self, output: Output, runner: asyncio.Runner | None = None) -> None:
        self.output = output
        self.runner = runner
        self.interactive = is_tty(sys.stdin)
        self._prompt_session: Any = None
        self._readline = False
        if self.interactive and output.fancy and runner is not None:
            try:
                prompt_toolkit = importlib.import_module("prompt_toolkit")  # optional: better line editing
            except ImportError:
                pass
            else:
                self._prompt_session = prompt_toolkit.PromptSession()
        if self.interactive and self._prompt_session is None:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            else:
                self._readline = True

    def read(self, prompt: str) -> str | None:
        """The next message, or None at end of input. Ctrl-C raises KeyboardInterrupt."""
        if self._prompt_session is not None and self.runner is not None:
            try:
                line: str = self.runner.run(self._prompt_session.prompt_async(prompt))
            except EOFError:
                return None
            return line
        if not self.interactive:
            return self._read_piped(prompt)
        try:
            return input(self._styled(prompt))
        except EOFError:
            self.output.out.print()
            return None

    async def ask(self, prompt: str) -> str | None:
        """An answer while a run is waiting; None at end of input. Ctrl-C cancels the turn."""
        if self._prompt_session is not None:
            try:
                answer: str = await self._prompt_session.prompt_async(prompt)
            except KeyboardInterrupt:
                raise TurnCancelled from None
            except EOFError:
                return None
            return answer
        if not self.interactive:
            return self._read_piped(prompt)
        self.output.out.print(Text(prompt, style="bold"), end="")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = sys.stdin.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ready  # a terminal delivers whole lines, so readline() below does not block
        finally:
            loop.remove_reader(fd)
        line = sys.stdin.readline()
        if not line:
            self.output.out.print()
            return None
        return line.rstrip("\r\n")

    def _read_piped(self, prompt: str) -> str | None:
        line = sys.stdin.readline()
        if not line:
            return None
        line = line.rstrip("\r\n")
        self.output.out.print(Text.assemble((prompt, "bold green"), line))
        return line

    def _styled(self, prompt: str) -> str:
        if not self.output.fancy:
            return prompt
        if self._readline:  # readline must be told which bytes take no room on screen
            return f"\001\033[1;32m\002{prompt.rstrip()}\001\033[0m\002 "
        return prompt


async def settle(renderer: Renderer) -> None:
    """Let the events emitted before a question reach the screen before the question does.

    The run calls the approval handler directly, while its events travel through a queue to the
    loop that renders them; yielding to the event loop lets that loop catch up.
    """
    for _ in range(3):
        await asyncio.sleep(0)
    renderer.close()


def terminal_approver(output: Output, renderer: Renderer, terminal: Terminal) -> Approver:
    """Ask the person about each call a guardrail holds: y approves, n declines with an optional reason.

    Tool calls of one model reply run concurrently, so two may want an answer at once; a lock puts
    the questions one after the other, each with its own call on screen.
    """
    one_at_a_time = asyncio.Lock()

    async def approve(interruption: Interruption) -> bool | str:
        async with one_at_a_time:
            await settle(renderer)
            show_interruption(output, interruption)
            return await answer(interruption)

    async def answer(interruption: Interruption) -> bool | str:
        while True:
            answer = await terminal.ask("    approve? [y/n] ")
            if answer is None:
                raise LeftWaiting(interruption.tool_call_id)
            word, _, rest = answer.strip().partition(" ")
            word = word.lower()
            if word in ("y", "yes"):
                return True
            if word in ("n", "no"):
                if rest.strip():
                    return rest.strip()
                reason = await terminal.ask("    reason, for the model (Enter to skip): ")
                return (reason or "").strip() or False
            output.note("    answer y to approve or n to decline")

    return approve


# -- the command -------------------------------------------------------------------------------------


def run_chat(
    spec: str,
    *,
    conversation: str | None,
    store: str,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """``timestep chat``: load the agent, open the store, then talk until the person leaves."""
    agent = load_agent(spec)
    if model:
        agent = with_model(agent, model)
    client = make_client(base_url, api_key)
    opened = open_store(store)
    output = Output()
    with asyncio.Runner() as runner:
        try:
            Chat(agent, opened, client, output, runner, spec).run(conversation)
        finally:
            runner.run(client.aclose())
            runner.run(opened.aclose())


class Chat:
    """One ``timestep chat`` invocation."""

    def __init__(
        self, agent: Agent, store: Store, client: ModelClient, output: Output, runner: asyncio.Runner, spec: str
    ) -> None:
        self.agent = agent
        self.store = store
        self.client = client
        self.output = output
        self.runner = runner
        self.spec = spec
        self.renderer = Renderer(output)
        self.terminal = Terminal(output, runner)
        self.approve = terminal_approver(output, self.renderer, self.terminal)
        self.answered = False  # a turn has succeeded: later endpoint errors are not the setup's fault

    def run(self, conversation: str | None) -> None:
        conversation_id = conversation or new_conversation_id()
        self.session = self.store.session(self.agent.name, conversation_id, self.agent.instructions)
        try:
            if conversation is None:
                self.output.note(f"New conversation {conversation_id} with {self.agent.name}. {HELP_TEXT}")
            else:
                self._continue(conversation_id)
            self._loop()
        except LeftWaiting:
            self.renderer.close()
            self.output.note("")
            self.output.note(f"No answer: the call waits for approval. {self._resume_hint(conversation_id)}")
            return
        self.output.note(self._resume_hint(conversation_id))

    def _resume_hint(self, conversation_id: str) -> str:
        return f"Continue with: timestep chat {self.spec} --conversation {conversation_id}"

    def _continue(self, conversation_id: str) -> None:
        items = self.runner.run(self.session.get_items())
        if not any(i.get("role") not in (None, "system") or "journal" in i for i in items):
            raise click.ClickException(
                f"no conversation {conversation_id!r} with {self.agent.name} in {self.store.describe()} "
                "(see 'timestep sessions list')"
            )
        messages = [i for i in items if i.get("role") in ("user", "assistant")]
        self.output.note(
            f"Continuing conversation {conversation_id} with {self.agent.name} ({len(messages)} messages)."
        )
        last = next((m for m in reversed(messages) if m.get("role") == "assistant" and m.get("content")), None)
        if last is not None:
            self.output.note(f"Last reply: {' '.join(str(last['content']).split())[:200]}")
        pending = self.runner.run(pending_interruptions(self.agent, self.session))
        if pending:
            self.output.note(f"It is waiting for {len(pending)} approval{'s' if len(pending) > 1 else ''}.")
            self._turn([], pending=pending)

    def _loop(self) -> None:
        while True:
            try:
                line = self.terminal.read("you> ")
            except KeyboardInterrupt:
                self.output.out.print()
                self.output.note("(/exit or Ctrl-D leaves)")
                continue
            if line is None:
                return
            text = line.strip()
            if not text:
                continue
            if text.lower() in EXIT_COMMANDS:
                return
            if text.lower() in ("/help", "/?"):
                self.output.note(HELP_TEXT)
                continue
            self._turn([{"role": "user", "content": line}])

    def _turn(self, messages: list[dict[str, Any]], pending: list[Interruption] | None = None) -> None:
        async def go() -> TurnResult:
            approvals = {i.tool_call_id: await self.approve(i) for i in pending or ()}
            return await converse(
                self.agent,
                self.session,
                messages,
                client=self.client,
                renderer=self.renderer,
                approve=self.approve,
                approvals=approvals or None,
            )

        try:
            result = self.runner.run(go())
        except (KeyboardInterrupt, TurnCancelled):
            self.renderer.close()
            self.output.out.print()
            closed = self.runner.run(close_unfinished(self.agent, self.session))
            detail = f"; {closed} unfinished tool call{'s' if closed != 1 else ''} marked cancelled" if closed else ""
            self.output.note(f"(reply cancelled{detail})")
            return
        if result.status == "error":
            self._failed(result)
        else:
            self.answered = True

    def _failed(self, result: TurnResult) -> None:
        message = result.error or "the run failed"
        fatal = not self.terminal.interactive or (not self.answered and result.error_type in ENDPOINT_ERRORS)
        if fatal:
            raise click.ClickException(message)
        self.output.error(message)
