"""Asking a person at a terminal: the original Timestep's ``Approve? (y/n)``, one argument away.

``run_agent(..., approval_handler=terminal_approval_handler)`` asks each waiting tool call on the
terminal instead of pausing the run: ``y`` approves, ``n`` declines (then asks for an optional reason
to tell the model), ``n: reason`` declines with that reason at once, and ``e`` approves with edited
arguments typed as JSON. End of input declines, so a program without a person never runs a call
that needed one. The questions go to stderr, so a program's own output on stdout stays clean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

from .approvals import Interruption

_HELP = "answer y (approve), n (decline), n: <reason> (decline and say why) or e (edit the arguments)"


async def terminal_approval_handler(interruption: Interruption) -> Any:
    """Ask on the terminal; the questions run in a worker thread, so other calls' work goes on."""
    import asyncio

    return await asyncio.to_thread(ask_in_terminal, interruption)


def ask_in_terminal(
    interruption: Interruption, read: Callable[[str], str] | None = None, out: IO[str] | None = None
) -> Any:
    """The blocking question behind :func:`terminal_approval_handler`; returns a decision value."""
    out = out or sys.stderr
    read = read or _reader(out)
    args = json.dumps(interruption.args, ensure_ascii=False, sort_keys=True)
    out.write(f"\n{interruption.agent} wants to call {interruption.tool_name}({args})\n")
    if interruption.kind == "unknown_outcome":
        out.write("It was running when the process stopped, so it may already have happened.\n")
    prompt = interruption.prompt.rstrip() or "Approve?"
    question = prompt + " " if prompt.endswith(":") else f"{prompt} [y/n/e]: "
    try:
        while True:
            answer = read(question).strip()
            low = answer.lower()
            if low in ("y", "yes"):
                return True
            if low in ("n", "no"):
                reason = read("Reason to tell the model (Enter for none): ").strip()
                return reason or False
            if low.startswith(("n:", "no:")):
                return answer.split(":", 1)[1].strip() or False
            if low in ("e", "edit") and interruption.kind == "approval":
                edited = _read_args(read, out, interruption.args)
                if edited is not None:
                    return {"approve": True, "args": edited}
                continue
            out.write(_HELP + ("" if interruption.kind == "approval" else " (this call cannot be edited)") + "\n")
    except EOFError:
        out.write("\nno answer (end of input): declined\n")
        return {"approve": False, "message": "no one was there to approve it"}


def _read_args(read: Callable[[str], str], out: IO[str], current: dict[str, Any]) -> dict[str, Any] | None:
    text = read("New arguments as a JSON object (Enter keeps them): ").strip()
    if not text:
        return dict(current)
    try:
        value = json.loads(text)
    except ValueError as exc:
        out.write(f"not valid JSON ({exc}); the call was not approved yet\n")
        return None
    if not isinstance(value, dict):
        out.write("the arguments must be a JSON object; the call was not approved yet\n")
        return None
    return value


def _reader(out: IO[str]) -> Callable[[str], str]:
    def read(question: str) -> str:
        out.write(question)
        out.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read
