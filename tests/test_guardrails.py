"""Guardrails around tool calls: proceed, block, rewrite, chain, and fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
from timestep.testing import Reply, TestServer, ToolCall

ASK = [{"role": "user", "content": "What's the weather?"}]
calls: list[dict[str, Any]] = []


async def get_weather(args: dict) -> dict:  # type: ignore[type-arg]
    calls.append(dict(args))
    return {"result": f"Sunny in {args.get('city', 'unknown')}"}


def setup_function() -> None:
    calls.clear()


def agent_with(*guardrails: Any, tools: list[Any] | None = None) -> Agent:
    return Agent(name="Guarded", model="m", tools=tools or [get_weather], guardrails=list(guardrails))


async def run(server: TestServer, client: ModelClient, store: Path, agent: Agent, args: dict[str, Any]) -> Any:
    server.script(Reply.tool_calls(ToolCall("get_weather", args, id="call_1")), Reply.text("Done."))
    session = FileSession(agent.name, "conv", agent.instructions, store)
    events = [e async for e in run_agent(agent, ASK, session, result_processor=None, client=client)]
    tool_message = next(m for m in server.requests[1].messages if m["role"] == "tool")
    return events, tool_message["content"]


async def test_seed_city_approval_guardrail_proceeds_for_other_cities(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def my_input_guardrail(tool_name: str, args: dict) -> GuardrailResult:  # type: ignore[type-arg]
        if args.get("city") == "Oslo":
            raise GuardrailInterrupt("Need approval", tool_name, args)
        return GuardrailResult.proceed()

    events, content = await run(server, client, store, agent_with(InputGuardrail(my_input_guardrail)), {"city": "Lima"})
    assert calls == [{"city": "Lima"}]
    assert json.loads(content) == {"result": "Sunny in Lima"}
    assert events[-1]["status"] == "completed"


async def test_seed_output_safety_guardrail_withholds_a_secret(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def leaky(args: dict) -> dict:  # type: ignore[type-arg]
        return {"result": "the SECRET code is 1234"}

    async def my_output_guardrail(tool_name: str, args: dict, result: dict) -> GuardrailResult:  # type: ignore[type-arg]
        if "secret" in str(result).lower():
            return GuardrailResult.block("result contains a secret")
        return GuardrailResult.proceed()

    agent = Agent(name="Guarded", model="m", tools=[leaky], guardrails=[OutputGuardrail(my_output_guardrail)])
    server.script(Reply.tool_calls(ToolCall("leaky", {}, id="call_1")), Reply.text("I can't share that."))
    session = FileSession(agent.name, "conv", None, store)
    events = [e async for e in run_agent(agent, ASK, session, result_processor=None, client=client)]
    blocked = next(e for e in events if e["type"] == "guardrail_blocked")
    assert blocked["stage"] == "output" and blocked["reason"] == "result contains a secret"
    assert blocked["guardrail"] == "my_output_guardrail"
    sent = next(m for m in server.requests[1].messages if m["role"] == "tool")["content"]
    assert "1234" not in sent and "result contains a secret" in sent
    assert "1234" not in session.path.read_text()
    assert events[-1]["final_output"] == "I can't share that."


async def test_input_block_means_the_tool_never_runs(server: TestServer, client: ModelClient, store: Path) -> None:
    events, content = await run(
        server, client, store, agent_with(InputGuardrail(lambda n, a: GuardrailResult.block("no weather today"))), {}
    )
    assert calls == []
    assert "no weather today" in content
    assert [e["stage"] for e in events if e["type"] == "guardrail_blocked"] == ["input"]
    assert events[-1]["status"] == "completed"


async def test_modify_args_and_modify_result_chain_in_order(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    seen: list[dict[str, Any]] = []

    def uppercase_city(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        return GuardrailResult.modify_args({**args, "city": args["city"].upper()})

    async def record(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        seen.append(args)
        return GuardrailResult.modify_args({**args, "city": args["city"] + "!"})

    def add_note(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult:
        return GuardrailResult.modify_result({**result, "note": f"checked {args['city']}"})

    def no_op(tool_name: str, args: dict[str, Any], result: Any) -> None:
        seen.append(result)  # returning None means proceed

    guardrails = [
        InputGuardrail(uppercase_city),
        InputGuardrail(record),
        OutputGuardrail(add_note),
        OutputGuardrail(no_op),
    ]
    _, content = await run(server, client, store, agent_with(*guardrails), {"city": "lima"})
    assert seen[0] == {"city": "LIMA"}
    assert calls == [{"city": "LIMA!"}]
    assert seen[1] == {"result": "Sunny in LIMA!", "note": "checked LIMA!"}
    assert json.loads(content) == seen[1]


async def test_a_failing_guardrail_fails_closed_and_names_itself(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def broken_check(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        raise KeyError("policy table missing")

    events, content = await run(server, client, store, agent_with(InputGuardrail(broken_check)), {"city": "Oslo"})
    assert calls == []
    blocked = next(e for e in events if e["type"] == "guardrail_blocked")
    assert blocked["guardrail"] == "broken_check" and "policy table missing" in blocked["reason"]
    assert "broken_check" in content
    assert events[-1]["status"] == "completed"


async def test_a_failing_output_guardrail_withholds_the_result(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def broken(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult:
        raise RuntimeError("scanner offline")

    _, content = await run(server, client, store, agent_with(OutputGuardrail(broken)), {"city": "Oslo"})
    assert calls == [{"city": "Oslo"}]
    assert "Sunny" not in content and "scanner offline" in content


async def test_a_guardrail_returning_garbage_fails_closed(server: TestServer, client: ModelClient, store: Path) -> None:
    _, content = await run(server, client, store, agent_with(InputGuardrail(lambda n, a: "yes please")), {"city": "X"})
    assert calls == [] and "expected GuardrailResult" in content
