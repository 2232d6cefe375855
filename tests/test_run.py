"""The run loop over real HTTP against the test server: answers, tools, streaming, and failures."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from timestep import (
    Agent,
    ConfigurationError,
    FileSession,
    ModelClient,
    RunConfig,
    default_result_processor,
    run_agent,
)
from timestep.testing import Reply, TestServer, ToolCall

USER = [{"role": "user", "content": "Hello!"}]


def session_for(agent: Agent, store: Path, conversation: str = "c1") -> FileSession:
    return FileSession(agent.name, conversation, agent.instructions, store)


def valid_for_api(items: list[dict[str, Any]]) -> bool:
    """Every assistant message with tool calls is followed by exactly its tool results."""
    messages = [m for m in items if "role" in m]
    for n, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            following = [x["tool_call_id"] for x in messages[n + 1 : n + 1 + len(ids)] if x["role"] == "tool"]
            if sorted(following) != sorted(ids):
                return False
    return True


async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Current weather for a city.

    Args:
        city: The city's name.
        unit: Temperature unit.
    """
    return f"Sunny in {city}, 21°{unit}"


async def test_text_answer_persists_and_reports(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="Assistant", model="gpt-4o", instructions="You are a helpful assistant.")
    session = session_for(agent, store)
    server.script(Reply.text("Hi there!"))

    result = await run_agent(agent, USER, session, stream=False, client=client)

    assert result["status"] == "completed"
    assert result["final_output"] == "Hi there!"
    assert result["messages"] == [USER[0], {"role": "assistant", "content": "Hi there!"}]
    sent = server.requests[0]
    assert sent.body["model"] == "gpt-4o"
    assert sent.messages == [{"role": "system", "content": "You are a helpful assistant."}, USER[0]]
    assert sent.headers["authorization"] == "Bearer sk-test-key"
    assert "tools" not in sent.body and not sent.stream
    assert await session.get_items() == [
        {"role": "system", "content": "You are a helpful assistant."},
        USER[0],
        {"role": "assistant", "content": "Hi there!"},
    ]
    assert "sk-test-key" not in session.path.read_text()


async def test_stream_and_plain_give_the_same_result_and_session(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Assistant", model="gpt-4o", instructions="Be brief.", tools=[get_weather])
    results, contents = [], []
    for n, stream in enumerate((False, True)):
        server.script(
            Reply.tool_calls(ToolCall("get_weather", {"city": "Lima"}, id="call_1")),
            Reply.text("It is sunny in Lima today."),
        )
        session = session_for(agent, store, f"conv-{n}")
        events = [e async for e in run_agent(agent, USER, session, stream=stream, result_processor=None, client=client)]
        deltas = [e["delta"] for e in events if e["type"] == "content_delta"]
        assert bool(deltas) is stream
        if stream:
            assert len(deltas) > 1 and "".join(deltas) == "It is sunny in Lima today."
            assert server.requests[-1].body["stream_options"] == {"include_usage": True}
        result = await default_result_processor(_replay(events))
        results.append({k: v for k, v in result.items() if k != "usage"})
        contents.append(await session.get_items())
    assert results[0] == results[1]
    assert contents[0] == contents[1]
    assert results[0]["tool_calls"][0]["result"] == "Sunny in Lima, 21°C"


async def _replay(events: list[dict[str, Any]]) -> Any:
    for e in events:
        yield e


async def test_three_ways_to_run(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="A", model="m")
    server.script(Reply.text("one"), Reply.text("two"), Reply.text("three"))
    first = await run_agent(agent, USER, session_for(agent, store, "1"), stream=False, client=client)
    events = run_agent(agent, USER, session_for(agent, store, "2"), stream=True, client=client)
    second = await default_result_processor(events)
    third = [
        e
        async for e in run_agent(
            agent, USER, session_for(agent, store, "3"), stream=True, result_processor=None, client=client
        )
    ]
    assert first["final_output"] == "one" and second["final_output"] == "two"
    assert [e["type"] for e in third] == ["run_start", "message", "content_delta", "message", "run_end"]
    assert all(e["agent"] == "A" for e in third)
    assert third[-1]["final_output"] == "three"


async def test_typed_tool_validation_error_goes_back_to_the_model(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="A", model="m", tools=[get_weather])
    server.script(
        Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo", "unit": "K"}, id="bad")),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo", "unit": "C"}, id="good")),
        Reply.text("Sunny."),
    )
    events = [e async for e in run_agent(agent, USER, session_for(agent, store), result_processor=None, client=client)]
    errors = [e for e in events if e["type"] == "tool_error"]
    assert len(errors) == 1 and errors[0]["tool_call_id"] == "bad" and "unit" in errors[0]["error"]
    second_request = server.requests[1].messages
    assert second_request[-1]["role"] == "tool" and "invalid arguments" in second_request[-1]["content"]
    assert server.requests[2].messages[-1]["content"] == "Sunny in Oslo, 21°C"


async def test_seed_style_args_dict_tool_and_its_inferred_schema(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def lookup(args: dict) -> dict:  # type: ignore[type-arg]
        return {"result": f"{args['city']} in {args.get('unit', 'C')}"}

    agent = Agent(name="A", model="m", tools=[lookup])
    schema = agent.tool_specs[0]["function"]["parameters"]
    assert schema["required"] == ["city"]
    assert schema["properties"]["unit"] == {"type": "string"}
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Rome"})), Reply.text("ok"))
    result = await run_agent(agent, USER, session_for(agent, store), client=client)
    assert json.loads(result["tool_calls"][0]["result"]) == {"result": "Rome in C"}


async def test_sync_tools_run_off_the_event_loop_and_results_become_json(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Forecast(BaseModel):
        city: str
        days: list[str]

    def forecast(city: str) -> Forecast:
        seen.append(threading.get_ident())
        return Forecast(city=city, days=["sun", "rain"])

    def listing() -> list[int]:
        return [1, 2, 3]

    agent = Agent(name="A", model="m", tools=[forecast, listing])
    server.script(
        Reply.tool_calls(ToolCall("forecast", {"city": "Oslo"}), ToolCall("listing", {})),
        Reply.text("done"),
    )
    result = await run_agent(agent, USER, session_for(agent, store), client=client)
    assert seen and seen[0] != loop_thread
    assert json.loads(result["tool_calls"][0]["result"]) == {"city": "Oslo", "days": ["sun", "rain"]}
    assert result["tool_calls"][1]["result"] == "[1, 2, 3]"


async def test_tool_calls_run_concurrently_and_results_are_stored_in_call_order(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    second_started = asyncio.Event()

    async def first() -> str:
        await asyncio.wait_for(second_started.wait(), 5)  # only finishes if `second` runs at the same time
        return "first done"

    async def second() -> str:
        second_started.set()
        return "second done"

    agent = Agent(name="A", model="m", tools=[first, second])
    session = session_for(agent, store)
    server.script(Reply.tool_calls(ToolCall("first", {}, id="c1"), ToolCall("second", {}, id="c2")), Reply.text("ok"))
    result = await run_agent(agent, USER, session, client=client)
    assert result["status"] == "completed"
    tool_messages = [i for i in await session.get_items() if i.get("role") == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == [("c1", "first done"), ("c2", "second done")]


async def test_tool_exception_unknown_tool_and_malformed_arguments_are_told_to_the_model(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def explode(reason: str) -> str:
        raise RuntimeError(f"boom: {reason}")

    agent = Agent(name="A", model="m", tools=[explode, get_weather])
    session = session_for(agent, store)
    server.script(
        Reply.tool_calls(
            ToolCall("explode", {"reason": "disk full"}, id="e1"),
            ToolCall("launch_rockets", {}, id="e2"),
            ToolCall("get_weather", '{"city": "Oslo"', id="e3"),
        ),
        Reply.text("Sorry, something went wrong."),
    )
    events = [e async for e in run_agent(agent, USER, session, result_processor=None, client=client)]
    errors = {e["tool_call_id"]: e["error"] for e in events if e["type"] == "tool_error"}
    assert "RuntimeError: boom: disk full" in errors["e1"]
    assert "no tool named 'launch_rockets'" in errors["e2"] and "get_weather" in errors["e2"]
    assert "not valid JSON" in errors["e3"]
    results = {m["tool_call_id"]: m["content"] for m in server.requests[1].messages if m["role"] == "tool"}
    assert results["e1"].startswith("Error:") and "boom" in results["e1"]
    assert events[-1]["status"] == "completed"
    assert valid_for_api(await session.get_items())


async def test_reply_with_nothing_ends_with_a_clear_error_and_a_valid_session(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="A", model="m")
    session = session_for(agent, store)
    server.script(Reply.empty())
    result = await run_agent(agent, USER, session, client=client)
    assert result["status"] == "error"
    assert "neither content nor tool calls" in result["error"]
    assert [i["role"] for i in await session.get_items()] == ["user"]


async def test_429_is_retried_honouring_retry_after(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="A", model="m")
    replies = [Reply.error(429, "slow down", headers={"retry-after": "0.3"}), Reply.text("fine")]
    arrived: list[float] = []

    def responder(body: dict[str, Any]) -> Reply:
        arrived.append(time.monotonic())
        return replies.pop(0)

    server.responder = responder
    result = await run_agent(agent, USER, session_for(agent, store), client=client)
    assert result["final_output"] == "fine"
    assert len(server.requests) == 2
    # the client's own backoff here is 0.01 s: only the header explains a wait this long
    assert arrived[1] - arrived[0] >= 0.3 - 0.05


async def test_500_ends_the_run_with_an_error_event_and_a_well_formed_session(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="A", model="m", tools=[get_weather])
    session = session_for(agent, store)
    server.script(
        Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"})),
        *[Reply.error(500, "the model is on fire")] * 3,
    )
    events = [e async for e in run_agent(agent, USER, session, result_processor=None, client=client)]
    error = next(e for e in events if e["type"] == "error")
    assert "HTTP 500" in error["error"] and "the model is on fire" in error["error"]
    assert error["error_type"] == "ModelHTTPError"
    assert events[-1]["status"] == "error"
    items = await session.get_items()
    assert valid_for_api(items) and items[-1]["role"] == "tool"
    # The conversation goes on from where it stopped.
    server.script(Reply.text("Sunny in Oslo."))
    again = await run_agent(agent, [], session, client=client)
    assert again["final_output"] == "Sunny in Oslo."


async def test_stream_cut_mid_way_leaves_no_half_message(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="A", model="m")
    session = session_for(agent, store)
    server.script(Reply.text("this reply will never finish").cut_after(3))
    result = await run_agent(agent, USER, session, stream=True, client=client)
    assert result["status"] == "error" and "stream" in result["error"]
    assert [i["role"] for i in await session.get_items()] == ["user"]


async def test_malformed_response_body_is_a_clear_error(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="A", model="m")
    server.script(Reply.raw(200, "{not json"))
    result = await run_agent(agent, USER, session_for(agent, store), client=client)
    assert result["status"] == "error" and "invalid JSON" in result["error"]


async def test_unreachable_endpoint_is_a_clear_error(store: Path) -> None:
    agent = Agent(name="A", model="m")
    dead = ModelClient(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1, backoff_base=0.01)
    result = await run_agent(agent, USER, session_for(agent, store), client=dead)
    assert result["status"] == "error"
    assert "cannot reach http://127.0.0.1:9/v1" in result["error"]


async def test_max_turns_ends_a_runaway_loop(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="A", model="m", tools=[get_weather])
    server.responder = lambda body: Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}))
    session = session_for(agent, store)
    result = await run_agent(agent, USER, session, client=client, config=RunConfig(max_turns=3))
    assert result["status"] == "error" and "max_turns=3" in result["error"]
    assert len(server.requests) == 3
    assert valid_for_api(await session.get_items())


async def test_a_configured_openai_client_is_used(server: TestServer, store: Path) -> None:
    agent = Agent(name="A", model="m")
    oai = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-from-client", default_headers={"X-Team": "blue"})
    server.script(Reply.text("hello from the client"))
    result = await run_agent(agent, USER, session_for(agent, store), client=oai)
    assert result["final_output"] == "hello from the client"
    headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer sk-from-client" and headers["x-team"] == "blue"
    await oai.close()


async def test_environment_variables_choose_the_endpoint(
    server: TestServer, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
    agent = Agent(name="A", model="m")
    server.script(Reply.text("from env"))
    result = await run_agent(agent, USER, session_for(agent, store))
    assert result["final_output"] == "from env"
    assert server.requests[0].headers["authorization"] == "Bearer sk-env-key"


def test_missing_api_key_for_openai_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, store: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    agent = Agent(name="A", model="m")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set"):
        run_agent(agent, USER, session_for(agent, store))


def test_agent_construction_errors() -> None:
    async def t(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="name"):
        Agent(name="", model="m")
    with pytest.raises(ConfigurationError, match="model"):
        Agent(name="A", model=" ")
    with pytest.raises(ConfigurationError, match="already uses"):
        Agent(name="A", model="m", tools=[t, t])
    with pytest.raises(ConfigurationError, match="not callable"):
        Agent(name="A", model="m", tools=["get_weather"])
    with pytest.raises(ConfigurationError, match="not an Agent"):
        Agent(name="A", model="m", handoffs=["B"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="messages must be a list"):
        run_agent(Agent(name="A", model="m"), {"role": "user", "content": "x"}, None)  # type: ignore[arg-type]


async def test_leaving_the_event_stream_early_cancels_the_run(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(x: int) -> str:
        if started.is_set():
            return "ran a second time"  # a broken build re-runs it: fail fast rather than hang
        started.set()
        try:
            await asyncio.Event().wait()  # only a cancellation ends this
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    agent = Agent(name="A", model="m", tools=[slow])
    session = session_for(agent, store)
    server.script(Reply.tool_calls(ToolCall("slow", {"x": 1}, id="s1")))
    before = asyncio.all_tasks()
    async for event in run_agent(agent, USER, session, result_processor=None, client=client):
        if event["type"] == "tool_call":
            await started.wait()
            break
    # Nothing else ends the tool: if leaving the loop did not cancel the run, this wait times out.
    await asyncio.wait_for(cancelled.wait(), 10)
    left = asyncio.all_tasks() - before
    await asyncio.wait_for(asyncio.gather(*left, return_exceptions=True), 10)  # the run's tasks wind down
    assert all(t.done() for t in left)
    # The call started and has no result: the next run does not silently run it again.
    server.script(Reply.text("unused"))
    result = await run_agent(agent, [], session, client=client)
    assert result["status"] == "interrupted" and result["interruptions"][0]["kind"] == "unknown_outcome"
    assert server.pending == 1  # the model was not asked anything
