"""Guardrails: checks that run around every tool call.

An :class:`InputGuardrail` sees ``(tool_name, args)`` before the tool runs; an
:class:`OutputGuardrail` sees ``(tool_name, args, result)`` after. Each returns a
:class:`GuardrailResult` that lets the call proceed, blocks it, or rewrites the arguments or result;
the next guardrail sees what the previous one left. An input guardrail may instead raise
:class:`GuardrailInterrupt` to ask a person: the run then asks the caller's approval handler, or
pauses durably until :func:`timestep.run_agent` is called again with ``approvals=``.

A guardrail that raises anything else fails closed: the call is treated as blocked, because a
broken check must never wave a tool through.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["proceed", "block", "modify_args", "modify_result", "replace", "retry"]


@dataclass(frozen=True)
class GuardrailResult:
    """What a guardrail decided. Build one with the class methods rather than by hand."""

    action: Action = "proceed"
    reason: str | None = None
    args: dict[str, Any] | None = None
    result: Any = None

    @classmethod
    def proceed(cls) -> GuardrailResult:
        return cls("proceed")

    @classmethod
    def block(cls, reason: str = "blocked by a guardrail") -> GuardrailResult:
        return cls("block", reason=reason)

    @classmethod
    def modify_args(cls, new_args: dict[str, Any]) -> GuardrailResult:
        return cls("modify_args", args=dict(new_args))

    @classmethod
    def modify_result(cls, new_result: Any) -> GuardrailResult:
        return cls("modify_result", result=new_result)

    @classmethod
    def replace(cls, new_text: str) -> GuardrailResult:
        """For a message or an answer guardrail: go on with this text instead (a redaction, say)."""
        return cls("replace", result=new_text)

    @classmethod
    def retry(cls, reason: str) -> GuardrailResult:
        """For an answer guardrail: ask the model for another answer, telling it why."""
        return cls("retry", reason=reason)


class GuardrailInterrupt(Exception):
    """Raised by an input guardrail to ask a person before the tool runs.

    A control-flow signal, not an error: the run asks the approval handler, or pauses and records
    the pending call in the session so it can be approved later, in this process or another.
    """

    def __init__(self, prompt: str, tool_name: str = "", args: dict[str, Any] | None = None) -> None:
        super().__init__(prompt)
        self.prompt = prompt
        self.tool_name = tool_name
        # Not ``self.args``: BaseException owns that name (the constructor's positional arguments).
        self.tool_args: dict[str, Any] = dict(args) if args is not None else {}


@dataclass(frozen=True)
class InputGuardrail:
    """Runs ``handler(tool_name, args)`` before a tool; the handler may be sync or async."""

    handler: Callable[..., Any]
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self.handler, "__name__", type(self.handler).__name__))

    async def check(self, tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        return _coerce(await _call(self.handler, tool_name, args), self.name)


@dataclass(frozen=True)
class OutputGuardrail:
    """Runs ``handler(tool_name, args, result)`` after a tool; the handler may be sync or async."""

    handler: Callable[..., Any]
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self.handler, "__name__", type(self.handler).__name__))

    async def check(self, tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult:
        return _coerce(await _call(self.handler, tool_name, args, result), self.name)


@dataclass(frozen=True)
class MessageGuardrail:
    """Runs ``handler(text)`` on each incoming user message, before any model call.

    It may proceed, ``block(reason)`` (the model never sees the message; the person is told
    ``reason``), ``replace(text)`` (a redaction: the model and the session get the new text), or
    raise :class:`GuardrailInterrupt` to pause for a person, durably, as a tool approval does.
    """

    handler: Callable[..., Any]
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self.handler, "__name__", type(self.handler).__name__))

    async def check(self, text: str) -> GuardrailResult:
        return _coerce(await _call(self.handler, text), self.name)


Checkpoint = Literal["sentence", "answer"] | int


@dataclass(frozen=True)
class AnswerGuardrail:
    """Runs ``handler(text)`` on the agent's answer: proceed, ``block``, ``replace`` or ``retry``.

    With ``stream=True`` the answer is held back until the guardrail has passed it: at each
    ``checkpoint`` (``"sentence"``: at sentence ends; an ``int``: every that many characters;
    ``"answer"``: only the whole answer) it sees the text so far, and only what it passed is
    released as ``content_delta`` events. A block part-way means the person never saw the rest.
    """

    handler: Callable[..., Any]
    name: str = field(default="")
    checkpoint: Checkpoint = "sentence"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self.handler, "__name__", type(self.handler).__name__))
        if not (
            self.checkpoint in ("sentence", "answer") or (isinstance(self.checkpoint, int) and self.checkpoint > 0)
        ):
            raise ValueError(
                f"checkpoint must be 'sentence', 'answer' or a positive number of characters, got {self.checkpoint!r}"
            )

    async def check(self, text: str) -> GuardrailResult:
        return _coerce(await _call(self.handler, text), self.name)


Guardrail = InputGuardrail | OutputGuardrail | MessageGuardrail | AnswerGuardrail


def labels(chain: Sequence[Guardrail]) -> list[str]:
    """Each guardrail's name in the journal and in events: its own, then ``name #2``, ``#3``... for namesakes.

    An answer is matched to the guardrail that asked by this label, so two guardrails that share a
    name (two made by one factory, two lambdas) each get their own answer.
    """
    seen: dict[str, int] = {}
    out = []
    for g in chain:
        seen[g.name] = seen.get(g.name, 0) + 1
        out.append(g.name if seen[g.name] == 1 else f"{g.name} #{seen[g.name]}")
    return out


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


def _coerce(value: Any, name: str) -> GuardrailResult:
    """``None`` means proceed (a handler that forgot to return is not a block); anything else is a bug."""
    if value is None:
        return GuardrailResult.proceed()
    if isinstance(value, GuardrailResult):
        return value
    raise TypeError(f"guardrail {name!r} returned {type(value).__name__}, expected GuardrailResult")
