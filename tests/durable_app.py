"""Agents for the durable-run tests, loaded by ``timestep worker tests/durable_app.py:NAME`` in child processes.

``record_effect`` writes one line per execution to the file named by ``TIMESTEP_EFFECTS``, with
O_APPEND, outside the library: the test counts the lines to find a tool that ran twice.
"""

from __future__ import annotations

import os

from timestep import Agent, GuardrailInterrupt, GuardrailResult, InputGuardrail, ToolContext, tool


@tool
def record_effect(note: str, ctx: ToolContext) -> str:
    """Record a side effect outside the library."""
    line = f"{ctx.tool_call_id}\n".encode()
    fd = os.open(os.environ["TIMESTEP_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return f"recorded {note}"


def ask_first(tool_name: str, args: dict[str, object]) -> GuardrailResult:
    if "approve" in str(args.get("note", "")):
        raise GuardrailInterrupt(f"Record {args['note']}?", tool_name, dict(args))
    return GuardrailResult.proceed()


assistant = Agent(
    name="Recorder",
    model="test-model",
    instructions="Record what you are told.",
    tools=[record_effect],
    guardrails=[InputGuardrail(ask_first)],
)
