"""Reading what the person types: messages between turns, answers while a run waits for an approval.

On a terminal, prompt_toolkit gives line editing, multi-line messages (Alt-Enter or Esc then
Enter starts a new line; a paste stays one message, thanks to bracketed paste) and a prompt
history kept across chats in the user's data folder (:func:`history_path`). Anywhere else, lines
are read as they come and echoed, so a piped session's output reads like the conversation it was.

In both, a line of three double quotes opens a block that the next such line closes: the block is
one message. That is the one way to send several lines through a pipe, where every other line is
a message of its own (and approval answers are lines too).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from rich.text import Text

from .render import Output, is_tty

BLOCK = '"""'
MORE = "... "
LEAVING = frozenset({"/exit", "/quit", "/q"})


def data_dir() -> Path:
    """Where the command line keeps what is the user's own (the prompt history), per platform habit."""
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "timestep"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "timestep"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "timestep"
    return Path.home() / ".local" / "share" / "timestep"


def history_path() -> Path:
    return data_dir() / "chat-history"


class TurnCancelled(Exception):
    """The person stopped the turn while a question was on screen."""


class Terminal:
    """The person's side of the conversation; see the module docstring for what each mode does."""

    def __init__(self, output: Output, runner: asyncio.Runner | None = None) -> None:
        self.output = output
        self.runner = runner
        self.interactive = is_tty(sys.stdin)
        self._messages: Any = None  # prompt_toolkit sessions: one for messages (with history) ...
        self._answers: Any = None  # ... and one for approval answers, which are not worth recalling
        self._readline = False
        if self.interactive and output.fancy and runner is not None:
            self._messages, self._answers = _prompt_sessions()
        elif self.interactive:
            try:
                import readline  # noqa: F401  (line editing for input())
            except ImportError:
                pass
            else:
                self._readline = True

    @property
    def remembers(self) -> bool:
        """Whether what is typed goes into the prompt history (Up brings it back, in a later chat too)."""
        return self._messages is not None

    def read_message(self, prompt: str) -> str | None:
        """The next message, block or not; None at end of input. Ctrl-C raises KeyboardInterrupt."""
        line = self.read(prompt)
        if line is None or line.strip() != BLOCK:
            return line
        lines: list[str] = []
        while (more := self.read(MORE)) is not None and more.strip() != BLOCK:
            lines.append(more)
        return "\n".join(lines)

    def read(self, prompt: str) -> str | None:
        """One input (a line, or a paste or Alt-Enter text on a terminal); None at end of input."""
        if self._messages is not None and self.runner is not None:
            try:
                text: str = self.runner.run(self._messages.prompt_async(prompt))
            except EOFError:
                return None
            return text
        if not self.interactive:
            return self._read_piped(prompt)
        try:
            return input(self._styled(prompt))
        except EOFError:
            self.output.out.print()
            return None

    async def ask(self, prompt: str) -> str | None:
        """An answer while a run is waiting; None at end of input. Ctrl-C raises TurnCancelled."""
        if self._answers is not None:
            try:
                answer: str = await self._answers.prompt_async(prompt)
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


def _prompt_sessions() -> tuple[Any, Any]:
    """prompt_toolkit sessions: messages with the file history and Alt-Enter for a new line."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory

    class _ChatHistory(FileHistory):
        """The file history, minus the ways out: Up in the next chat should not offer /exit."""

        def store_string(self, string: str) -> None:
            if string.strip().lower() not in LEAVING:
                super().store_string(string)

    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    history: History
    try:
        path = history_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        history = _ChatHistory(str(path))
    except OSError:  # a read-only home: history for this chat only
        history = InMemoryHistory()
    messages: Any = PromptSession(history=history, key_bindings=keys, prompt_continuation=MORE)
    answers: Any = PromptSession()
    return messages, answers
