"""Whole agent runs on every store, over real HTTP against the project's test server.

The contract tests prove each store keeps items; these prove the run loop's flows that depend on
what a store gives back: a tool call and its journal, a pause for approval that is resumed by a new
session object (and by another process), and a handoff whose delegate lands in the same store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests import stores_fixtures as fixtures
from tests.stores_fixtures import child, finish, payment_agent, unique
from timestep import Agent, ModelClient, RunConfig, run_agent
from timestep.history import last_messages
from timestep.sessions import Store
from timestep.testing import Reply, TestServer, ToolCall

store_and_spec = fixtures.store_and_spec  # one store of each kind per test
pg_prefix = fixtures.pg_prefix

StoreAndSpec = tuple[Store, str]
WEATHER_INSTRUCTIONS = "You report the weather."


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny in {city}"


def weather_agent() -> Agent:
    return Agent(name="Weather", model="test-model", instructions=WEATHER_INSTRUCTIONS, tools=[get_weather])


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def shape(items: list[dict[str, Any]]) -> list[str]:
    """Each item's role, or its journal kind: the skeleton of a stored conversation.

    ``usage`` records (one per model reply, see tests/test_usage.py) are left out.
    """
    return [item.get("role") or f"journal:{item.get('journal')}" for item in items if item.get("journal") != "usage"]


async def test_a_tool_run_is_stored_completely(
    store_and_spec: StoreAndSpec, server: TestServer, client: ModelClient
) -> None:
    store, _ = store_and_spec
    conv = unique()
    server.script(
        Reply.tool_calls(ToolCall("get_weather", {"city": "Paris"}, id="call_w")),
        Reply.text("It is sunny in Paris."),
    )
    agent = weather_agent()
    result = await run_agent(
        agent, ask("Weather in Paris?"), store.session("Weather", conv, agent.instructions), client=client
    )
    assert result["status"] == "completed", result
    assert result["final_output"] == "It is sunny in Paris."
    assert result["tool_calls"][0]["result"] == "Sunny in Paris"

    stored = store.session("Weather", conv, agent.instructions)
    items = await stored.get_items()
    assert shape(items) == ["system", "user", "assistant", "tool", "assistant"]
    assert shape(await stored.get_journal()) == ["journal:started"]
    assert items[0] == {"role": "system", "content": WEATHER_INSTRUCTIONS}
    assert items[3] == {"role": "tool", "tool_call_id": "call_w", "content": "Sunny in Paris"}
    # The second request carried the whole conversation, journal records left out.
    assert shape(server.requests[-1].messages) == ["system", "user", "assistant", "tool"]

    # A follow-up in a fresh session object continues the same conversation.
    server.script(Reply.text("Still sunny."))
    again = await run_agent(agent, ask("And now?"), store.session("Weather", conv, agent.instructions), client=client)
    assert again["final_output"] == "Still sunny."
    assert len(server.requests[-1].messages) == 6


async def test_an_approval_pause_is_resumed_by_a_new_session_object(
    store_and_spec: StoreAndSpec, server: TestServer, client: ModelClient, tmp_path: Path
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    conv = unique()
    server.script(
        Reply.tool_calls(ToolCall("send_money", {"to": "bob", "amount": 5}, id="call_pay")),
        Reply.text("Sent 5 to bob."),
    )
    paused = await run_agent(agent, ask("Pay bob 5"), store.session("Payer", conv, agent.instructions), client=client)
    assert paused["status"] == "interrupted", paused
    assert [i["tool_call_id"] for i in paused["interruptions"]] == ["call_pay"]
    assert paused["interruptions"][0]["args"] == {"to": "bob", "amount": 5}
    assert not ledger.exists()  # nothing ran before the person said yes

    resumed = await run_agent(
        agent, [], store.session("Payer", conv, agent.instructions), approvals={"call_pay": True}, client=client
    )
    assert resumed["status"] == "completed", resumed
    assert resumed["final_output"] == "Sent 5 to bob."
    assert ledger.read_text().splitlines() == ['{"to": "bob", "amount": 5}']

    stored = store.session("Payer", conv)
    assert shape(await stored.get_items()) == ["system", "user", "assistant", "tool", "assistant"]
    assert shape(await stored.get_journal()) == ["journal:interrupt", "journal:decision", "journal:started"]
    # Running again with nothing new neither calls the model nor the tool.
    before = len(server.requests)
    done = await run_agent(agent, [], store.session("Payer", conv, agent.instructions), client=client)
    assert done["status"] == "completed" and done["final_output"] == "Sent 5 to bob."
    assert len(server.requests) == before
    assert len(ledger.read_text().splitlines()) == 1


RESUMER = """
from pathlib import Path
from timestep import ModelClient, run_agent
from tests.stores_fixtures import payment_agent

async def main():
    conv, ledger, base_url = sys.argv[4], sys.argv[5], sys.argv[6]
    s = store()
    agent = payment_agent(Path(ledger))
    client = ModelClient(base_url=base_url, api_key="test")
    result = await run_agent(agent, [], s.session("Payer", conv, agent.instructions),
                             approvals={"call_pay": True}, client=client)
    await client.aclose()
    await s.aclose()
    print(json.dumps({"status": result["status"], "final_output": result["final_output"]}), flush=True)

asyncio.run(main())
"""


async def test_an_approval_pause_is_resumed_by_another_process(
    store_and_spec: StoreAndSpec,
    pg_prefix: str,
    server: TestServer,
    client: ModelClient,
    tmp_path: Path,
    request: Any,
) -> None:
    store, spec = store_and_spec
    kind = request.node.callspec.params["store_and_spec"]
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    conv = unique()
    server.script(
        Reply.tool_calls(ToolCall("send_money", {"to": "ann", "amount": 12}, id="call_pay")),
        Reply.text("Sent 12 to ann."),
    )
    paused = await run_agent(agent, ask("Pay ann 12"), store.session("Payer", conv, agent.instructions), client=client)
    assert paused["status"] == "interrupted", paused

    proc = child(RESUMER, kind, spec, pg_prefix, conv, str(ledger), server.base_url)
    out = await asyncio.to_thread(finish, proc)
    assert json.loads(out.strip().splitlines()[-1]) == {"status": "completed", "final_output": "Sent 12 to ann."}
    assert ledger.read_text().splitlines() == ['{"to": "ann", "amount": 12}']
    stored = store.session("Payer", conv)
    assert shape(await stored.get_items())[-2:] == ["tool", "assistant"]
    assert shape(await stored.get_journal())[-2:] == ["journal:decision", "journal:started"]


async def test_a_handoff_puts_the_delegate_in_the_same_store(
    store_and_spec: StoreAndSpec, server: TestServer, client: ModelClient
) -> None:
    store, _ = store_and_spec
    refunds: list[int] = []

    def refund(order: int) -> str:
        """Refund an order."""
        refunds.append(order)
        return f"order {order} refunded"

    billing = Agent(name="Billing", model="test-model", instructions="You handle refunds.", tools=[refund])
    triage = Agent(name="Triage", model="test-model", instructions="You route requests.", handoffs=[billing])
    conv = unique()
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_billing", {"message": "Refund order 7"}, id="call_h")),
        Reply.tool_calls(ToolCall("refund", {"order": 7}, id="call_r")),
        Reply.text("Refunded order 7."),
        Reply.text("Billing refunded order 7."),
    )
    result = await run_agent(
        triage, ask("Refund my order 7"), store.session("Triage", conv, triage.instructions), client=client
    )
    assert result["status"] == "completed", result
    assert result["final_output"] == "Billing refunded order 7."
    assert refunds == [7]

    delegate_conv = f"{conv}~triage"
    listed = {(c.agent_name, c.conversation_id): c.message_count for c in await store.list_conversations()}
    assert ("Triage", conv) in listed
    assert ("Billing", delegate_conv) in listed
    assert listed[("Billing", delegate_conv)] == 5  # system, user, assistant (call), tool, assistant

    sub = await store.session("Billing", delegate_conv).get_items()
    assert shape(sub) == ["system", "user", "assistant", "tool", "assistant"]
    assert shape(await store.session("Billing", delegate_conv).get_journal()) == [
        "journal:handoff_received",
        "journal:started",
    ]
    assert sub[0] == {"role": "system", "content": "You handle refunds."}
    assert sub[1] == {"role": "user", "content": "Refund order 7"}
    top = await store.session("Triage", conv).get_items()
    assert {"role": "tool", "tool_call_id": "call_h", "content": "Refunded order 7."} in top
    # The delegate's request went out with its own instructions, not the caller's.
    assert server.requests[1].messages[0] == {"role": "system", "content": "You handle refunds."}


async def test_a_history_policy_trims_the_request_but_not_the_store(
    store_and_spec: StoreAndSpec, server: TestServer, client: ModelClient
) -> None:
    store, _ = store_and_spec
    agent = weather_agent()
    conv = unique()
    config = RunConfig(history=last_messages(1))
    for n in range(3):
        server.script(Reply.text(f"answer {n}"))
        result = await run_agent(
            agent,
            ask(f"question {n}"),
            store.session("Weather", conv, agent.instructions),
            client=client,
            config=config,
        )
        assert result["final_output"] == f"answer {n}"
    sent = server.requests[-1].messages
    assert sent == [{"role": "system", "content": WEATHER_INSTRUCTIONS}, {"role": "user", "content": "question 2"}]
    assert len(await store.session("Weather", conv).get_items()) == 7


async def test_an_approval_inside_a_delegate_is_resumed_through_the_caller(
    store_and_spec: StoreAndSpec, server: TestServer, client: ModelClient, tmp_path: Path
) -> None:
    store, _ = store_and_spec
    payer = payment_agent(tmp_path / "ledger.jsonl")
    front = Agent(name="Front Desk", model="test-model", instructions="You route requests.", handoffs=[payer])
    conv = unique()
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_payer", {"message": "Pay carl 3"}, id="call_h")),
        Reply.tool_calls(ToolCall("send_money", {"to": "carl", "amount": 3}, id="call_pay")),
        Reply.text("Sent 3 to carl."),
        Reply.text("Done: carl has been paid."),
    )
    paused = await run_agent(
        front, ask("Pay carl 3"), store.session("Front Desk", conv, front.instructions), client=client
    )
    assert paused["status"] == "interrupted", paused
    assert paused["interruptions"][0]["agent"] == "Payer"

    resumed = await run_agent(
        front, [], store.session("Front Desk", conv, front.instructions), approvals={"call_pay": True}, client=client
    )
    assert resumed["status"] == "completed", resumed
    assert resumed["final_output"] == "Done: carl has been paid."
    assert (tmp_path / "ledger.jsonl").read_text().splitlines() == ['{"to": "carl", "amount": 3}']
    listed = {(c.agent_name, c.conversation_id) for c in await store.list_conversations()}
    assert {("Front Desk", conv), ("Payer", f"{conv}~front_desk")} <= listed
