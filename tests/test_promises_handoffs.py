"""Promises of handoffs that a change to the code once broke unnoticed (issue 19): a resumed
handoff says so, inherited guardrails run outermost first, and the depth limit is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timestep import (
    Agent,
    FileSession,
    GuardrailResult,
    InputGuardrail,
    ModelClient,
    OutputGuardrail,
    RunConfig,
    run_agent,
)
from timestep.testing import TestServer

from .handoff_app import concierge
from .test_handoffs import effects as effects  # the fixture
from .test_handoffs import lookups, scripted_model

OSLO = [{"role": "user", "content": "What's the weather in Oslo?"}]


async def events_of(agent: Agent, messages: list[dict[str, Any]], conv: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [e async for e in run_agent(agent, messages, conv, result_processor=None, **kwargs)]


async def test_a_resumed_handoff_says_so_and_is_not_delivered_twice(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.responder = scripted_model
    conv = FileSession(concierge.name, "trip", concierge.instructions, store)
    first = await events_of(concierge, OSLO, conv, client=client)
    starts = [e for e in first if e["type"] == "handoff_start"]
    assert [(e["target"], e["resumed"]) for e in starts] == [("Forecaster", False)]
    call_id = next(e for e in first if e["type"] == "interrupt")["tool_call_id"]

    second = await events_of(concierge, [], conv, approvals={call_id: True}, client=client)
    starts = [e for e in second if e["type"] == "handoff_start"]
    assert [(e["target"], e["resumed"], e["tool_call_id"]) for e in starts] == [
        ("Forecaster", True, starts[0]["tool_call_id"])
    ]
    assert second[-1]["status"] == "completed" and lookups(effects) == [{"city": "Oslo"}]
    delegate = await FileSession("Forecaster", "trip~concierge", None, store).get_items()
    assert [m["content"] for m in delegate if m.get("role") == "user"] == ["What's the weather in Oslo?"]


async def test_inherited_guardrails_run_before_the_delegates_own(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    seen: list[str] = []

    def input_guardrail(name: str) -> InputGuardrail:
        def check(tool_name: str, args: dict[str, Any]) -> GuardrailResult | None:
            if tool_name != "lookup":
                return None
            seen.append(f"in:{name}")
            return GuardrailResult.modify_args({**args, "city": f"{args['city']}+{name}"})

        return InputGuardrail(check, name=name)

    def output_guardrail(name: str) -> OutputGuardrail:
        def check(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult | None:
            if tool_name != "lookup":
                return None
            seen.append(f"out:{name}")
            return GuardrailResult.modify_result(f"{result}+{name}")

        return OutputGuardrail(check, name=name)

    def lookup(city: str) -> str:
        return f"Rain in {city}"

    inner = Agent(
        name="Meteorologist",
        model="m",
        instructions="Meteorologist.",
        tools=[lookup],
        guardrails=[input_guardrail("inner"), output_guardrail("inner")],
    )
    middle = Agent(
        name="Forecaster",
        model="m",
        instructions="Forecaster.",
        handoffs=[inner],
        guardrails=[input_guardrail("middle"), output_guardrail("middle")],
    )
    outer = Agent(
        name="Front Desk",
        model="m",
        instructions="Front desk.",
        handoffs=[middle],
        guardrails=[input_guardrail("outer"), output_guardrail("outer")],
    )
    server.responder = scripted_model
    events = await events_of(
        outer, [{"role": "user", "content": "in Bergen"}], FileSession(outer.name, "g", None, store), client=client
    )
    result = next(e for e in events if e["type"] == "tool_result" and e["name"] == "lookup")
    assert result["arguments"] == {"city": "Bergen+outer+middle+inner"}
    assert result["result"] == "Rain in Bergen+outer+middle+inner+outer+middle+inner"
    assert seen == ["in:outer", "in:middle", "in:inner", "out:outer", "out:middle", "out:inner"]


async def test_the_handoff_depth_limit_allows_exactly_max_handoff_depth_levels(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    ping = Agent(name="Ping", model="m", instructions="Ping.")
    pong = Agent(name="Pong", model="m", instructions="Pong.", handoffs=[ping])
    ping.__init__(name="Ping", model="m", instructions="Ping.", handoffs=[pong])  # type: ignore[misc]
    server.responder = scripted_model
    for limit in (1, 2):
        events = await events_of(
            ping,
            [{"role": "user", "content": "loop"}],
            FileSession("Ping", f"cycle-{limit}", None, store),
            client=client,
            config=RunConfig(max_handoff_depth=limit),
        )
        assert sorted({e["depth"] for e in events if e["type"] == "run_start"}) == list(range(limit + 1))
        refused = [e for e in events if e["type"] == "tool_error"]
        assert [(e["depth"], f"max_handoff_depth={limit}" in e["error"]) for e in refused] == [(limit, True)]
        assert events[-1]["status"] == "completed"
