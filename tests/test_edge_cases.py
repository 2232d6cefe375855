"""Regressions for the hard cases: repeated approvals, edited arguments, odd ids, odd streams, odd text."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from timestep import (
    Agent,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    Interruption,
    ModelClient,
    run_agent,
)
from timestep.testing import Reply, TestServer, ToolCall

from .test_approvals import app, ran
from .test_approvals import effects as effects  # the fixture
from .test_run import valid_for_api

PAY = [{"role": "user", "content": "pay"}]
sent: list[tuple[int, str]] = []


async def transfer(amount: int, to: str) -> str:
    """Send money."""
    sent.append((amount, to))
    return f"sent {amount} to {to}"


def big_amount(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
    if args["amount"] > 100:
        raise GuardrailInterrupt(f"Send {args['amount']}?", tool_name, args)
    return GuardrailResult.proceed()


def new_payee(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
    raise GuardrailInterrupt(f"{args['to']} is a new payee, ok?", tool_name, {"to": args["to"]})


def hard_limit(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
    return GuardrailResult.block("over the limit") if args["amount"] > 1000 else GuardrailResult.proceed()


def setup_function() -> None:
    sent.clear()


def bank(*guardrails: Any) -> Agent:
    return Agent(name="Bank", model="m", tools=[transfer], guardrails=[InputGuardrail(g) for g in guardrails])


async def test_two_approval_guardrails_are_both_asked_inline_and_durably(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = bank(big_amount, new_payee)
    asked: list[str] = []

    def person(i: Interruption) -> bool:
        asked.append(i.prompt)
        return True

    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 500, "to": "Ada"}, id="t1")), Reply.text("ok"))
    result = await run_agent(
        agent, PAY, FileSession("Bank", "inline", None, store), approval_handler=person, client=client
    )
    assert result["status"] == "completed" and asked == ["Send 500?", "Ada is a new payee, ok?"]
    assert sent == [(500, "Ada")]  # the second guardrail's smaller view did not replace the arguments

    sent.clear()
    session = FileSession("Bank", "durable", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 500, "to": "Ada"}, id="t2")))
    prompts = [(await run_agent(agent, PAY, session, client=client))["interruptions"][0]["prompt"]]
    second = await run_agent(agent, [], session, approvals={"t2": True}, client=client)
    prompts.append(second["interruptions"][0]["prompt"])
    server.script(Reply.text("done"))
    third = await run_agent(agent, [], session, approvals={"t2": True}, client=client)
    assert prompts == ["Send 500?", "Ada is a new payee, ok?"] and third["status"] == "completed"
    assert sent == [(500, "Ada")]


async def test_edited_arguments_pass_the_whole_chain_again(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = bank(hard_limit, big_amount)
    session = FileSession("Bank", "edit", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 500, "to": "Ada"}, id="t1")))
    await run_agent(agent, PAY, session, client=client)
    server.script(Reply.text("blocked"))
    edit = {"approve": True, "args": {"amount": 50_000, "to": "Mallory"}}
    result = await run_agent(agent, [], session, approvals={"t1": edit}, client=client)
    assert sent == [] and "over the limit" in (result["tool_calls"][0]["error"] or "")


async def test_unknown_outcome_calls_cannot_be_edited(
    server: TestServer, store: Path, effects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.responder = lambda body: (
        Reply.text("done")
        if body["messages"][-1]["role"] == "tool"
        else Reply.tool_calls(ToolCall("charge", {"amount": 5}, id="pay"))
    )
    assert app(server, store, "start", KILL_IN="charge", QUESTION="Charge 5") is None
    assert app(server, store, "resume")["status"] == "interrupted"  # type: ignore[index]
    with pytest.raises(AssertionError, match="without new arguments"):
        app(server, store, "resume", {"pay": {"approve": True, "args": {"amount": 1}}})


def test_an_approved_rerun_that_crashes_again_asks_again(server: TestServer, store: Path, effects: Path) -> None:
    server.responder = lambda body: (
        Reply.text("done")
        if body["messages"][-1]["role"] == "tool"
        else Reply.tool_calls(ToolCall("charge", {"amount": 5}, id="pay"))
    )
    assert app(server, store, "start", KILL_IN="charge", QUESTION="Charge 5") is None
    first = app(server, store, "resume")
    assert first is not None and first["interruptions"][0]["kind"] == "unknown_outcome"
    assert app(server, store, "resume", {"pay": True}, KILL_IN="charge") is None  # the approved re-run dies too
    again = app(server, store, "resume")
    assert again is not None and again["status"] == "interrupted"
    assert again["interruptions"][0]["kind"] == "unknown_outcome"
    assert len(ran(effects, "charge")) == 2  # once per person-approved attempt, never blindly


async def test_missing_and_repeated_tool_call_ids_are_made_unique(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def weather(city: str) -> str:
        return f"sunny in {city}"

    agent = Agent(name="W", model="m", tools=[weather])
    session = FileSession("W", "ids", None, store)
    server.script(
        Reply.tool_calls(
            ToolCall("weather", {"city": "Lima"}, id="call_0"), ToolCall("weather", {"city": "Oslo"}, id="call_0")
        ),
        Reply.text("both sunny"),
    )
    first = await run_agent(agent, PAY, session, client=client)
    server.script(Reply.tool_calls(ToolCall("weather", {"city": "Rome"}, id="call_0")), Reply.text("sunny too"))
    second = await run_agent(agent, PAY, session, client=client)
    ids = [c["id"] for r in (first, second) for c in r["tool_calls"]]
    assert len(set(ids)) == 3 and [c["result"] for c in first["tool_calls"]] == ["sunny in Lima", "sunny in Oslo"]
    assert valid_for_api(await session.get_items())


async def test_streamed_tool_calls_without_an_index_stay_apart(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    async def weather(city: str) -> str:
        return f"sunny in {city}"

    chunks = [
        {
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Lima"}'}}
            ]
        },
        {
            "tool_calls": [
                {"index": 0, "id": "call_b", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]},
    ]
    body = "".join(
        "data: "
        + json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d}]})
        + "\n\n"
        for d in chunks
    )
    server.script(Reply.raw(200, body + "data: [DONE]\n\n", content_type="text/event-stream"), Reply.text("ok"))
    agent = Agent(name="W", model="m", tools=[weather])
    result = await run_agent(agent, PAY, FileSession("W", "s", None, store), stream=True, client=client)
    assert [(c["id"], c["result"]) for c in result["tool_calls"]] == [
        ("call_a", "sunny in Lima"),
        ("call_b", "sunny in Oslo"),
    ]


async def test_two_transfers_to_one_delegate_take_turns(server: TestServer, client: ModelClient, store: Path) -> None:
    def lookup(q: str) -> str:
        return f"info about {q}"

    helper = Agent(name="Helper", model="m", tools=[lookup])
    boss = Agent(name="Boss", model="m", handoffs=[helper])

    def model(body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]
        if body["tools"][0]["function"]["name"] == "transfer_to_helper":
            if last["role"] == "tool":
                return Reply.text("both answered")
            return Reply.tool_calls(
                ToolCall("transfer_to_helper", {"message": "A"}), ToolCall("transfer_to_helper", {"message": "B"})
            )
        if last["role"] == "tool":
            return Reply.text(f"helper: {last['content']}", delay=0.05)
        return Reply.tool_calls(ToolCall("lookup", {"q": last["content"]}))

    server.responder = model
    result = await run_agent(boss, PAY, FileSession("Boss", "par", None, store), client=client)
    assert result["final_output"] == "both answered"
    assert sorted(c["result"] for c in result["tool_calls"] if c["name"] == "transfer_to_helper") == [
        "helper: info about A",
        "helper: info about B",
    ]
    helper_items = [i for i in await FileSession("Helper", "par~boss", None, store).get_items() if "role" in i]
    assert valid_for_api(helper_items)
    # One delegation at a time: each request's whole exchange comes before the next request.
    assert [i["role"] for i in helper_items] == ["user", "assistant", "tool", "assistant"] * 2
    firsts = [helper_items[0]["content"], helper_items[4]["content"]]
    assert sorted(firsts) == ["A", "B"]
    for n, asked in ((0, firsts[0]), (4, firsts[1])):
        assert helper_items[n + 2]["content"] == f"info about {asked}"
        assert helper_items[n + 3]["content"] == f"helper: info about {asked}"


async def test_text_that_is_not_utf8_and_arguments_json_cannot_store(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def listing(day: datetime.date) -> list[str]:
        return [f"report-{day}-\udcff.txt"]

    def as_date(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        return GuardrailResult.modify_args({"day": datetime.date(2026, 1, 2)})

    agent = Agent(name="Files", model="m", tools=[listing], guardrails=[InputGuardrail(as_date)])
    session = FileSession("Files", "odd", None, store)
    server.script(Reply.tool_calls(ToolCall("listing", {"day": "today"})), Reply.text("one file"))
    result = await run_agent(agent, PAY, session, client=client)
    assert result["status"] == "completed"
    assert result["tool_calls"][0]["result"] == '["report-2026-01-02-\\udcff.txt"]'
    items = await FileSession("Files", "odd", None, store).get_items()
    journal = await FileSession("Files", "odd", None, store).get_journal()
    assert valid_for_api(items) and any(
        i.get("journal") == "started" and i["args"] == {"day": "2026-01-02"} for i in journal
    )


async def test_the_read_cache_notices_a_pop_followed_by_appends(tmp_path: Path) -> None:
    a, b = FileSession("a", "c", "sys", tmp_path), FileSession("a", "c", "sys", tmp_path)
    await a.add_items([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "AAAA"}])
    assert len(await a.get_items()) == 3
    await b.pop_item()
    await b.add_items([{"role": "assistant", "content": "BBBB"}, {"role": "user", "content": "next"}])
    assert [i["content"] for i in await a.get_items()] == ["sys", "hi", "BBBB", "next"]


async def test_a_delegate_stays_in_the_folder_when_the_working_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    session = FileSession("Boss", "c", None, "conversations")
    monkeypatch.chdir(tmp_path.parent)
    assert session.derive("Helper", "c~boss", None).path.is_relative_to(tmp_path / "conversations")
