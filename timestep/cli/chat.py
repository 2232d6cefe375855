"""``timestep chat``: a conversation with an Agent in the terminal, and the turn loop ``demo`` and ``run`` share.

The whole chat runs on one event loop (an :class:`asyncio.Runner`), driven one turn at a time from
an ordinary loop that reads the next message between turns. That gives Ctrl-C a clear meaning: at
the prompt it clears the line; during a turn the Runner cancels the turn's task, and
:func:`close_unfinished` then answers any tool call the turn left open, so the stored conversation
stays one the model accepts and ``--conversation`` can continue it.

A turn that fails is reported in one line and the chat goes on, unless the endpoint itself is
wrong (unreachable, a rejected key, an unknown URL or model) before anything ever worked, or
there is no person to go on with (a pipe). A conversation whose model never answered is not kept
(:func:`~timestep.cli.setup.forget_if_unanswered`); the message stays in the prompt history.

Questions asked during a run (approvals) must not block the event loop in a way Ctrl-C cannot
interrupt, so on a terminal they wait for the input line with the loop's reader instead of
``input()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click

from ..agent import Agent
from ..approvals import Interruption, load, replay
from ..handoffs import delegate_session
from ..model import ModelClient
from ..run import pending_interruptions, run_agent
from ..sessions import Session, Store, open_store
from .clipboard import copy
from .conversations import stored_usage
from .loading import load_agent
from .render import Output, Renderer, one_line, show_interruption, usage_lines
from .setup import (
    ChatOptions,
    forget_if_unanswered,
    new_conversation_id,
    open_endpoint,
    pick_conversation,
    prepare_agent,
)
from .terminal import LEAVING, Terminal, TurnCancelled
from .threads import ToolThreads

Approver = Callable[[Interruption], Awaitable[Any]]

EXIT_COMMANDS = LEAVING
HELP_TEXT = "Type a message and press Enter (/help for more). /exit or Ctrl-D leaves; Ctrl-C stops a reply."
COMMANDS_HELP = (
    "/model [NAME]  show or switch the model",
    "/usage         tokens used so far",
    "/clear         start a new conversation (this one is kept)",
    "/copy, /cp     copy the last reply to the clipboard",
    "/exit, /quit   leave (or Ctrl-D)",
    'Alt-Enter starts a new line; a line of """ opens a block that another closes; // sends a leading /.',
)
# HTTP statuses that say the endpoint, key or model is wrong rather than this one request.
SETUP_STATUSES = frozenset({401, 403, 404})


class LeftWaiting(Exception):
    """Input ended while an approval was being asked: the call stays paused in the session."""


@dataclass
class TurnResult:
    """How a turn ended, from its events."""

    status: str = "completed"
    error: str | None = None
    error_type: str | None = None
    final_output: str | None = None
    interruptions: list[Interruption] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)

    def add_usage(self, used: dict[str, Any] | None) -> None:
        for key, value in (used or {}).items():
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value

    def setup_is_wrong(self) -> bool:
        """Whether the failure says the endpoint is unusable (as opposed to one bad request)."""
        if self.error_type == "ModelConnectionError":
            return True
        status = re.match(r"HTTP (\d{3})", self.error or "")
        return self.error_type == "ModelHTTPError" and status is not None and int(status[1]) in SETUP_STATUSES


# -- one turn ---------------------------------------------------------------------------------------


async def run_turn(
    agent: Agent,
    session: Session,
    messages: list[dict[str, Any]],
    *,
    client: ModelClient,
    renderer: Renderer,
    approve: Approver | None,
    approvals: dict[str, Any] | None = None,
    stream: bool = True,
) -> TurnResult:
    """Run once, rendering every event as it arrives; approvals are asked inline through ``approve``.

    Without ``approve``, a call that needs approval pauses the run (status ``interrupted``).
    """
    handle = run_agent(
        agent,
        messages,
        session,
        stream=stream,
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
            if event["type"] == "run_end":
                result.add_usage(event.get("usage"))  # each agent's part reports its own calls
            if event.get("depth", 0) != 0:
                continue
            if event["type"] == "error":
                result.error, result.error_type = str(event.get("error")), str(event.get("error_type"))
            elif event["type"] == "run_end":
                result.status = str(event.get("status"))
                result.final_output = event.get("final_output")
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
    approve: Approver | None,
    approvals: dict[str, Any] | None = None,
    stream: bool = True,
) -> TurnResult:
    """A turn, plus answering any pause it ends in (a delegate's stale question) until it is done."""
    result = await run_turn(
        agent, session, messages, client=client, renderer=renderer, approve=approve, approvals=approvals, stream=stream
    )
    for _ in range(10):
        if approve is None or result.status != "interrupted" or not result.interruptions:
            break
        answers = {i.tool_call_id: await approve(i) for i in result.interruptions}
        used = result.usage
        result = await run_turn(
            agent, session, [], client=client, renderer=renderer, approve=approve, approvals=answers, stream=stream
        )
        result.add_usage(used)
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


# -- asking the person ------------------------------------------------------------------------------


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


def run_chat(spec: str, options: ChatOptions) -> None:
    """``timestep chat``: load the agent, open the store, then talk until the person leaves."""
    agent = load_agent(spec)
    opened = open_store(options.store)  # before the key check: a wrong --store is the first thing to fix
    output = Output()
    threads = ToolThreads()
    with asyncio.Runner() as runner, contextlib.ExitStack() as stack:
        runner.get_loop().set_default_executor(threads)
        client: ModelClient | None = None
        try:
            client = open_endpoint(options, stack)
            Chat(agent, opened, client, output, runner, spec, options).run()
        finally:
            if client is not None:
                runner.run(client.aclose())
            runner.run(opened.aclose())
            if threads.abandon_if_busy():
                output.note("(a cancelled tool is still running: leaving without waiting for it)")


class Chat:
    """One ``timestep chat`` invocation: the turn loop and the slash commands."""

    def __init__(
        self,
        agent: Agent,
        store: Store,
        client: ModelClient,
        output: Output,
        runner: asyncio.Runner,
        spec: str,
        options: ChatOptions,
    ) -> None:
        self.original = agent
        self.options = options
        self.agent = prepare_agent(agent, options)
        self.store = store
        self.client = client
        self.output = output
        self.runner = runner
        self.spec = spec
        self.renderer = Renderer(output, markdown=output.fancy)
        self.terminal = Terminal(output, runner)
        self.approve = terminal_approver(output, self.renderer, self.terminal)
        self.answered = False  # a turn has succeeded: later endpoint errors are not the setup's fault
        self.last_reply: str | None = None
        self.usage = TurnResult()  # summed over the chat's turns
        self.conversation_id = ""
        self.fresh = False
        self.session: Session

    def run(self) -> None:
        conversation_id, exists = self.runner.run(pick_conversation(self.store, self.agent, self.options))
        self._open(conversation_id, fresh=not exists)
        try:
            if exists:
                self._continue()
            else:
                self.output.note(f"New conversation {conversation_id} with {self.agent.name}. {HELP_TEXT}")
            if self.options.offline:
                self.output.note("Offline: the built-in scripted model answers (name a tool to have it called).")
            self._loop()
        except LeftWaiting:
            self.renderer.close()
            self.output.note("")
            self.output.note(f"No answer: the call waits for approval. Continue with: {self._resume_command()}")
            return
        self.output.note(self._farewell())

    def _open(self, conversation_id: str, *, fresh: bool) -> None:
        self.conversation_id = conversation_id
        self.fresh = fresh  # started by this chat: removed again if the model never answers in it
        self.session = self.store.session(self.agent.name, conversation_id, self.agent.instructions)

    def _resume_command(self) -> str:
        return self.options.resume_command(self.spec, self.conversation_id)

    def _forget_if_unanswered(self) -> bool:
        return self.fresh and self.runner.run(forget_if_unanswered(self.store, self.agent, self.conversation_id))

    def _farewell(self) -> str:
        if self._forget_if_unanswered():
            return "Nothing was stored: the model never answered in this conversation."
        return f"Continue with: {self._resume_command()}"

    def _continue(self) -> None:
        messages, _ = self.runner.run(load(self.session))
        count = sum(1 for m in messages if "role" in m)  # as `timestep sessions list` counts them
        self.output.note(
            f"Continuing conversation {self.conversation_id} with {self.agent.name} ({count} messages). {HELP_TEXT}"
        )
        last = next((m for m in reversed(messages) if m.get("role") == "assistant" and m.get("content")), None)
        if last is not None:
            self.last_reply = str(last["content"])
            self.output.note(f"Last reply: {one_line(self.last_reply)[:200]}")
        pending = self.runner.run(pending_interruptions(self.agent, self.session))
        if pending:
            self.output.note(f"It is waiting for {len(pending)} approval{'s' if len(pending) > 1 else ''}.")
            self._turn([], pending=pending)

    def _loop(self) -> None:
        while True:
            try:
                text = self.terminal.read_message("you> ")
            except KeyboardInterrupt:
                self.output.out.print()
                self.output.note("(/exit or Ctrl-D leaves)")
                continue
            if text is None:
                return
            if not text.strip():
                continue
            if text.startswith("//"):
                text = text[1:]
            elif text.strip().startswith("/") and "\n" not in text.strip():
                if self._command(text.strip()):
                    return
                continue
            self._turn([{"role": "user", "content": text}])

    # -- slash commands -------------------------------------------------------------------------------

    def _command(self, line: str) -> bool:
        """Run a slash command; True means leave. Unknown ones are refused, never sent to the model."""
        name, _, argument = line.partition(" ")
        name, argument = name.lower(), argument.strip()
        if name in EXIT_COMMANDS:
            return True
        if name in ("/help", "/?"):
            for row in COMMANDS_HELP:
                self.output.note(row)
        elif name == "/model":
            self._model(argument)
        elif name == "/usage":
            self._show_usage()
        elif name == "/clear":
            self._clear()
        elif name in ("/copy", "/cp"):
            self._copy()
        else:
            self.output.error(
                f"unknown command {name} (/help lists them; start with // to send a message that begins with /)"
            )
        return False

    def _model(self, name: str) -> None:
        if name:
            self.options = dataclasses.replace(self.options, model=name)
            self.agent = prepare_agent(self.original, self.options)
        delegates = " and its delegates" if self.agent.handoffs else ""
        self.output.note(f"Model: {self.agent.model} (for {self.agent.name}{delegates}).")

    def _show_usage(self) -> None:
        used = self.usage.usage
        if not used:
            self.output.note("No tokens used yet in this chat (or the endpoint does not report them).")
            return
        self.output.note(
            f"Tokens in this chat: {used.get('prompt_tokens', 0)} in, {used.get('completion_tokens', 0)} out, "
            f"{used.get('total_tokens', 0)} in all."
        )
        stored = self.runner.run(stored_usage(self.store, self.agent.name, self.conversation_id))
        if stored.get("model_calls"):
            lines = usage_lines(stored)
            self.output.note("\n".join([f"This conversation's {lines[0]}", *lines[1:]]))

    def _clear(self) -> None:
        self.output.note(self._farewell())
        self._open(new_conversation_id(), fresh=True)
        self.last_reply = None
        self.output.note(f"New conversation {self.conversation_id} with {self.agent.name}.")

    def _copy(self) -> None:
        if not self.last_reply:
            self.output.error("no reply to copy yet")
            return
        how = copy(self.last_reply, self.output)
        if how is None:
            self.output.error("no clipboard here: install wl-clipboard, xclip or xsel")
        else:
            self.output.note(f"Copied the last reply ({len(self.last_reply)} characters) with {how}.")

    # -- turns ------------------------------------------------------------------------------------------

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
                stream=not self.options.no_stream,
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
        self.usage.add_usage(result.usage)
        if result.status == "error":
            self._failed(result)
            return
        self.answered = True
        if result.final_output:
            self.last_reply = result.final_output

    def _failed(self, result: TurnResult) -> None:
        message = one_line(result.error or "the run failed")
        if self._forget_if_unanswered():
            kept = "; your message is in the prompt history (Up)" if self.terminal.remembers else ""
            message += f" (so the conversation was not stored{kept})"
        fatal = not self.terminal.interactive or (not self.answered and result.setup_is_wrong())
        if fatal:
            raise click.ClickException(message)
        self.output.error(message)
