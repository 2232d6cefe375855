"""Each test here guards one promise of the README that a change to the code once broke unnoticed.

They are the answers to the mutations of issue 19 (see ``mutation/mutations.py``, where each
mutation names the test that kills it): ids that stay stable across crashes, re-runs with the
arguments a person let through, one answer per approval guardrail, saved results that are used
rather than re-run, decisions that are refused when malformed, usage summed over a run, and so on.
Crashes are real: a child process SIGKILLs itself at a chosen point (``approval_app.py``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from timestep import (
    Agent,
    ApprovalError,
    ConfigurationError,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    Interruption,
    ModelClient,
    pending_interruptions,
    run_agent,
    tool,
)
from timestep.approvals import load
from timestep.testing import Reply, TestServer, ToolCall

from .approval_app import agent as shop
from .test_approvals import OSLO, app, ran, session, tool_results
from .test_approvals import effects as effects  # the fixture
from .test_run import valid_for_api

PAY = [{"role": "user", "content": "pay Ada"}]


def answer_after_tools(*calls: ToolCall) -> Any:
    """A model that calls ``calls`` on a user message and answers "done" once it has tool results."""

    def model(body: dict[str, Any]) -> Reply:
        return Reply.text("done") if body["messages"][-1]["role"] == "tool" else Reply.tool_calls(*calls)

    return model


async def events_of(agent: Agent, messages: list[dict[str, Any]], conv: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [e async for e in run_agent(agent, messages, conv, result_processor=None, **kwargs)]


# -- crashes: the same id, the same arguments, and a re-run that says so ------------------------


def test_a_tools_call_id_is_the_same_on_every_attempt(server: TestServer, store: Path, effects: Path) -> None:
    """README: ``ctx.tool_call_id`` is stable across crashes and resumes (an idempotency key)."""
    server.responder = answer_after_tools(ToolCall("charge", {"amount": 5}, id="pay"))
    assert app(server, store, "start", KILL_IN="charge", QUESTION="Charge 5") is None
    paused = app(server, store, "resume")
    assert paused is not None and paused["interruptions"][0]["kind"] == "unknown_outcome"
    done = app(server, store, "resume", {"pay": True})
    assert done is not None and done["status"] == "completed"
    assert ran(effects, "charge") == [{"amount": 5, "key": "pay"}, {"amount": 5, "key": "pay"}]


def test_a_rerun_after_a_crash_uses_the_arguments_the_person_let_through(
    server: TestServer, store: Path, effects: Path
) -> None:
    server.responder = answer_after_tools(ToolCall("get_weather", {"city": "Oslo"}, id="oslo"))
    paused = app(server, store, "start", QUESTION="Weather in Oslo?")
    assert paused is not None and paused["status"] == "interrupted"
    edit = {"oslo": {"approve": True, "args": {"city": "Bergen"}}}
    assert app(server, store, "resume", edit, KILL_IN="get_weather") is None  # died inside the tool
    unknown = app(server, store, "resume")
    assert unknown is not None and unknown["interruptions"][0]["kind"] == "unknown_outcome"
    assert unknown["interruptions"][0]["args"] == {"city": "Bergen"}  # what may have run, not what was asked
    done = app(server, store, "resume", {"oslo": True})
    assert done is not None and done["status"] == "completed"
    assert ran(effects, "get_weather") == [{"city": "Bergen"}, {"city": "Bergen"}]
    assert done["tool_calls"][0]["arguments"] == {"city": "Bergen"}


async def test_the_tool_call_event_of_a_rerun_says_retry(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.responder = answer_after_tools(ToolCall("notify", {"message": "charged"}, id="tell"))
    assert app(server, store, "start", KILL_IN="notify", QUESTION="Tell me") is None
    events = await events_of(shop, [], session(store), client=client)
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [(e["tool_call_id"], e.get("retry")) for e in calls] == [("tell", True)]
    assert len(ran(effects, "notify")) == 2  # idempotent: run again without asking
    assert events[-1]["status"] == "completed"

    # A first attempt carries no retry flag.
    server.reset()
    server.responder = answer_after_tools(ToolCall("notify", {"message": "again"}, id="tell2"))
    again = await events_of(shop, [{"role": "user", "content": "Tell me again"}], session(store), client=client)
    assert [e.get("retry") for e in again if e["type"] == "tool_call"] == [None]


# -- results saved out of turn -------------------------------------------------------------------


async def _journaled_result(conv: FileSession, call_id: str) -> bool:
    _, journal = await load(conv)
    return any(r.get("journal") == "result" and r.get("call") == call_id for r in journal)


async def test_a_result_saved_while_an_earlier_call_ran_is_used_not_run_again(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    """Call 2 finishes while call 1 still runs; the run stops; the next run keeps call 2's result."""
    runs: list[str] = []
    hold = asyncio.Event()  # never set: the slow call runs until the run is stopped

    async def slow_charge(amount: int) -> str:
        """Charge (slow, not idempotent)."""
        runs.append("slow")
        await hold.wait()
        return "never"

    async def quick_lookup(city: str) -> str:
        """Look up (fast, not idempotent)."""
        runs.append("quick")
        return f"found {city}"

    agent = Agent(name="Shop", model="m", tools=[slow_charge, quick_lookup])
    conv = FileSession(agent.name, "saved", None, store)
    server.script(
        Reply.tool_calls(
            ToolCall("slow_charge", {"amount": 5}, id="c1"), ToolCall("quick_lookup", {"city": "Lima"}, id="c2")
        )
    )
    async for event in run_agent(agent, PAY, conv, result_processor=None, client=client):
        if event["type"] == "tool_result" and event["tool_call_id"] == "c2":
            # The run goes on in its own task while we look: stop it once c1 runs and c2's result
            # is saved (bounded, in case a broken build never saves it: the assertions below fail).
            for _ in range(500):
                if "slow" in runs and await _journaled_result(conv, "c2"):
                    break
                await asyncio.sleep(0.01)
            break
    assert sorted(runs) == ["quick", "slow"]

    resumed = await run_agent(agent, [], conv, client=client)
    assert resumed["status"] == "interrupted"
    assert [(i["tool_call_id"], i["kind"]) for i in resumed["interruptions"]] == [("c1", "unknown_outcome")]
    server.script(Reply.text("Lima found; the charge was not retried."))
    done = await run_agent(agent, [], conv, approvals={"c1": False}, client=client)
    assert done["status"] == "completed" and sorted(runs) == ["quick", "slow"]
    assert tool_results(server.requests[-1])["c2"] == "found Lima"
    items, _ = await load(conv)
    assert valid_for_api(items)
    stored = {m["tool_call_id"]: m["content"] for m in items if m.get("role") == "tool"}
    assert stored["c2"] == "found Lima" and stored["c1"].startswith("A person declined re-running")


# -- approvals: per guardrail, with the arguments named, messages kept, malformed refused ----------


def _ask_always(prompt: str) -> Any:
    def guardrail(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        raise GuardrailInterrupt(prompt, tool_name, args)

    return guardrail


sent: list[tuple[int, str]] = []


async def transfer(amount: int, to: str) -> str:
    """Send money."""
    sent.append((amount, to))
    return f"sent {amount} to {to}"


def setup_function() -> None:
    sent.clear()


async def test_each_approval_guardrail_of_a_call_gets_its_own_answer(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(
        name="Bank",
        model="m",
        tools=[transfer],
        guardrails=[
            InputGuardrail(_ask_always("Compliance: ok?"), name="compliance"),
            InputGuardrail(_ask_always("Manager: ok?"), name="manager"),
        ],
    )
    asked: list[str] = []

    def person(i: Interruption) -> bool:
        asked.append(i.prompt)
        return True

    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 5, "to": "Ada"}, id="t1")), Reply.text("ok"))
    inline = await run_agent(
        agent, PAY, FileSession("Bank", "inline", None, store), approval_handler=person, client=client
    )
    assert inline["status"] == "completed" and asked == ["Compliance: ok?", "Manager: ok?"]

    conv = FileSession("Bank", "durable", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 5, "to": "Ada"}, id="t2")))
    first = await run_agent(agent, PAY, conv, client=client)
    second = await run_agent(agent, [], conv, approvals={"t2": True}, client=client)
    assert [i["prompt"] for i in (*first["interruptions"], *second["interruptions"])] == [
        "Compliance: ok?",
        "Manager: ok?",
    ]
    assert sent == [(5, "Ada")]  # only the inline run's transfer so far
    server.script(Reply.text("sent"))
    third = await run_agent(agent, [], conv, approvals={"t2": True}, client=client)
    assert third["status"] == "completed" and sent == [(5, "Ada"), (5, "Ada")]


async def test_two_approval_guardrails_with_the_same_name_each_get_an_answer(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(
        name="Bank",
        model="m",
        tools=[transfer],
        guardrails=[InputGuardrail(_ask_always("Compliance: ok?")), InputGuardrail(_ask_always("Manager: ok?"))],
    )
    conv = FileSession("Bank", "same-name", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 5, "to": "Ada"}, id="t1")), Reply.text("sent"))
    await run_agent(agent, PAY, conv, client=client)
    second = await run_agent(agent, [], conv, approvals={"t1": True}, client=client)
    assert second["status"] == "interrupted" and second["interruptions"][0]["prompt"] == "Manager: ok?"
    assert sent == []


async def test_a_person_is_shown_the_arguments_the_guardrail_names(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def new_payee(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        raise GuardrailInterrupt(f"{args['to']} is a new payee, ok?", tool_name, {"to": args["to"]})

    agent = Agent(name="Bank", model="m", tools=[transfer], guardrails=[InputGuardrail(new_payee)])
    shown: list[dict[str, Any]] = []

    def person(i: Interruption) -> bool:
        shown.append(i.args)
        return True

    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 5, "to": "Ada"}, id="t1")), Reply.text("ok"))
    await run_agent(agent, PAY, FileSession("Bank", "inline", None, store), approval_handler=person, client=client)
    assert shown == [{"to": "Ada"}] and sent == [(5, "Ada")]

    conv = FileSession("Bank", "durable", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 7, "to": "Bob"}, id="t2")))
    events = await events_of(agent, PAY, conv, client=client)
    interrupt = next(e for e in events if e["type"] == "interrupt")
    assert interrupt["arguments"] == {"to": "Bob"} and events[-1]["interruptions"][0]["args"] == {"to": "Bob"}
    assert [p.args for p in await pending_interruptions(agent, conv)] == [{"to": "Bob"}]


async def test_an_approval_of_edited_arguments_does_not_depend_on_key_order(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def big_amount(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        if args["amount"] > 100:  # asks about the arguments in its own key order
            raise GuardrailInterrupt(f"Send {args['amount']}?", tool_name, {"amount": args["amount"], "to": args["to"]})
        return GuardrailResult.proceed()

    agent = Agent(name="Bank", model="m", tools=[transfer], guardrails=[InputGuardrail(big_amount)])
    conv = FileSession("Bank", "order", None, store)
    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 500, "to": "Ada"}, id="t1")))
    await run_agent(agent, PAY, conv, client=client)
    server.script(Reply.text("sent 300"))
    edit = {"approve": True, "args": {"to": "Ada", "amount": 300}}  # the same call, keys the other way round
    result = await run_agent(agent, [], conv, approvals={"t1": edit}, client=client)
    assert result["status"] == "completed" and sent == [(300, "Ada")]


async def test_edited_arguments_are_in_the_approval_event(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(shop, OSLO, session(store), client=client)
    server.script(Reply.text("Sunny in Bergen."))
    edit = {"oslo": {"approve": True, "args": {"city": "Bergen"}}}
    events = await events_of(shop, [], session(store), approvals=edit, client=client)
    approval = next(e for e in events if e["type"] == "approval")
    assert (approval["approved"], approval["edited_arguments"]) == (True, {"city": "Bergen"})
    assert ran(effects) == [{"city": "Bergen"}]


async def test_a_decline_keeps_its_message(server: TestServer, client: ModelClient, store: Path, effects: Path) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(shop, OSLO, session(store), client=client)
    server.script(Reply.text("Understood."))
    decline = {"oslo": {"approve": False, "message": "too far north"}}
    events = await events_of(shop, [], session(store), approvals=decline, client=client)
    approval = next(e for e in events if e["type"] == "approval")
    assert (approval["approved"], approval["message"]) == (False, "too far north")
    assert tool_results(server.requests[-1])["oslo"] == "A person declined this tool call: too far north"
    assert ran(effects) == []


@pytest.mark.parametrize(
    "decision",
    [
        {"approve": "no"},
        {"approve": 1},
        {"approved": None},
        {"message": "fine"},
        {"approve": True, "city": "Bergen"},
        {"approve": True, "args": "city=Bergen"},
        3,
        None,
        ["yes"],
    ],
    ids=repr,
)
async def test_a_malformed_decision_is_refused_and_nothing_runs(
    server: TestServer, client: ModelClient, store: Path, effects: Path, decision: Any
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(shop, OSLO, session(store), client=client)
    with pytest.raises(ApprovalError, match="approval for 'oslo'"):
        await run_agent(shop, [], session(store), approvals={"oslo": decision}, client=client)
    assert ran(effects) == [] and len(server.requests) == 1
    assert [p.tool_call_id for p in await pending_interruptions(shop, session(store))] == ["oslo"]


async def test_the_approved_spelling_is_accepted(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")), Reply.text("Sunny."))
    await run_agent(shop, OSLO, session(store), client=client)
    result = await run_agent(shop, [], session(store), approvals={"oslo": {"approved": True}}, client=client)
    assert result["status"] == "completed" and ran(effects) == [{"city": "Oslo"}]


# -- the request and the report ------------------------------------------------------------------


def _completion(message: dict[str, Any], prompt: int, completion: int) -> Reply:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    body = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}], "usage": usage}
    return Reply.raw(200, json.dumps(body))


def _streamed(message: dict[str, Any], prompt: int, completion: int) -> Reply:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    delta = {"role": "assistant", **message}
    if "tool_calls" in delta:
        delta["tool_calls"] = [{"index": n, **c} for n, c in enumerate(delta["tool_calls"])]
    chunks = [{"choices": [{"index": 0, "delta": delta}]}, {"choices": [], "usage": usage}]
    body = "".join(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', **c})}\n\n" for c in chunks)
    return Reply.raw(200, body + "data: [DONE]\n\n", content_type="text/event-stream")


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_is_summed_over_the_runs_model_calls(
    server: TestServer, client: ModelClient, store: Path, stream: bool
) -> None:
    async def lookup(city: str) -> str:
        return f"sunny in {city}"

    agent = Agent(name="W", model="m", tools=[lookup])
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Lima"}'}}
    reply = _streamed if stream else _completion
    server.script(reply({"content": None, "tool_calls": [call]}, 10, 3), reply({"content": "Sunny in Lima."}, 20, 5))
    events = await events_of(agent, PAY, FileSession("W", f"usage-{stream}", None, store), stream=stream, client=client)
    expected = {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
    assert events[-1]["type"] == "run_end" and events[-1]["usage"] == expected
    assert events[-1]["final_output"] == "Sunny in Lima."


async def test_the_result_reports_the_summed_usage(server: TestServer, client: ModelClient, store: Path) -> None:
    async def lookup(city: str) -> str:
        return f"sunny in {city}"

    agent = Agent(name="W", model="m", tools=[lookup])
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Lima"}'}}
    server.script(_completion({"content": None, "tool_calls": [call]}, 7, 1), _completion({"content": "ok"}, 9, 2))
    result = await run_agent(agent, PAY, FileSession("W", "usage", None, store), client=client)
    tokens = {"prompt_tokens": 16, "completion_tokens": 3, "total_tokens": 19}
    assert {k: result["usage"][k] for k in tokens} == tokens
    assert result["usage"]["by_model"] == {"m": {**tokens, "model_calls": 2}}


async def test_model_settings_are_sent_with_every_request(server: TestServer, client: ModelClient, store: Path) -> None:
    async def lookup(city: str) -> str:
        return f"sunny in {city}"

    settings = {"temperature": 0.25, "max_tokens": 64, "top_p": 0.5}
    agent = Agent(name="W", model="m", tools=[lookup], model_settings=settings)
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})), Reply.text("ok"))
    for stream in (False, True):
        await run_agent(agent, PAY, FileSession("W", f"settings-{stream}", None, store), stream=stream, client=client)
        server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})), Reply.text("ok"))
    assert len(server.requests) == 4
    for request in server.requests:
        assert {k: request.body.get(k) for k in settings} == settings


def test_tool_names_stop_at_the_apis_64_characters() -> None:
    def lookup() -> str:
        return ""

    assert tool(lookup, name="a" * 64).name == "a" * 64
    with pytest.raises(ConfigurationError, match="not allowed"):
        tool(lookup, name="a" * 65)
