"""Typed final answers (``Agent(output_type=...)``), over real HTTP against the test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from timestep import Agent, FileSession, ModelClient, run_agent
from timestep.approvals import load
from timestep.output import output_spec
from timestep.testing import Reply, TestServer, ToolCall


class Weather(BaseModel):
    city: str
    celsius: int


def ask(text: str = "Weather in Oslo?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def session(store: Path, conversation: str = "typed", agent: str = "Typed") -> FileSession:
    return FileSession(agent, conversation, "Answer in JSON.", storage_dir=store)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_valid_answer_is_an_object_and_the_session_keeps_its_json(
    server: TestServer, client: ModelClient, store: Path, stream: bool
) -> None:
    agent = Agent(name="Typed", model="m", output_type=Weather)
    server.script(Reply.text('{"city": "Oslo", "celsius": 21}'))
    result = await run_agent(agent, ask(), session(store), stream=stream, client=client)
    assert result["status"] == "completed"
    assert result["final_output"] == Weather(city="Oslo", celsius=21)
    body = server.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["city", "celsius"]
    assert "tools" not in body
    messages = await session(store).get_items()
    assert json.loads(messages[-1]["content"]) == {"city": "Oslo", "celsius": 21}


async def test_an_invalid_answer_goes_back_with_the_error_and_is_not_stored(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Typed", model="m", output_type=Weather)
    server.script(Reply.text('{"city": "Oslo", "celsius": "warm"}'), Reply.text('{"city": "Oslo", "celsius": 21}'))
    result = await run_agent(agent, ask(), session(store), client=client)
    assert result["final_output"] == Weather(city="Oslo", celsius=21)
    retry = server.requests[1].messages
    assert retry[-2] == {"role": "assistant", "content": '{"city": "Oslo", "celsius": "warm"}'}
    assert retry[-1]["role"] == "user" and "celsius" in retry[-1]["content"] and "integer" in retry[-1]["content"]
    messages, journal = await load(session(store))
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "warm" not in json.dumps(messages)
    assert [r["journal"] for r in journal if r["journal"] != "usage"] == ["answer_invalid"]


async def test_answers_that_never_validate_end_in_a_clear_error(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Typed", model="m", output_type=Weather)
    server.script(*[Reply.text("sunny!") for _ in range(3)])
    result = await run_agent(agent, ask(), session(store), client=client)
    assert result["status"] == "error"
    assert result["error"].startswith("Typed gave no acceptable answer in 3 attempts: the answer is not valid JSON")
    assert len(server.requests) == 3  # max_answer_retries=2: the first try and two more
    messages = await session(store).get_items()
    assert [m["role"] for m in messages] == ["system", "user"]  # valid, and the question kept


async def test_the_final_answer_tool_for_endpoints_without_response_format(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Typed", model="m", output_type=Weather, output_mode="tool")
    server.script(
        Reply.tool_calls(ToolCall("final_answer", {"city": "Oslo", "celsius": "x"})),
        Reply.tool_calls(ToolCall("final_answer", {"city": "Oslo", "celsius": 20})),
    )
    result = await run_agent(agent, ask(), session(store), client=client)
    assert result["final_output"] == Weather(city="Oslo", celsius=20)
    body = server.requests[0].body
    assert "response_format" not in body
    assert [t["function"]["name"] for t in body["tools"]] == ["final_answer"]
    told = server.requests[1].messages[-1]
    assert told["role"] == "tool" and told["content"].startswith("Error: the answer does not match the schema")
    messages = await session(store).get_items()
    assert messages[-1] == {"role": "assistant", "content": '{"city": "Oslo", "celsius": 20}'}
    assert messages[-2]["role"] == "tool" and messages[-3]["tool_calls"][0]["function"]["name"] == "final_answer"


async def test_auto_mode_falls_back_to_the_tool_when_the_endpoint_refuses_response_format(
    server: TestServer, store: Path
) -> None:
    client = ModelClient(base_url=server.base_url, api_key="k", max_retries=0)
    agent = Agent(name="Typed", model="no-json-schema-model", output_type=Weather)
    server.script(
        Reply.error(400, "response_format json_schema is not supported", type="invalid_request_error"),
        Reply.tool_calls(ToolCall("final_answer", {"city": "Lima", "celsius": 25})),
        Reply.tool_calls(ToolCall("final_answer", {"city": "Oslo", "celsius": 3})),
    )
    first = await run_agent(agent, ask(), session(store, "a"), client=client)
    assert first["final_output"] == Weather(city="Lima", celsius=25)
    assert "response_format" in server.requests[0].body and "response_format" not in server.requests[1].body
    second = await run_agent(agent, ask(), session(store, "b"), client=client)
    assert second["final_output"] == Weather(city="Oslo", celsius=3)
    assert "response_format" not in server.requests[2].body  # remembered for this endpoint and model


async def test_a_delegate_with_an_output_type_hands_its_json_to_the_caller(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    forecaster = Agent(name="Forecaster", model="m", output_type=Weather)
    boss = Agent(name="Boss", model="m", handoffs=[forecaster])
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": "Oslo?"})),
        Reply.text('{"city": "Oslo", "celsius": 7}'),
        Reply.text("It is 7 degrees in Oslo."),
    )
    result = await run_agent(boss, ask(), session(store, agent="Boss"), client=client)
    assert result["final_output"] == "It is 7 degrees in Oslo."
    assert server.requests[2].messages[-1] == {
        "role": "tool",
        "tool_call_id": result["tool_calls"][0]["id"],
        "content": '{"city": "Oslo", "celsius": 7}',
    }
    assert "response_format" in server.requests[1].body and "response_format" not in server.requests[2].body


@pytest.mark.parametrize(
    ("output_type", "answer", "expected"),
    [(int, '{"value": 42}', 42), (list[str], '{"value": ["a", "b"]}', ["a", "b"])],
)
async def test_simple_types_are_wrapped_in_an_object(
    server: TestServer, client: ModelClient, store: Path, output_type: Any, answer: str, expected: Any
) -> None:
    agent = Agent(name="Typed", model="m", output_type=output_type)
    server.script(Reply.text(answer))
    result = await run_agent(agent, ask(), session(store), client=client)
    assert result["final_output"] == expected
    schema = server.requests[0].body["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "object" and schema["required"] == ["value"]


def test_dataclasses_and_typeddicts_describe_themselves() -> None:
    from dataclasses import dataclass

    from typing_extensions import TypedDict  # pydantic needs this one on Python 3.11

    @dataclass
    class Point:
        x: int
        y: int

    class Pair(TypedDict):
        a: str

    assert output_spec(Point).parse('{"x": 1, "y": 2}') == Point(1, 2)
    assert output_spec(Pair).parse('```json\n{"a": "b"}\n```') == {"a": "b"}


def test_a_type_pydantic_cannot_describe_is_a_clear_error_at_construction() -> None:
    from timestep import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot be described as a JSON schema"):
        Agent(name="Typed", model="m", output_type=object())


def test_readme_examples_print_what_the_readme_says(tmp_path: Path) -> None:
    """Every README program followed by "prints" and a text block prints exactly that."""
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    pairs = re.findall(r"```python\n((?:(?!```).)*?)```\n\nprints\n\n```text\n(.*?)```", readme, flags=re.S)
    assert len(pairs) >= 2
    for n, (program, expected) in enumerate(pairs):
        (tmp_path / f"example_{n}.py").write_text(program)
        proc = subprocess.run(
            [sys.executable, f"example_{n}.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected, program
