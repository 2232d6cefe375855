"""Usage limits end a run cleanly and a higher limit resumes it; usage per model and per agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from timestep import (
    Agent,
    ConfigurationError,
    FileSession,
    ModelClient,
    Price,
    RunConfig,
    UsageLimitExceeded,
    UsageLimits,
    run_agent,
)
from timestep.testing import Reply, TestServer, ToolCall
from timestep.usage import Usage, totals

from .test_run import valid_for_api

ASK = [{"role": "user", "content": "Weather in Lima?"}]
looked_up: list[str] = []


async def get_weather(city: str) -> str:
    """The weather in a city."""
    looked_up.append(city)
    return f"Sunny in {city}"


agent = Agent(name="W", model="m", instructions="Use get_weather.", tools=[get_weather])


def script(server: TestServer) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Lima"}, id="c1")), Reply.text("Sunny."))


async def run(
    session: FileSession, client: ModelClient, stream: bool, limits: UsageLimits | None, messages: Any, **cfg: Any
) -> list[dict[str, Any]]:
    config = RunConfig(limits=limits, **cfg)
    handle = run_agent(agent, messages, session, stream=stream, result_processor=None, client=client, config=config)
    return [dict(e) async for e in handle]


LIMITS = {
    "model_calls": (UsageLimits(model_calls=1), ["system", "user", "assistant", "tool"]),
    "tool_calls": (UsageLimits(tool_calls=0), ["system", "user", "assistant"]),
    "input_tokens": (UsageLimits(input_tokens=1), ["system", "user", "assistant"]),
    "output_tokens": (UsageLimits(output_tokens=1), ["system", "user", "assistant"]),
    "total_tokens": (UsageLimits(total_tokens=1), ["system", "user", "assistant"]),
    "cost": (UsageLimits(cost=0.5), ["system", "user", "assistant"]),
}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("limit", list(LIMITS))
async def test_each_limit_ends_the_run_and_a_higher_one_resumes(
    limit: str, stream: bool, server: TestServer, client: ModelClient, store: Path
) -> None:
    limits, stored_roles = LIMITS[limit]
    prices = {"m": Price(input=1e6, output=1e6)}  # a dollar a token: one reply is over 0.5
    session = FileSession(agent.name, f"{limit}-{stream}", agent.instructions, store)
    script(server)
    looked_up.clear()
    events = await run(session, client, stream, limits, ASK, prices=prices)
    error = next(e for e in events if e["type"] == "error")
    assert error["error_type"] == "UsageLimitExceeded" and limit in error["error"]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "error"
    items = await session.get_items()
    assert [m["role"] for m in items] == stored_roles and valid_for_api(items) == (limit == "model_calls")
    assert len(server.requests) == 1  # the call past a count limit was not made
    assert looked_up == (["Lima"] if limit == "model_calls" else [])  # nor a tool call past the tool limit

    events = await run(session, client, stream, None, [], prices=prices)  # no limit: it goes on from the session
    assert events[-1]["status"] == "completed" and events[-1]["final_output"] == "Sunny."
    assert looked_up == ["Lima"] and len(server.requests) == 2
    assert valid_for_api(await session.get_items())


async def test_the_result_counts_per_model_and_per_agent_with_delegates(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    forecaster = Agent(name="Forecaster", model="small", tools=[get_weather])
    desk = Agent(name="Desk", model="big", handoffs=[forecaster])
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": "Lima?"}, id="t1")),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Lima"}, id="w1")),
        Reply.text("Sunny in Lima."),
        Reply.text("It is sunny."),
    )
    prices = {"big": Price(input=2.0, output=8.0), "small": Price(input=0.5, output=1.0)}
    session = FileSession(desk.name, "delegates", None, store)
    result = await run_agent(desk, ASK, session, client=client, config=RunConfig(prices=prices))
    assert result["status"] == "completed"
    usage = result["usage"]
    sent = [r.body for r in server.requests]
    assert [b["model"] for b in sent] == ["big", "small", "small", "big"]
    assert usage["model_calls"] == 4 and usage["tool_calls"] == 2
    assert usage["by_model"]["big"]["model_calls"] == 2 and usage["by_model"]["small"]["model_calls"] == 2
    assert usage["by_agent"].keys() == {"Desk", "Forecaster"}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[key] == sum(u[key] for u in usage["by_model"].values()) > 0
        assert usage["by_agent"]["Desk"][key] == usage["by_model"]["big"][key]
    expected = sum(
        (prices[m].input * u["prompt_tokens"] + prices[m].output * u["completion_tokens"]) / 1e6
        for m, u in usage["by_model"].items()
    )
    assert usage["cost"] == pytest.approx(expected)

    # The same totals, read back from the sessions alone (what `timestep sessions show` prints).
    _, top = await session.get_items(), await session.get_journal()
    below = await FileSession(forecaster.name, "delegates~desk", None, store).get_journal()
    again = totals([*top, *below], prices)
    assert {k: again[k] for k in ("prompt_tokens", "by_model", "by_agent", "cost")} == {
        k: usage[k] for k in ("prompt_tokens", "by_model", "by_agent", "cost")
    }


async def test_a_delegate_reaching_a_limit_ends_the_whole_run(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    forecaster = Agent(name="Forecaster", model="small", tools=[get_weather])
    desk = Agent(name="Desk", model="big", handoffs=[forecaster])
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": "Lima?"}, id="t1")),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Lima"}, id="w1")),
    )
    session = FileSession(desk.name, "limited", None, store)
    config = RunConfig(limits=UsageLimits(model_calls=2))
    events = [e async for e in run_agent(desk, ASK, session, client=client, config=config, result_processor=None)]
    ends = [(e["agent"], e["status"]) for e in events if e["type"] == "run_end"]
    assert ends == [("Forecaster", "error"), ("Desk", "error")]  # the caller's model was not asked again
    assert len(server.requests) == 2

    server.script(Reply.text("Sunny in Lima."), Reply.text("It is sunny."))
    result = await run_agent(desk, [], session, client=client)
    assert result["status"] == "completed" and result["final_output"] == "It is sunny."
    assert valid_for_api(await session.get_items())


async def test_a_cost_limit_needs_a_price_for_the_model(server: TestServer, client: ModelClient, store: Path) -> None:
    server.script(Reply.text("hi"))
    config = RunConfig(limits=UsageLimits(cost=1.0), prices={"other": Price(1, 1)})
    result = await run_agent(agent, ASK, FileSession("W", "noprice", None, store), client=client, config=config)
    assert result["status"] == "error" and "no price for model 'm'" in result["error"]


def test_limits_are_checked_before_the_call_that_would_pass_them() -> None:
    usage = Usage(UsageLimits(model_calls=2, tool_calls=3))
    usage.before_model_call()
    usage.before_model_call()
    with pytest.raises(UsageLimitExceeded) as caught:
        usage.before_model_call()
    assert (caught.value.limit, caught.value.allowed, caught.value.used) == ("model_calls", 2, 3)
    usage.before_tool_calls(2)
    with pytest.raises(UsageLimitExceeded, match="tool_calls"):
        usage.before_tool_calls(2)
    usage.before_tool_calls(1)
    with pytest.raises(ConfigurationError):
        Usage(UsageLimits(cost=1)).add("a", "m", {"prompt_tokens": 1})


@pytest.mark.parametrize("bad", [{"model_calls": -1}, {"cost": "5"}, {"total_tokens": True}])
def test_a_limit_that_cannot_work_is_refused_when_built(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(bad))):
        UsageLimits(**bad)
    with pytest.raises(ConfigurationError):
        Price(input=-1, output=1)
