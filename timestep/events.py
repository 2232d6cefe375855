"""The events a run yields, declared once.

Every event is a plain dict with a ``type`` key, an ``agent`` (the agent that produced it) and a
``depth`` (0 for the agent you ran, 1 for its delegate, ...). Declaring them as ``TypedDict``\\ s with
a ``Literal`` ``type`` lets a type checker narrow ``event["type"] == "tool_call"`` to the fields a
``tool_call`` has, and lets the README's event table be checked against this module.

The original Timestep's field names are kept beside today's, with the same meaning, so a program
written for either reads the same stream: ``content`` on ``content_delta`` and ``message`` events,
``tool`` and ``args`` on ``tool_call``, ``tool_result`` and ``tool_error``.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Message = dict[str, Any]


class _Event(TypedDict):
    agent: str
    depth: int


class _ToolEvent(_Event):
    tool_call_id: str
    name: str
    arguments: Any
    tool: str
    args: Any


class RunStart(_Event):
    """An agent starts (or resumes) its part of the run."""

    type: Literal["run_start"]
    conversation_id: str


class ContentDelta(_Event):
    """A piece of the reply, with ``stream=True``. ``content`` is the same text as ``delta``."""

    type: Literal["content_delta"]
    delta: str
    content: str


class MessageStored(_Event):
    """A message was stored in the session (user, assistant or tool); ``content`` is its text."""

    type: Literal["message"]
    message: Message
    content: Any


class ToolCallStarted(_ToolEvent):
    """A tool call is about to be checked and run (``retry`` when it runs again after a crash)."""

    type: Literal["tool_call"]
    retry: NotRequired[bool]


class ToolResult(_ToolEvent):
    """A tool returned; ``result`` is the text the model reads."""

    type: Literal["tool_result"]
    result: str


class ToolError(_ToolEvent):
    """Bad arguments, an unknown tool, the tool raised, or a person declined (``declined``)."""

    type: Literal["tool_error"]
    error: str
    declined: NotRequired[bool]


class GuardrailBlocked(_ToolEvent):
    """A guardrail blocked the call (``stage="input"``) or withheld its result (``"output"``)."""

    type: Literal["guardrail_blocked"]
    stage: Literal["input", "output"]
    guardrail: str
    reason: str


class GuardrailModified(_ToolEvent):
    """A guardrail changed the call's arguments (``stage="input"``) or its result (``"output"``)."""

    type: Literal["guardrail_modified"]
    stage: Literal["input", "output"]
    guardrail: str


class InterruptRaised(_ToolEvent):
    """A call waits for a person: an approval, or a call whose outcome a crash left unknown."""

    type: Literal["interrupt"]
    prompt: str
    kind: Literal["approval", "unknown_outcome", "message"]


class ApprovalRecorded(_ToolEvent):
    """A person's decision was recorded."""

    type: Literal["approval"]
    approved: bool
    message: str | None
    edited_arguments: dict[str, Any] | None


class ConversationGuardrail(_Event):
    """A message or answer guardrail acted: ``block``, ``replace`` (a redaction) or ``retry``.

    For an answer streamed with ``stream=True``, ``released`` is how many characters of it the
    person had been shown when the guardrail acted: after a block, nothing more is shown.
    """

    type: Literal["guardrail"]
    stage: Literal["message", "answer"]
    guardrail: str
    action: Literal["block", "replace", "retry"]
    reason: str | None
    released: NotRequired[int]


class HandoffStart(_Event):
    """The agent hands over to ``target`` (``resumed`` when the delegate already had the message)."""

    type: Literal["handoff_start"]
    tool_call_id: str
    target: str
    message: str
    resumed: bool


class HandoffEnd(_Event):
    """The delegate finished or paused."""

    type: Literal["handoff_end"]
    tool_call_id: str
    target: str
    status: str
    output: str | None


class RunError(_Event):
    """The run could not go on (HTTP error after retries, bad response, max turns...)."""

    type: Literal["error"]
    error: str
    error_type: str


class RunEnd(_Event):
    """An agent's part of the run ended; ``usage`` counts its own model calls, and the top level's
    ``run_usage`` the whole run's (delegates included), per model and per agent."""

    type: Literal["run_end"]
    status: Literal["completed", "interrupted", "blocked", "error"]
    final_output: str | None
    usage: dict[str, int]
    interruptions: NotRequired[list[dict[str, Any]]]
    run_usage: NotRequired[dict[str, Any]]
    output: NotRequired[Any]


Event = (
    RunStart
    | ContentDelta
    | MessageStored
    | ToolCallStarted
    | ToolResult
    | ToolError
    | GuardrailBlocked
    | GuardrailModified
    | InterruptRaised
    | ApprovalRecorded
    | ConversationGuardrail
    | HandoffStart
    | HandoffEnd
    | RunError
    | RunEnd
)

EVENT_TYPES: tuple[type[Any], ...] = (
    RunStart,
    ContentDelta,
    MessageStored,
    ToolCallStarted,
    ToolResult,
    ToolError,
    GuardrailBlocked,
    GuardrailModified,
    InterruptRaised,
    ApprovalRecorded,
    ConversationGuardrail,
    HandoffStart,
    HandoffEnd,
    RunError,
    RunEnd,
)
