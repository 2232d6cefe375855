"""The handoff scenario from the README, as a program the tests resume in a separate process.

python handoff_app.py BASE_URL STORE CONVERSATION [APPROVALS_JSON]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from timestep import (
    Agent,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    ModelClient,
    OutputGuardrail,
    run_agent,
)


async def get_weather(args: dict) -> dict:  # type: ignore[type-arg]
    with open(os.environ["EFFECTS"], "a") as f:
        f.write(json.dumps(args) + "\n")
    return {"result": f"Sunny in {args.get('city', 'unknown')}"}


async def needs_approval(tool_name, args):  # type: ignore[no-untyped-def]
    if args.get("city", "").lower() == "oslo":
        raise GuardrailInterrupt(prompt=f"Look up weather for {args['city']}?", tool_name=tool_name, args=args)
    return GuardrailResult.proceed()


async def no_secrets(tool_name, args, result):  # type: ignore[no-untyped-def]
    if "secret" in str(result).lower():
        return GuardrailResult.block("result contains a secret")
    return GuardrailResult.proceed()


forecaster = Agent(
    name="Forecaster", model="gpt-4o", instructions="Answer weather questions with get_weather.", tools=[get_weather]
)
concierge = Agent(
    name="Concierge",
    model="gpt-4o",
    instructions="Delegate weather questions.",
    handoffs=[forecaster],
    guardrails=[InputGuardrail(needs_approval), OutputGuardrail(no_secrets)],
)


async def main() -> None:
    base_url, store, conversation = sys.argv[1:4]
    approvals = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    session = FileSession(concierge.name, conversation, concierge.instructions, store)
    client = ModelClient(base_url=base_url, api_key="sk-test")
    result = await run_agent(concierge, [], session, approvals=approvals, client=client)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
