"""Timestep: agents with tools, guardrails, durable approvals, handoffs and sessions that keep everything."""

from typing import TYPE_CHECKING, Any

from .agent import Agent
from .approvals import Interruption
from .exceptions import (
    ApprovalError,
    ConfigurationError,
    MaxTurnsExceeded,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelResponseError,
    OutputValidationError,
    SessionBusyError,
    SessionCorruptError,
    SessionError,
    SessionNameError,
    SessionUnavailableError,
    TimestepError,
    UsageLimitExceeded,
)
from .guardrails import (
    AnswerGuardrail,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    MessageGuardrail,
    OutputGuardrail,
)
from .model import ModelClient
from .result import default_result_processor
from .run import RunConfig, RunHandle, pending_interruptions, run_agent
from .sessions import ConversationInfo, FileSession, Session
from .terminal import terminal_approval_handler
from .tools import Tool, ToolContext, tool
from .usage import Price, UsageLimits

if TYPE_CHECKING:
    from .history import last_messages, token_budget
    from .sessions import PostgresSession, SQLiteSession, Store, open_store

# Loaded on first use, to keep ``import timestep`` light.
_LAZY = {
    "PostgresSession": ".sessions",
    "SQLiteSession": ".sessions",
    "Store": ".sessions",
    "open_store": ".sessions",
    "last_messages": ".history",
    "token_budget": ".history",
}

__all__ = [
    "Agent",
    "AnswerGuardrail",
    "ApprovalError",
    "ConfigurationError",
    "ConversationInfo",
    "FileSession",
    "GuardrailInterrupt",
    "GuardrailResult",
    "InputGuardrail",
    "Interruption",
    "MaxTurnsExceeded",
    "MessageGuardrail",
    "ModelClient",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelResponseError",
    "OutputGuardrail",
    "OutputValidationError",
    "PostgresSession",
    "Price",
    "RunConfig",
    "RunHandle",
    "SQLiteSession",
    "Session",
    "SessionBusyError",
    "SessionCorruptError",
    "SessionError",
    "SessionNameError",
    "SessionUnavailableError",
    "Store",
    "TimestepError",
    "Tool",
    "ToolContext",
    "UsageLimitExceeded",
    "UsageLimits",
    "default_result_processor",
    "last_messages",
    "open_store",
    "pending_interruptions",
    "run_agent",
    "terminal_approval_handler",
    "token_budget",
    "tool",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
