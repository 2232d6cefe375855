"""Tool results are stored in call order, also when a call of the reply pauses for a person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timestep import Agent, FileSession, GuardrailInterrupt, InputGuardrail, ModelClient, run_agent
from timestep.approvals import load
from timestep.testing import Reply, TestServer, ToolCall


async def test_results_after_a_paused_call_wait_for_it(server: TestServer, client: ModelClient, store: Path) -> None:
    ran: list[str] = []

    def note(what: str) -> str:
        ran.append(what)
        return f"noted {what}"

    def ask_about_first(tool_name: str, args: dict[str, Any]) -> None:
        if args["what"] == "first":
            raise GuardrailInterrupt("Note the first?", tool_name, args)

    agent = Agent(name="A", model="m", tools=[note], guardrails=[InputGuardrail(ask_about_first)])
    session = FileSession("A", "order", storage_dir=store)
    server.script(
        Reply.tool_calls(
            ToolCall("note", {"what": "first"}),
            ToolCall("note", {"what": "second"}),
            ToolCall("note", {"what": "third"}),
        )
    )
    paused = await run_agent(agent, [{"role": "user", "content": "go"}], session, client=client)
    assert paused["status"] == "interrupted"
    assert sorted(ran) == ["second", "third"]
    messages, journal = await load(session)
    assert [m for m in messages if m["role"] == "tool"] == []  # nothing stored ahead of the paused call
    kept = [r["content"] for r in journal if r["journal"] == "result"]
    assert sorted(kept) == ["noted second", "noted third"]

    server.script(Reply.text("all noted"))
    call_id = paused["interruptions"][0]["tool_call_id"]
    done = await run_agent(agent, [], session, client=client, approvals={call_id: True})
    assert done["status"] == "completed"
    assert sorted(ran) == ["first", "second", "third"]  # the held results were not run again
    messages, _ = await load(session)
    assistant = next(m for m in messages if m.get("tool_calls"))
    tool_messages = [m for m in messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == [c["id"] for c in assistant["tool_calls"]]
    assert [m["content"] for m in tool_messages] == ["noted first", "noted second", "noted third"]
    # ...and the model was sent them in that order.
    assert [m["content"] for m in server.requests[-1].messages if m["role"] == "tool"] == [
        "noted first",
        "noted second",
        "noted third",
    ]
