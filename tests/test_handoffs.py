"""Handoffs: delegates with their own sessions, guardrails down the chain, pauses inside delegates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timestep import Agent, ConfigurationError, FileSession, ModelClient, RunConfig, run_agent
from timestep.handoffs import handoff_tool_name
from timestep.testing import Reply, TestServer, ToolCall

from .handoff_app import concierge, forecaster
from .test_run import valid_for_api

APP = Path(__file__).with_name("handoff_app.py")


def tools_of(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


def scripted_model(body: dict[str, Any]) -> Reply:
    """Each agent transfers or calls its first tool on a user message, and answers from a tool result."""
    last = body["messages"][-1]
    names = tools_of(body)
    if last["role"] == "tool":
        return Reply.text(f"[{body['messages'][0]['content'][:12]}] {last['content']}")
    transfer = next((n for n in names if n.startswith("transfer_to_")), None)
    if transfer:
        return Reply.tool_calls(ToolCall(transfer, {"message": last["content"]}))
    city = re.findall(r"in (\w+)", last["content"])
    return Reply.tool_calls(ToolCall(names[0], {"city": city[-1] if city else "nowhere"}))


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.jsonl"
    monkeypatch.setenv("EFFECTS", str(path))
    return path


def lookups(effects: Path) -> list[Any]:
    return [json.loads(x) for x in effects.read_text().splitlines()] if effects.exists() else []


def test_transfer_tool_names() -> None:
    assert handoff_tool_name("Weather Assistant") == "transfer_to_weather_assistant"
    assert handoff_tool_name("WeatherAssistant") == "transfer_to_weather_assistant"
    long_name = handoff_tool_name("A" * 30 + " very long agent name that goes on and on")
    assert len(long_name) <= 64 and re.fullmatch(r"[a-z0-9_-]+", long_name)
    spec = next(s for s in concierge.tool_specs if s["function"]["name"] == "transfer_to_forecaster")
    assert spec["function"]["parameters"]["required"] == ["message"]
    assert "Answer weather questions" in spec["function"]["description"]


def test_clashing_names_are_refused_when_the_agent_is_built() -> None:
    twin = Agent(name="forecaster", model="m")
    with pytest.raises(ConfigurationError, match="transfer_to_forecaster"):
        Agent(name="C", model="m", handoffs=[forecaster, twin])

    def transfer_to_forecaster() -> str:
        return "x"

    with pytest.raises(ConfigurationError, match="already uses"):
        Agent(name="C", model="m", tools=[transfer_to_forecaster], handoffs=[forecaster])
    with pytest.raises(ConfigurationError, match="ASCII letter"):
        Agent(name="C", model="m", handoffs=[Agent(name="天気", model="m")])


async def test_scenario_oslo_pauses_in_the_delegate_and_resumes_in_another_process(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.responder = scripted_model
    session = FileSession(concierge.name, "trip", concierge.instructions, store)
    events = [
        e
        async for e in run_agent(
            concierge,
            [{"role": "user", "content": "What's the weather in Oslo?"}],
            session,
            result_processor=None,
            client=client,
        )
    ]
    interrupt = next(e for e in events if e["type"] == "interrupt")
    assert interrupt["agent"] == "Forecaster" and interrupt["depth"] == 1 and interrupt["name"] == "get_weather"
    assert [e["type"] for e in events if e["type"].startswith("handoff")] == ["handoff_start", "handoff_end"]
    assert events[-1]["status"] == "interrupted" and events[-1]["agent"] == "Concierge"
    assert lookups(effects) == []

    argv = [
        sys.executable,
        str(APP),
        server.base_url,
        str(store),
        "trip",
        json.dumps({interrupt["tool_call_id"]: True}),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert lookups(effects) == [{"city": "Oslo"}]
    assert "Sunny in Oslo" in result["final_output"] and result["agent"] == "Concierge"
    assert [c["name"] for c in result["tool_calls"]] == ["transfer_to_forecaster", "get_weather"]

    delegate = FileSession("Forecaster", "trip~concierge", None, store)
    assert delegate.path.exists() and delegate.path.parent.parent == session.path.parent.parent
    items = await delegate.get_items()
    assert valid_for_api(items) and valid_for_api(await session.get_items())
    assert [i["role"] for i in items if "role" in i] == ["system", "user", "assistant", "tool", "assistant"]


async def test_scenario_lima_needs_no_approval_and_the_delegate_remembers(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.responder = scripted_model
    session = FileSession(concierge.name, "trip", concierge.instructions, store)
    first = await run_agent(concierge, [{"role": "user", "content": "Weather in Lima?"}], session, client=client)
    assert first["status"] == "completed" and "Sunny in Lima" in first["final_output"]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "tool", "assistant"]
    second = await run_agent(concierge, [{"role": "user", "content": "And in Quito?"}], session, client=client)
    assert "Sunny in Quito" in second["final_output"]
    delegate_items = await FileSession("Forecaster", "trip~concierge", None, store).get_items()
    assert [i["content"] for i in delegate_items if i.get("role") == "user"] == ["Weather in Lima?", "And in Quito?"]
    assert lookups(effects) == [{"city": "Lima"}, {"city": "Quito"}]


async def test_the_callers_output_guardrail_governs_the_delegates_tools(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.responder = scripted_model
    session = FileSession(concierge.name, "secret", None, store)
    result = await run_agent(
        concierge, [{"role": "user", "content": "Weather in Secretville?"}], session, client=client
    )
    weather = next(c for c in result["tool_calls"] if c["name"] == "get_weather")
    assert weather["agent"] == "Forecaster" and "result contains a secret" in weather["error"]
    assert lookups(effects) == [{"city": "Secretville"}]  # it ran; its result was withheld from the model
    assert "Sunny in Secretville" not in result["final_output"]


async def test_a_two_level_chain_frames_every_event(server: TestServer, client: ModelClient, store: Path) -> None:
    def lookup(city: str) -> str:
        return f"Rain in {city}"

    c = Agent(name="Meteorologist", model="m", instructions="Meteorologist.", tools=[lookup])
    b = Agent(name="Forecaster", model="m", instructions="Forecaster.", handoffs=[c])
    a = Agent(name="Front Desk", model="m", instructions="Front desk.", handoffs=[b])
    server.responder = scripted_model
    session = FileSession(a.name, "chain", None, store)
    events = [
        e
        async for e in run_agent(
            a, [{"role": "user", "content": "in Bergen"}], session, result_processor=None, client=client
        )
    ]
    starts = [(e["agent"], e["target"], e["depth"]) for e in events if e["type"] == "handoff_start"]
    assert starts == [("Front Desk", "Forecaster", 0), ("Forecaster", "Meteorologist", 1)]
    result = next(e for e in events if e["type"] == "tool_result" and e["name"] == "lookup")
    assert (result["agent"], result["depth"]) == ("Meteorologist", 2)
    assert "Rain in Bergen" in events[-1]["final_output"]
    names = {(f.parent.name, f.name) for f in store.rglob("*.jsonl")}
    assert names == {
        ("Front%20Desk", "chain.jsonl"),
        ("Forecaster", "chain~front_desk.jsonl"),
        ("Meteorologist", "chain~front_desk~forecaster.jsonl"),
    }


async def test_a_cycle_stops_at_the_depth_limit_with_an_error_for_the_model(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    ping = Agent(name="Ping", model="m", instructions="Ping.")
    pong = Agent(name="Pong", model="m", instructions="Pong.", handoffs=[ping])
    ping.__init__(name="Ping", model="m", instructions="Ping.", handoffs=[pong])  # type: ignore[misc]
    server.responder = scripted_model
    result = await run_agent(
        ping,
        [{"role": "user", "content": "loop"}],
        FileSession("Ping", "cycle", None, store),
        client=client,
        config=RunConfig(max_handoff_depth=3),
    )
    assert result["status"] == "completed"
    errors = [c["error"] for c in result["tool_calls"] if c["error"]]
    assert len(errors) == 1 and "max_handoff_depth=3" in errors[0]
    assert "max_handoff_depth=3" in result["final_output"]


async def test_a_failing_delegate_is_a_tool_error_for_the_caller(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": "weather in Oslo?"}, id="t1")),
        *[Reply.error(500, "delegate model down")] * 3,
        Reply.text("Sorry, the forecaster is unavailable."),
    )
    session = FileSession(concierge.name, "fail", None, store)
    result = await run_agent(concierge, [{"role": "user", "content": "Weather?"}], session, client=client)
    assert result["status"] == "completed"
    assert result["final_output"] == "Sorry, the forecaster is unavailable."
    transfer = result["tool_calls"][0]
    assert transfer["name"] == "transfer_to_forecaster" and "delegate model down" in transfer["error"]
    told = next(m for m in server.requests[-1].messages if m["role"] == "tool")["content"]
    assert told.startswith("Error: the agent Forecaster failed") and "HTTP 500" in told
