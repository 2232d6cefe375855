"""Every error Timestep raises, under one root.

    TimestepError
    ├── ConfigurationError        an Agent, tool or option that cannot work (found when it is built)
    ├── ModelError                the model endpoint failed or answered something unusable
    │   ├── ModelHTTPError        it answered with an HTTP error status (after retries)
    │   ├── ModelConnectionError  it could not be reached or timed out (after retries)
    │   └── ModelResponseError    it answered, but not with a valid Chat Completion
    ├── SessionError              a conversation store failed
    │   ├── SessionNameError      an agent name or conversation id that cannot name a conversation
    │   ├── SessionCorruptError   a stored record that cannot be read back
    │   ├── SessionUnavailableError  the store cannot be reached
    │   └── SessionBusyError      another run holds the conversation for longer than the run would wait
    ├── ApprovalError             an approval that does not match a pending call, or a run that cannot
    │                             go on because approvals are pending
    ├── MaxTurnsExceeded          a run that did not reach an answer within its turn budget
    ├── UsageLimitExceeded        a run that reached one of its usage limits (calls, tokens, cost)
    ├── OutputValidationError     final answers that did not match the agent's output_type, retries included
    └── MCPServerError            an MCP server that would not start, died, hung or answered nonsense

`GuardrailInterrupt` is deliberately *not* here: it is a control-flow signal a guardrail raises to
ask a person, not an error (see `timestep.guardrails`).
"""

from __future__ import annotations


class TimestepError(Exception):
    """Root of every error Timestep raises on purpose."""


class ConfigurationError(TimestepError):
    """An agent, tool, or option that cannot work; raised when it is built, not mid-run."""


class ModelError(TimestepError):
    """The model endpoint failed, or answered with something that is not a usable completion."""


class ModelHTTPError(ModelError):
    """The endpoint answered with an HTTP error status (after any retries)."""

    def __init__(self, status_code: int, message: str, *, url: str = "", body: str = "") -> None:
        self.status_code = status_code
        self.url = url
        self.body = body
        where = f" from {url}" if url else ""
        super().__init__(f"HTTP {status_code}{where}: {message}")


class ModelConnectionError(ModelError):
    """The endpoint could not be reached, or did not answer in time (after any retries)."""


class ModelResponseError(ModelError):
    """The endpoint answered, but not with a valid Chat Completion (bad JSON, a cut stream...)."""


class SessionError(TimestepError):
    """A conversation store failed."""


class SessionNameError(SessionError, ValueError):
    """An agent name or conversation id that cannot safely name a stored conversation."""


class SessionCorruptError(SessionError):
    """A stored record that cannot be read back; says where, so a person can look."""

    def __init__(self, message: str, *, location: str = "", line: int | None = None) -> None:
        self.location = location
        self.line = line
        super().__init__(message)


class SessionUnavailableError(SessionError):
    """The store cannot be reached (a database that is down, a folder that cannot be written)."""


class SessionBusyError(SessionError):
    """Another run (in this or another process) kept the conversation busy past the lock timeout."""


class ApprovalError(TimestepError, ValueError):
    """An approval that matches no pending call, or a new message sent while approvals are pending."""


class MaxTurnsExceeded(TimestepError):
    """The run used its whole turn budget without reaching a final answer."""


class UsageLimitExceeded(TimestepError):
    """The run reached one of ``RunConfig.limits``; everything before it is stored, so a run with a
    higher limit continues where this one stopped."""

    def __init__(self, limit: str, allowed: float, used: float) -> None:
        self.limit = limit
        self.allowed = allowed
        self.used = used
        super().__init__(
            f"usage limit reached: {limit} at {used}, over the limit of {allowed} "
            "(run again with a higher RunConfig.limits to continue)"
        )


class MCPServerError(TimestepError):
    """An MCP server failed: it would not start, died mid-call, did not answer in time, or answered
    something that is not MCP. A tool call it breaks becomes a tool error the model reads."""

    def __init__(self, server: str, message: str, *, tool: str | None = None) -> None:
        super().__init__(f"MCP server {server!r}: {message}")
        self.server = server
        self.tool = tool


class OutputValidationError(TimestepError):
    """The model's final answers did not match the agent's ``output_type``, retries included."""
