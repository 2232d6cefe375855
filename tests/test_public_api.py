"""Pin the public names, so an accidental export or removal fails here first."""

import timestep

EXPECTED = [
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


def test_public_names() -> None:
    assert timestep.__all__ == EXPECTED
    for name in EXPECTED:
        assert getattr(timestep, name) is not None


def test_errors_share_one_root() -> None:
    errors = [getattr(timestep, n) for n in EXPECTED if n.endswith("Error") or n.endswith("Exceeded")]
    assert len(errors) == 15 and all(issubclass(e, timestep.TimestepError) for e in errors)
    assert not issubclass(timestep.GuardrailInterrupt, timestep.TimestepError)  # a signal, not an error
