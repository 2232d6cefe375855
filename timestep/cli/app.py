"""The click commands, and the one place where errors become a line on stderr and an exit code.

Each command's body imports what it needs (rich, the run loop, the HTTP client) when it runs, so
that ``timestep --help`` only pays for click. Every mistake a user can make surfaces as a
:class:`click.ClickException` or a :class:`timestep.TimestepError`; :meth:`TimestepGroup.main` turns
both into one readable line, and ``--debug`` adds the traceback for the cases that are not the
user's mistake after all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..exceptions import TimestepError

DEFAULT_STORE = "conversations"  # the library's FileSession default; repeated so --help needs no import
STORE_HELP = (
    "Where conversations live: a folder, sqlite:file.db, sqlite:///abs/path.db or postgresql://... "
    "[default: conversations; env: TIMESTEP_STORE]"
)


class TimestepGroup(click.Group):
    """A click group whose ``main`` reports errors as one line instead of a traceback."""

    debug = False

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        self.debug = False
        _tolerant_output()
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort as exc:
            interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
            click.echo("interrupted" if interrupted else "aborted", err=True)
            sys.exit(130 if interrupted else 1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            self._fail(exc, exc.format_message().rstrip(".") + hint, exc.exit_code)
        except click.ClickException as exc:
            self._fail(exc, exc.format_message(), exc.exit_code)
        except TimestepError as exc:
            self._fail(exc, str(exc) or type(exc).__name__, 1)
        except BrokenPipeError:
            # The reader went away (`timestep sessions show ID | head`): not worth a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def _fail(self, exc: BaseException, message: str, code: int) -> None:
        if self.debug:
            traceback.print_exception(exc, file=sys.stderr)
        click.echo(f"error: {_one_line(message)}", err=True)
        sys.exit(code)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _tolerant_output() -> None:
    """Never crash on a character the terminal's encoding lacks (a model may answer with any)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if reconfigure is not None and encoding != "utf8":
            with contextlib.suppress(ValueError, OSError):  # a stream that cannot change keeps its ways
                reconfigure(errors="replace")


F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEBUG_HELP = "Show the full traceback when something fails."


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    group = ctx.find_root().command
    if value and isinstance(group, TimestepGroup):
        group.debug = True


def _debug_option(fn: F) -> F:
    """``--debug`` on every command too, so it works before or after the subcommand."""
    return click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug, help=DEBUG_HELP
    )(fn)


@click.group("timestep", cls=TimestepGroup, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, envvar="TIMESTEP_DEBUG", help=DEBUG_HELP)
@click.version_option(package_name="timestep", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Agents with tools, guardrails, approvals, handoffs and stored conversations.

    \b
    Examples:
      timestep demo                          a tour that runs offline, in seconds
      timestep chat agents.py:assistant      talk to the Agent `assistant` in agents.py
      timestep chat agents.py:assistant -c   ... continuing the latest conversation
      timestep run agents.py:assistant "Hi"  one question, the reply alone on stdout
      timestep sessions list                 the stored conversations
    """
    group = ctx.find_root().command
    if isinstance(group, TimestepGroup):
        group.debug = group.debug or debug
    # The commands show waiting calls themselves, with the command that answers them; the library's
    # note for programs ("resume with: run_agent(...)") would only repeat it in words meant for Python.
    notes = logging.getLogger("timestep.approvals")
    ctx.call_on_close(lambda level=notes.level: notes.setLevel(level))  # a host process keeps its own
    notes.setLevel(logging.ERROR)


def _model_options(default_model: str | None) -> Callable[[F], F]:
    """The options that pick the model endpoint, shared by ``chat``, ``run`` and ``demo``."""

    def decorate(fn: F) -> F:
        model_help = (
            "Model name to use instead of the agent's own."
            if default_model is None
            else (f"Model name, when a real endpoint is used. [default: {default_model}]")
        )
        fn = click.option("--api-key", metavar="KEY", envvar="OPENAI_API_KEY", help="API key. [env: OPENAI_API_KEY]")(
            fn
        )
        fn = click.option(
            "--base-url",
            metavar="URL",
            envvar="OPENAI_BASE_URL",
            help="An OpenAI-compatible endpoint, e.g. http://localhost:11434/v1. [env: OPENAI_BASE_URL]",
        )(fn)
        return click.option("-m", "--model", metavar="NAME", help=model_help)(fn)

    return decorate


def _conversation_options(fn: F) -> F:
    """What ``chat`` and ``run`` share: which conversation, where, and how the agent is set up."""
    for option in reversed(
        [
            click.option(
                "--conversation", metavar="ID", help="Continue this conversation, or start a new one with this id."
            ),
            click.option(
                "-c", "--continue", "continue_latest", is_flag=True, help="Continue the agent's latest conversation."
            ),
            click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP),
            click.option("-s", "--system", metavar="TEXT", help="Instructions to use instead of the agent's own."),
            click.option("--no-stream", is_flag=True, help="Ask for whole replies instead of streamed ones."),
            click.option(
                "--offline", is_flag=True, help="Use the built-in scripted model (no key, no network) instead."
            ),
            click.option(
                "--mcp",
                multiple=True,
                metavar="SPEC",
                help="Also give the agent the tools of an MCP server: a command to start or a URL (repeatable).",
            ),
        ]
    ):
        fn = option(fn)
    return _model_options(None)(fn)


def _from_env(name: str) -> bool:
    source = click.get_current_context().get_parameter_source(name)
    return source is click.core.ParameterSource.ENVIRONMENT


@cli.command(context_settings=CONTEXT)
@click.argument("agent", metavar="FILE.py:NAME | MODULE:NAME")
@_conversation_options
@_debug_option
def chat(agent: str, **options: Any) -> None:
    """Talk to an Agent in the terminal.

    Replies stream as they are written (as markdown on a terminal); tool calls, handoffs and
    guardrails show as they happen, and a call that needs approval is asked here. Ctrl-C stops the
    current reply, Ctrl-D or /exit leaves, /help lists the other commands (/model, /usage, /clear,
    /copy). Alt-Enter starts a new line, a paste stays one message, and so does a block between two
    lines of three double quotes (also in a pipe, where every other line is one message). Messages
    you type are remembered across chats (Up recalls them).

    \b
    Examples:
      timestep chat agents.py:assistant
      timestep chat agents.py:assistant -c
      timestep chat agents.py:assistant --conversation 20250101-120000-ab12
      timestep chat myapp.agents:support -m gpt-4o --store sqlite:chats.db
      timestep chat agents.py:assistant --base-url http://localhost:11434/v1
      timestep chat agents.py:assistant --offline
    """
    from .chat import run_chat
    from .setup import ChatOptions

    run_chat(agent, ChatOptions(**options, base_url_from_env=_from_env("base_url")))


@cli.command("run", context_settings=CONTEXT)
@click.argument("agent", metavar="FILE.py:NAME | MODULE:NAME")
@click.argument("prompt", required=False)
@_conversation_options
@_debug_option
def run_command(agent: str, prompt: str | None, **options: Any) -> int:
    """Ask an Agent once: the reply alone on stdout, everything else on stderr.

    The prompt is the argument, or stdin when there is none (with both, stdin comes after the
    argument). A call that needs approval is asked on the terminal; without one the run pauses,
    says how to resume, and exits with status 3. Exit status: 0 completed, 1 failed, 3 paused,
    4 blocked by a message or answer guardrail.

    \b
    Examples:
      timestep run agents.py:assistant "Weather in Lima?"
      git diff | timestep run agents.py:reviewer "Review this diff:"
      timestep run agents.py:assistant -c "And tomorrow?" > answer.md
    """
    from .oneshot import run_once
    from .setup import ChatOptions

    return run_once(agent, prompt, ChatOptions(**options, base_url_from_env=_from_env("base_url")))


@cli.command(context_settings=CONTEXT)
@click.option("--offline", is_flag=True, help="Use the built-in scripted model even if an API key is set.")
@click.option(
    "--yes/--no",
    "approve",
    default=None,
    help="Answer the approval question without asking (default: ask on a terminal, else approve).",
)
@click.option("--store", metavar="STORE", help="Keep the demo conversation here (default: a temporary folder).")
@_model_options("gpt-4o-mini")
@_debug_option
def demo(
    offline: bool,
    approve: bool | None,
    store: str | None,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """A short tour: a tool, a handoff, an approval and a guardrail.

    A hotel concierge agent answers four questions. Without OPENAI_API_KEY or OPENAI_BASE_URL (or
    with --offline) it runs against a built-in scripted model over local HTTP, so it needs no
    network and no key; with them it uses the real model.

    \b
    Examples:
      timestep demo                  offline unless OPENAI_API_KEY is set
      timestep demo --no             decline the approval without being asked
      timestep demo --model gpt-4o   with OPENAI_API_KEY set
    """
    from .demo import run_demo

    run_demo(offline=offline, approve=approve, store=store, model=model, base_url=base_url, api_key=api_key)


@cli.group(context_settings=CONTEXT)
@_debug_option
def sessions() -> None:
    """List, read and delete stored conversations.

    \b
    Examples:
      timestep sessions list
      timestep sessions list --limit 5 --json
      timestep sessions show 20250101-120000-ab12
      timestep sessions rm 20250101-120000-ab12 --yes
    """


@sessions.command("list", context_settings=CONTEXT)
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("--agent", metavar="NAME", help="Only this agent's conversations.")
@click.option(
    "-n", "--limit", type=click.IntRange(min=0), default=20, show_default=True, help="At most this many; 0 for all."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for scripts.")
@_debug_option
def sessions_list(store: str, agent: str | None, limit: int, as_json: bool) -> None:
    """Stored conversations, most recent first, each with its first prompt.

    A handoff's delegate keeps its own conversation, listed under its agent with an id ending in
    ~<caller>.

    \b
    Examples:
      timestep sessions list
      timestep sessions list --agent assistant --limit 0
      timestep sessions list --json
    """
    from .conversations import list_conversations

    list_conversations(store, agent, limit, as_json)


@sessions.command("show", context_settings=CONTEXT)
@click.argument("conversation", metavar="ID")
@click.option("--agent", metavar="NAME", help="The agent, when the id exists under several.")
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the stored items as JSON, exactly as kept.")
@_debug_option
def sessions_show(conversation: str, agent: str | None, store: str, as_json: bool) -> None:
    """Print a conversation as a readable transcript.

    If the id exists under several agents and --agent is not given, every one is shown, one after
    the other (with --json that is an error instead, so a script always gets one list of items).

    \b
    Examples:
      timestep sessions show 20250101-120000-ab12
      timestep sessions show 20250101-120000-ab12 --agent concierge --json
    """
    from .conversations import show_conversation

    show_conversation(store, conversation, agent, as_json)


@sessions.command("rm", context_settings=CONTEXT)
@click.argument("conversation", metavar="ID")
@click.option("--agent", metavar="NAME", help="Only this agent's side of the conversation.")
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("-y", "--yes", is_flag=True, help="Delete without asking (needed when there is no terminal).")
@_debug_option
def sessions_rm(conversation: str, agent: str | None, store: str, yes: bool) -> None:
    """Delete a conversation (asks first).

    The conversations of the agents it handed off to (ids ending in ~<agent>) go with it.

    \b
    Examples:
      timestep sessions rm 20250101-120000-ab12
      timestep sessions rm 20250101-120000-ab12 --agent concierge --yes
    """
    from .conversations import remove_conversation

    remove_conversation(store, conversation, agent, yes)


from .worker import worker  # noqa: E402  (a command of its own module, registered here)

cli.add_command(worker)
from .serve import serve  # noqa: E402

cli.add_command(serve)
