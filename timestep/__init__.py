"""Timestep: agents with tools, guardrails, durable approvals, handoffs and sessions that keep everything."""

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
    SessionBusyError,
    SessionCorruptError,
    SessionError,
    SessionNameError,
    SessionUnavailableError,
    TimestepError,
)
from .guardrails import GuardrailInterrupt, GuardrailResult, InputGuardrail, OutputGuardrail
from .model import ModelClient
from .result import default_result_processor
from .run import RunConfig, RunHandle, pending_interruptions, run_agent
from .sessions import ConversationInfo, FileSession, Session
from .tools import Tool, ToolContext, tool

__all__ = [
    "Agent",
    "ApprovalError",
    "ConfigurationError",
    "ConversationInfo",
    "FileSession",
    "GuardrailInterrupt",
    "GuardrailResult",
    "InputGuardrail",
    "Interruption",
    "MaxTurnsExceeded",
    "ModelClient",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelResponseError",
    "OutputGuardrail",
    "RunConfig",
    "RunHandle",
    "Session",
    "SessionBusyError",
    "SessionCorruptError",
    "SessionError",
    "SessionNameError",
    "SessionUnavailableError",
    "TimestepError",
    "Tool",
    "ToolContext",
    "default_result_processor",
    "pending_interruptions",
    "run_agent",
    "tool",
]
