"""Showing a run in the terminal: streamed replies, compact tool lines, handoffs, approvals, transcripts.

One :class:`Output` decides once whether stdout is a terminal. On a terminal, rich adds colour, a
spinner while the model thinks, and Unicode marks; anywhere else (a pipe, a file, a test) the same
lines come out as plain ASCII-marked text without escape codes or wrapping, so they stay readable
in logs and easy to grep.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.status import Status
from rich.table import Table
from rich.text import Text

from ..approvals import Interruption
from ..handoffs import TRANSFER_PREFIX
from ..sessions import ConversationInfo

Event = dict[str, Any]


@dataclass(frozen=True)
class Marks:
    """The little signs in front of each kind of line."""

    call: str
    result: str
    error: str
    blocked: str
    pause: str
    approved: str
    declined: str
    handoff: str
    back: str
    rule: str
    more: str  # the end of a shortened text
    sep: str  # between the parts of a title


FANCY = Marks("→", "←", "✗", "⊘", "⏸", "✓", "✗", "⇢", "⇠", "─", "…", " · ")
PLAIN = Marks("->", "<-", "x", "!!", "||", "+", "x", ">>", "<<", "-", "...", " - ")


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Output:
    """Where and how the commands print: rich on a terminal, plain text anywhere else."""

    def __init__(self, fancy: bool | None = None, *, stderr: bool = False) -> None:
        if fancy is None:
            fancy = is_tty(sys.stderr if stderr else sys.stdout) and os.environ.get("TERM") != "dumb"
        self.fancy = fancy
        self.marks = FANCY if fancy else PLAIN
        if fancy:
            self.out = Console(stderr=stderr, highlight=False, emoji=False)
            self.err = Console(stderr=True, highlight=False, emoji=False)
        else:
            plain: dict[str, Any] = dict(
                force_terminal=False, no_color=True, highlight=False, emoji=False, soft_wrap=True, width=10_000
            )
            self.out = Console(stderr=stderr, **plain)
            self.err = Console(stderr=True, **plain)

    def line(self, text: str | Text = "", style: str = "", *, clip: bool = False) -> None:
        """One line; ``clip`` keeps a long line to the terminal's width instead of wrapping it."""
        renderable = Text(text, style=style) if isinstance(text, str) else text
        if clip and self.fancy:
            renderable.no_wrap, renderable.overflow = True, "ellipsis"
        self.out.print(renderable)

    def note(self, text: str) -> None:
        """Something the program says, as opposed to what the agents say."""
        self.line(text, "dim")

    def error(self, text: str) -> None:
        """One ``error:`` line, however many lines the message had (a server's text may have several)."""
        self.err.print(Text(f"error: {one_line(text)}", style="bold red"), soft_wrap=True)  # the terminal wraps it

    def rule(self, title: str) -> None:
        if self.fancy:
            self.out.rule(Text(title, style="bold"), align="left")
        else:
            self.out.print(f"{self.marks.rule * 2} {title} {self.marks.rule * 2}")

    def status(self, message: str) -> Status:
        return self.out.status(Text(message, style="dim"), spinner="dots")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def shorten(text: str, limit: int = 120, more: str = "...") -> str:
    """One line of at most ``limit`` characters: tool arguments and results are shown, not read."""
    flat = one_line(text)
    return flat if len(flat) <= limit else flat[: limit - len(more)] + more


def call_text(name: str, arguments: Any, limit: int = 120, more: str = "...") -> str:
    """``get_weather(city="Paris")``: how a tool call reads at a glance."""
    if isinstance(arguments, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    elif arguments in (None, ""):
        inner = ""
    else:
        inner = str(arguments)
    return shorten(f"{name}({inner})", limit, more)


class Renderer:
    """Turns a run's events into terminal lines as they arrive.

    Replies stream under the speaking agent's name; anything a delegate does is indented one step
    per handoff, so who is speaking is always visible. Between outputs a spinner (terminal only)
    shows that the model or a tool is working. With ``markdown`` (a terminal), the top agent's
    reply is rendered as markdown while it streams, redrawn as it grows; a pipe gets the text as
    the model wrote it, which is markdown's own readable form.
    """

    def __init__(self, output: Output, *, markdown: bool = False, replies: bool = True) -> None:
        self.output = output
        self.marks = output.marks
        self.markdown = markdown and output.fancy
        self.replies = replies  # False: the top agent's words go elsewhere (``timestep run``'s stdout)
        self._live: Live | None = None
        self._written = ""
        self._line_open = False
        self._speaker: tuple[str, int] | None = None
        self._streamed: set[tuple[str, int]] = set()
        self._handoff_calls: set[str] = set()
        self.announced: set[str] = set()  # the tool call ids whose pause was shown as it happened
        self._deferred: Event | None = None
        self._status: Status | None = None

    # -- the spinner ------------------------------------------------------------------------------

    def wait(self, message: str = "thinking…") -> None:
        """Show a spinner until the next output (terminal only, never mid-line)."""
        if not self.output.fancy or self._line_open:
            return
        if self._status is None:
            self._status = self.output.status(message)
            self._status.start()
        else:
            self._status.update(Text(message, style="dim"))

    def stop_waiting(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        """End of a turn (finished, failed or cancelled): no spinner, no half-written line."""
        self.stop_waiting()
        self._flush_deferred()
        self._end_line()
        self._speaker = None
        self._streamed.clear()

    # -- events -----------------------------------------------------------------------------------

    def event(self, event: Event) -> None:
        kind = event.get("type")
        if kind not in ("handoff_start", "guardrail_modified"):  # a transfer shows as a handoff even if modified
            self._flush_deferred()
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_content_delta(self, e: Event) -> None:
        self._text(e["agent"], int(e.get("depth", 0)), str(e.get("delta", "")))

    def _on_message(self, e: Event) -> None:
        message = e.get("message") or {}
        if message.get("role") != "assistant":
            return
        key = (e["agent"], int(e.get("depth", 0)))
        content = message.get("content")
        if content and key not in self._streamed:
            self._text(key[0], key[1], content)
        self._streamed.discard(key)
        self._end_line()
        if message.get("tool_calls"):
            self.wait("running tools…")
        elif key[1] > 0:
            self.wait()  # a delegate answered: its caller goes on

    def _on_tool_call(self, e: Event) -> None:
        name = str(e.get("name", ""))
        if name.startswith(TRANSFER_PREFIX) and not e.get("retry"):
            self._deferred = e  # shown as a handoff if one follows
            return
        self._show_call(e)

    def _show_call(self, e: Event) -> None:
        name = str(e.get("name", ""))
        again = " (again)" if e.get("retry") else ""
        text = f"{self.marks.call} {call_text(name, e.get('arguments'), more=self.marks.more)}{again}"
        self._line(int(e.get("depth", 0)) + 1, text, "yellow")
        self.wait(f"running {name}…")

    def _on_tool_result(self, e: Event) -> None:
        if e.get("tool_call_id") in self._handoff_calls:
            return
        self._line(
            int(e.get("depth", 0)) + 2,
            f"{self.marks.result} {shorten(str(e.get('result', '')), more=self.marks.more)}",
            "cyan",
        )
        self.wait()

    def _on_tool_error(self, e: Event) -> None:
        if e.get("declined"):
            return  # the approval line already said so
        self._line(
            int(e.get("depth", 0)) + 2,
            f"{self.marks.error} {shorten(str(e.get('error', '')), 200, self.marks.more)}",
            "red",
        )
        self.wait()

    def _on_guardrail_blocked(self, e: Event) -> None:
        what = "call" if e.get("stage") == "input" else "result"
        text = f"{self.marks.blocked} {what} blocked by guardrail {e.get('guardrail')}: {e.get('reason')}"
        self._line(int(e.get("depth", 0)) + 2, text, "bold red")
        self.wait()

    def _on_guardrail(self, e: Event) -> None:
        """A message or answer guardrail acted (a block, a redaction, a retry)."""
        what = "message" if e.get("stage") == "message" else "answer"
        action = {"block": "blocked", "replace": "rewritten", "retry": "sent back for another try"}.get(
            str(e.get("action")), str(e.get("action"))
        )
        reason = f": {e.get('reason')}" if e.get("reason") else ""
        style = "bold red" if e.get("action") == "block" else "yellow"
        self._end_line()
        self._line(
            int(e.get("depth", 0)) + 2,
            f"{self.marks.blocked} {what} {action} by guardrail {e.get('guardrail')}{reason}",
            style,
        )

    def _on_interrupt(self, e: Event) -> None:
        call = call_text(str(e.get("name", "")), e.get("arguments"), more=self.marks.more)
        text = f"{self.marks.pause} {call} waits for approval"
        self._line(int(e.get("depth", 0)) + 2, text, "magenta")
        self.announced.add(str(e.get("tool_call_id")))

    def _on_approval(self, e: Event) -> None:
        depth = int(e.get("depth", 0)) + 2
        if e.get("approved"):
            edited = " with edited arguments" if e.get("edited_arguments") else ""
            self._line(depth, f"{self.marks.approved} approved{edited}", "green")
        else:
            reason = f": {e['message']}" if e.get("message") else ""
            self._line(depth, f"{self.marks.declined} declined{reason}", "red")
        self.wait()

    def _on_handoff_start(self, e: Event) -> None:
        if e.get("tool_call_id"):
            self._handoff_calls.add(str(e["tool_call_id"]))
        self._deferred = None
        resumed = " (resuming)" if e.get("resumed") else ""
        message = f": {shorten(str(e.get('message', '')), 100, self.marks.more)}" if e.get("message") else ""
        text = f"{self.marks.handoff} {e.get('agent')} hands over to {e.get('target')}{resumed}{message}"
        self._line(int(e.get("depth", 0)) + 1, text, "magenta")
        self.wait()

    def _on_handoff_end(self, e: Event) -> None:
        status = e.get("status")
        outcome = "" if status == "completed" else f" ({status})"
        self._line(int(e.get("depth", 0)) + 1, f"{self.marks.back} back to {e.get('agent')}{outcome}", "magenta")
        self.wait()

    def _on_run_end(self, e: Event) -> None:
        if int(e.get("depth", 0)) == 0:
            self.close()

    # -- layout -----------------------------------------------------------------------------------

    def _text(self, agent: str, depth: int, text: str) -> None:
        if depth == 0 and not self.replies:
            return
        self.stop_waiting()
        key = (agent, depth)
        self._streamed.add(key)
        indent = "  " * depth
        if self.markdown and depth == 0:
            self._markdown(key, text)
            return
        if not self._line_open or self._speaker != key:
            self._end_line()
            style = "bold cyan" if depth == 0 else "bold magenta"
            self.output.out.print(Text.assemble(indent, (f"{agent}:", style), " "), end="")
            self._speaker, self._line_open = key, True
        if depth:
            text = text.replace("\n", "\n" + indent)
        self.output.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def _line(self, depth: int, text: str, style: str) -> None:
        self.stop_waiting()
        self._end_line()
        self.output.line("  " * depth + text, style, clip=True)

    def _markdown(self, key: tuple[str, int], text: str) -> None:
        if self._live is None or self._speaker != key:
            self._end_line()
            self.output.out.print(Text(f"{key[0]}:", style="bold cyan"))
            self._written = ""
            self._live = Live(console=self.output.out, refresh_per_second=8, vertical_overflow="visible")
            self._live.start()
            self._speaker, self._line_open = key, True
        self._written += text
        self._live.update(Markdown(self._written))

    def _end_line(self) -> None:
        if self._live is not None:
            self._live.update(Markdown(self._written), refresh=True)
            self._live.stop()
            self._live = None
            self._line_open = False
            self._speaker = None
            return
        if self._line_open:
            self.output.out.print()
            self._line_open = False
            self._speaker = None

    def _flush_deferred(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._show_call(deferred)


def show_interruption(output: Output, interruption: Interruption) -> None:
    """What a person needs in order to decide: the exact call, who wants it, and the guardrail's question."""
    call = call_text(interruption.tool_name, interruption.args, 200, output.marks.more)
    if interruption.kind == "unknown_outcome":
        head = f"{output.marks.pause} {call} was interrupted and may or may not have run ({interruption.agent})"
    else:
        head = f"{output.marks.pause} approval needed: {call} ({interruption.agent})"
    output.line("    " + head, "bold magenta")
    if interruption.prompt:
        output.line("       " + interruption.prompt, "magenta")


# -- stored conversations ----------------------------------------------------------------------------


def conversation_table(
    output: Output,
    conversations: Iterable[tuple[ConversationInfo, str]],
    runs: dict[tuple[str, str], str] | None = None,
) -> None:
    """``timestep sessions list``: a table on a terminal, aligned columns in a pipe; each with its first prompt,
    and a RUN column with the newest durable run's state when any conversation has one."""
    rows: list[tuple[str, ...]] = [
        (
            c.agent_name,
            c.conversation_id,
            str(c.message_count),
            _when(c.updated_at),
            *([runs.get((c.agent_name, c.conversation_id), "")] if runs else []),
            shorten(first, 60, output.marks.more),
        )
        for c, first in conversations
    ]
    header = ("AGENT", "CONVERSATION", "MESSAGES", "LAST UPDATE", *(["RUN"] if runs else []), "FIRST PROMPT")
    if output.fancy:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for n, title in enumerate(header):
            table.add_column(title, justify="right" if n == 2 else "left", no_wrap=True, overflow="ellipsis")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # names are data, never markup
        output.out.print(table)
        return
    widths = [max(len(r[n]) for r in [header, *rows]) for n in range(len(header))]
    for row in [header, *rows]:
        output.out.print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def print_transcript(output: Output, agent_name: str, conversation_id: str, items: list[dict[str, Any]]) -> None:
    """A stored conversation as a person reads it: messages, tool calls and the approval journal.

    ``started`` records (the crash-safety journal) are left out: they say nothing a reader needs.
    """
    marks = output.marks
    messages = sum(1 for i in items if "role" in i)
    output.rule(f"{agent_name}{marks.sep}{conversation_id}{marks.sep}{messages} messages")
    names: dict[str, str] = {}
    for item in items:
        role = item.get("role")
        content = item.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False) if content else ""
        if role == "system":
            output.line(f"system: {text}", "dim")
        elif role == "user":
            output.line(Text.assemble(("you: ", "bold green"), text))
        elif role == "assistant":
            if text:
                output.line(Text.assemble((f"{agent_name}: ", "bold cyan"), text))
            for call in item.get("tool_calls") or ():
                fn = call.get("function") or {}
                names[call.get("id", "")] = fn.get("name", "")
                output.line(
                    f"  {marks.call} {call_text(fn.get('name', ''), _decoded(fn.get('arguments')), 200, marks.more)}",
                    "yellow",
                )
        elif role == "tool":
            name = names.get(item.get("tool_call_id", ""), "tool")
            output.line(f"    {marks.result} {name}: {shorten(text, 200, marks.more)}", "cyan")
        elif item.get("journal") == "interrupt":
            call = call_text(str(item.get("tool")), item.get("args"), 200, marks.more)
            output.line(f"    {marks.pause} approval asked for {call}: {item.get('prompt') or ''}", "magenta")
        elif item.get("journal") == "decision":
            if item.get("approve"):
                edited = " with edited arguments" if item.get("args") else ""
                output.line(f"    {marks.approved} approved{edited}", "green")
            else:
                reason = f": {item['message']}" if item.get("message") else ""
                output.line(f"    {marks.declined} declined{reason}", "red")


def usage_lines(usage: dict[str, Any]) -> list[str]:
    """A run's or a conversation's usage (``timestep.usage`` totals), per agent when there are several."""

    def counts(u: dict[str, Any]) -> str:
        calls = u.get("model_calls", 0)
        return (
            f"{calls} model call{'s' if calls != 1 else ''}, {u.get('prompt_tokens', 0)} tokens in, "
            f"{u.get('completion_tokens', 0)} out, {u.get('total_tokens', 0)} in all"
        )

    cost = f", cost {usage['cost']:.6g}" if "cost" in usage else ""
    lines = [f"usage: {counts(usage)}{cost}"]
    by_agent = usage.get("by_agent") or {}
    if len(by_agent) > 1:
        lines += [f"  {agent}: {counts(u)}" for agent, u in by_agent.items()]
    by_model = usage.get("by_model") or {}
    if len(by_model) > 1:
        lines += [f"  model {model}: {counts(u)}" for model, u in by_model.items()]
    return lines


def _decoded(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments
