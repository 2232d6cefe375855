"""The click commands, and the one place where errors become a line on stderr and an exit code.

Each command's body imports what it needs (rich, the run loop, the HTTP client) when it runs, so
that ``timestep --help`` only pays for click. Every mistake a user can make surfaces as a
:class:`click.ClickException` or a :class:`timestep.TimestepError`; :meth:`TimestepGroup.main` turns
both into one readable line, and ``--debug`` adds the traceback for the cases that are not the
user's mistake after all.
"""

from __future__ import annotations

import contextlib
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


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("timestep", cls=TimestepGroup, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, envvar="TIMESTEP_DEBUG", help="Show the full traceback when something fails.")
@click.version_option(package_name="timestep", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Agents with tools, guardrails, approvals, handoffs and stored conversations.

    \b
    Examples:
      timestep demo                          a tour that runs offline, in seconds
      timestep chat agents.py:assistant      talk to the Agent `assistant` in agents.py
      timestep chat myapp.agents:assistant   ... or in an importable module
      timestep sessions list                 the stored conversations
    """
    group = ctx.find_root().command
    if isinstance(group, TimestepGroup):
        group.debug = debug


F = TypeVar("F", bound=Callable[..., Any])


def _model_options(default_model: str | None) -> Callable[[F], F]:
    """The options that pick the model endpoint, shared by ``chat`` and ``demo``."""

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
        return click.option("--model", metavar="NAME", help=model_help)(fn)

    return decorate


@cli.command(context_settings=CONTEXT)
@click.argument("agent", metavar="FILE.py:NAME | MODULE:NAME")
@click.option("-c", "--conversation", metavar="ID", help="Continue this conversation (default: start a new one).")
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@_model_options(None)
def chat(
    agent: str, conversation: str | None, store: str, model: str | None, base_url: str | None, api_key: str | None
) -> None:
    """Talk to an Agent in the terminal.

    Replies stream as they are written; tool calls, handoffs and guardrails show as they happen,
    and a call that needs approval is asked here. Ctrl-C stops the current reply, Ctrl-D or /exit
    leaves. The conversation is saved as it goes: continue it later with --conversation.

    \b
    Examples:
      timestep chat agents.py:assistant
      timestep chat agents.py:assistant --conversation 20250101-120000-ab12
      timestep chat myapp.agents:support --model gpt-4o --store sqlite:chats.db
      timestep chat agents.py:assistant --base-url http://localhost:11434/v1
    """
    from .chat import run_chat

    run_chat(agent, conversation=conversation, store=store, model=model, base_url=base_url, api_key=api_key)


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
def sessions() -> None:
    """List, read and delete stored conversations.

    \b
    Examples:
      timestep sessions list
      timestep sessions show 20250101-120000-ab12
      timestep sessions rm 20250101-120000-ab12 --yes
    """


@sessions.command("list", context_settings=CONTEXT)
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("--agent", metavar="NAME", help="Only this agent's conversations.")
def sessions_list(store: str, agent: str | None) -> None:
    """Every stored conversation, most recent first.

    A handoff's delegate keeps its own conversation, listed under its agent with an id ending in
    ~<caller>.
    """
    from .conversations import list_conversations

    list_conversations(store, agent)


@sessions.command("show", context_settings=CONTEXT)
@click.argument("conversation", metavar="ID")
@click.option("--agent", metavar="NAME", help="The agent, when the id exists under several.")
@click.option("--store", metavar="STORE", default=DEFAULT_STORE, envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the stored items as JSON, exactly as kept.")
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
@click.option("-y", "--yes", is_flag=True, help="Delete without asking.")
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
