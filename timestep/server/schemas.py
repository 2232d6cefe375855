"""The API's request and response bodies, declared once: FastAPI validates them and writes the OpenAPI document.

Messages, events and results keep Timestep's own shapes (``dict`` here): the API adds no second
wire form for what the library already declares in :mod:`timestep.events` and :mod:`timestep.result`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TEXT = 100_000


class _Body(BaseModel):
    """A request body: no field it does not declare, and no coercion (``"yes"`` or ``1`` is not a boolean)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorDetail(BaseModel):
    type: str = Field(description="What went wrong, e.g. ApprovalError, NotFound, ValidationError")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error: the status says the class of problem, ``error.type`` the exact one."""

    error: ErrorDetail


class ToolInfo(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any]


class OutputInfo(BaseModel):
    """An agent's typed final answer (``output_type``): its JSON schema, and whether the answer is
    wrapped as ``{"value": ...}`` (a type whose schema is not an object)."""

    name: str
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    wrapped: bool


class AgentInfo(BaseModel):
    name: str
    model: str
    tools: list[ToolInfo]
    handoffs: list[str]
    output: OutputInfo | None = Field(default=None, description="The typed final answer, if the agent has one")


class AgentList(BaseModel):
    agents: list[AgentInfo]


class NewConversation(_Body):
    conversation_id: str | None = Field(default=None, description="An id of your own; by default one is made")


class ConversationSummary(BaseModel):
    agent: str
    conversation_id: str
    message_count: int
    updated_at: datetime | None
    running: bool


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]


class Pending(BaseModel):
    """A call or a user message waiting for a person, with the schema edited arguments must fit.

    A paused user message (a message guardrail asked a person) has ``kind == "message"``,
    ``tool_name == "message"`` and ``args == {"content": text}``; it is decided as a call is, and
    approving it with ``args == {"content": edited}`` sends the edited text instead.
    """

    tool_call_id: str
    tool_name: str
    args: dict[str, Any]
    prompt: str
    agent: str
    kind: Literal["approval", "unknown_outcome", "message"]
    parameters: dict[str, Any] | None


class PendingList(BaseModel):
    pending: list[Pending]


class Conversation(BaseModel):
    agent: str
    conversation_id: str
    messages: list[dict[str, Any]] = Field(description="The stored messages, system message left out")
    pending: list[Pending]
    running: bool
    unfinished: bool = Field(
        description=(
            "A run stopped before its end (the server stopped mid-run) and nothing waits for a person: "
            "the next message resumes it first (an unfinished idempotent call runs again)"
        )
    )
    cursor: str = Field(description="An event id: follow /events after it (Last-Event-ID) to see what comes next")


class UserMessage(_Body):
    content: str = Field(min_length=1, max_length=MAX_TEXT)


class DecisionIn(_Body):
    tool_call_id: str = Field(min_length=1, max_length=200)
    approve: bool
    message: str | None = Field(default=None, max_length=MAX_TEXT, description="Why, when declining")
    args: dict[str, Any] | None = Field(default=None, description="Edited arguments, when approving")

    @model_validator(mode="after")
    def _edits_need_approval(self) -> DecisionIn:
        if self.args is not None and not self.approve:
            raise ValueError("edited arguments only go with an approval")
        return self

    def as_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"approve": self.approve}
        if self.message is not None:
            value["message"] = self.message
        if self.args is not None:
            value["args"] = self.args
        return value


class Decisions(_Body):
    decisions: list[DecisionIn] = Field(min_length=1, max_length=100)


class Started(BaseModel):
    """A run started in the background: follow it on ``/events`` after ``cursor``."""

    conversation_id: str
    status: Literal["running"]
    cursor: str


class RunResult(BaseModel):
    """What ``default_result_processor`` makes of the run's events."""

    status: Literal["completed", "interrupted", "blocked", "error"]
    final_output: Any = None
    messages: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    interruptions: list[dict[str, Any]]
    error: str | None
    usage: dict[str, Any]  # token counts, model and tool calls, and per model, per agent and cost breakdowns
    agent: str | None
