"""A small program the approval tests run in separate processes (to pause, crash and resume).

    python approval_app.py BASE_URL STORE CONVERSATION start|resume [APPROVALS_JSON]

It prints the run's result as one JSON line. Tools append one line per side effect to the file
named by EFFECTS, so the tests can count how often each really ran. KILL_AT=N:before|after makes
the process SIGKILL itself around its N-th session write, and KILL_IN=TOOL inside that tool right
after its side effect: crashes at chosen points, without touching the library.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from timestep import (
    Agent,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    ModelClient,
    ToolContext,
    run_agent,
    tool,
)


def effect(name: str, detail: Any) -> None:
    fd = os.open(os.environ["EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps([name, detail]) + "\n").encode())
    finally:
        os.close(fd)
    if os.environ.get("KILL_IN") == name:
        os.kill(os.getpid(), signal.SIGKILL)


async def charge(amount: int, ctx: ToolContext) -> str:
    """Charge the customer's card (not idempotent)."""
    effect("charge", {"amount": amount, "key": ctx.tool_call_id})
    return f"charged {amount}"


@tool(idempotent=True)
async def notify(message: str) -> str:
    """Send a notification (safe to repeat)."""
    effect("notify", message)
    return "notified"


async def get_weather(args: dict) -> dict:  # type: ignore[type-arg]
    effect("get_weather", args)
    return {"result": f"Sunny in {args.get('city', 'unknown')}"}


async def needs_approval(tool_name: str, args: dict) -> GuardrailResult:  # type: ignore[type-arg]
    if str(args.get("city", "")).lower() == "oslo":
        raise GuardrailInterrupt(prompt=f"Look up weather for {args['city']}?", tool_name=tool_name, args=args)
    return GuardrailResult.proceed()


agent = Agent(
    name="Shop Assistant",
    model="test-model",
    instructions="Help the customer.",
    tools=[charge, notify, get_weather],
    guardrails=[InputGuardrail(needs_approval)],
)


class CrashingSession(FileSession):
    """Kills its own process around the N-th write, to simulate a crash at that point."""

    writes = 0

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        spec = os.environ.get("KILL_AT", "")
        CrashingSession.writes += 1
        at, _, when = spec.partition(":")
        if at and int(at) == CrashingSession.writes and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        await super().add_items(items)
        if at and int(at) == CrashingSession.writes and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    base_url, store, conversation, mode = sys.argv[1:5]
    approvals = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    session = CrashingSession(agent.name, conversation, agent.instructions, store)
    client = ModelClient(base_url=base_url, api_key="sk-test", max_retries=0)
    question = [{"role": "user", "content": os.environ.get("QUESTION", "Charge 5 and tell me the weather")}]
    if mode == "start" or not any(i.get("role") == "user" for i in await session.get_items()):
        messages = question
    else:
        messages = []
    result = await run_agent(agent, messages, session, approvals=approvals, client=client)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
