"""``timestep run``: one question, the reply alone on stdout, for pipes and scripts.

stdout carries the final answer and nothing else, so ``timestep run ... > answer.md`` and
``$(timestep run ...)`` get just that; what happens on the way (tool calls, handoffs, guardrails,
questions) goes to stderr, in the same lines ``chat`` shows. The exit status says how the run
ended: 0 completed, 1 failed, 3 paused for an approval nobody could give here (no terminal on
stdin), in which case stderr says how to resume it with ``timestep chat``, 4 blocked by a message
or answer guardrail (the refusal is on stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import click

from ..model import ModelClient
from ..sessions import open_store
from .chat import TurnResult, close_unfinished, converse, terminal_approver
from .loading import load_agent
from .render import Output, Renderer, call_text, is_tty, one_line
from .setup import ChatOptions, forget_if_unanswered, open_endpoint, pick_conversation, prepare_agent
from .terminal import Terminal
from .threads import ToolThreads

PAUSED = 3
BLOCKED = 4  # a message or answer guardrail blocked: the refusal is on stdout


def read_prompt(prompt: str | None) -> str:
    """The argument, then whatever was piped in (``git diff | timestep run a.py:bot "Review:"``)."""
    piped = None if is_tty(sys.stdin) else sys.stdin.read()
    parts = [part.strip("\n") for part in (prompt, piped) if part and part.strip()]
    if not parts:
        raise click.UsageError("no prompt: give it as an argument or on stdin")
    return "\n\n".join(parts)


def run_once(spec: str, prompt: str | None, options: ChatOptions) -> int:
    text = read_prompt(prompt)
    agent = prepare_agent(load_agent(spec), options)
    store = open_store(options.store)
    output = Output(stderr=True)
    renderer = Renderer(output, replies=False)
    threads = ToolThreads()
    with asyncio.Runner() as runner, contextlib.ExitStack() as stack:
        runner.get_loop().set_default_executor(threads)
        client: ModelClient | None = None
        try:
            client = open_endpoint(options, stack)
            conversation_id, exists = runner.run(pick_conversation(store, agent, options))
            session = store.session(agent.name, conversation_id, agent.instructions)
            # Questions need a person at a terminal; prompt text from a pipe means there is none to ask.
            approve = terminal_approver(output, renderer, Terminal(output)) if is_tty(sys.stdin) else None
            message = [{"role": "user", "content": text}]
            try:
                result: TurnResult = runner.run(
                    converse(
                        agent,
                        session,
                        message,
                        client=client,
                        renderer=renderer,
                        approve=approve,
                        stream=not options.no_stream,
                    )
                )
            except KeyboardInterrupt:
                renderer.close()
                runner.run(close_unfinished(agent, session))
                raise
            if result.status == "error":
                error = one_line(result.error or "the run failed")
                if not exists and runner.run(forget_if_unanswered(store, agent, conversation_id)):
                    error += " (so the conversation was not stored)"
                raise click.ClickException(error)
            if result.status == "interrupted":
                for pending in result.interruptions:
                    if pending.tool_call_id in renderer.announced:
                        continue
                    call = call_text(pending.tool_name, pending.args, 200, output.marks.more)
                    output.line(f"{output.marks.pause} {call} waits for approval ({pending.agent})", "magenta")
                output.note(f"Paused. Decide with: {options.resume_command(spec, conversation_id)}")
                return PAUSED
            if result.final_output:
                click.echo(result.final_output)
            return BLOCKED if result.status == "blocked" else 0
        finally:
            if client is not None:
                runner.run(client.aclose())
            runner.run(store.aclose())
            if threads.abandon_if_busy():
                output.note("(a cancelled tool is still running: leaving without waiting for it)")
