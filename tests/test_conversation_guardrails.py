"""Guardrails on what goes into an agent (user messages) and what comes out (its answer), streaming included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timestep import (
    Agent,
    AnswerGuardrail,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    MessageGuardrail,
    ModelClient,
    pending_interruptions,
    run_agent,
)
from timestep.approvals import load
from timestep.testing import Reply, TestServer


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def session(store: Path, conversation: str = "guarded") -> FileSession:
    return FileSession("Guarded", conversation, "Be helpful.", storage_dir=store)


def stored_text(store: Path) -> str:
    return "\n".join(p.read_text() for p in store.rglob("*.jsonl"))


# -- messages --------------------------------------------------------------------------------------


def no_passwords(text: str) -> GuardrailResult | None:
    if "password" in text.lower():
        return GuardrailResult.block("messages must not contain passwords")
    return None


def redact_cards(text: str) -> GuardrailResult:
    import re

    return GuardrailResult.replace(re.sub(r"\b\d{4}(?:[ -]?\d{4}){3}\b", "[card]", text))


async def test_a_blocked_message_never_reaches_the_model(server: TestServer, client: ModelClient, store: Path) -> None:
    agent = Agent(name="Guarded", model="m", guardrails=[MessageGuardrail(no_passwords)])
    result = await run_agent(agent, ask("my password is hunter2"), session(store), client=client)
    assert result["status"] == "blocked"
    assert result["final_output"] == "messages must not contain passwords"
    assert server.requests == []
    messages, journal = await load(session(store))
    assert messages == [{"role": "system", "content": "Be helpful."}]
    assert journal == [{"journal": "message_blocked", "guardrail": "no_passwords", "reason": result["final_output"]}]
    assert "hunter2" not in stored_text(store)


async def test_a_redacted_message_is_what_the_model_and_the_store_get(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Guarded", model="m", guardrails=[MessageGuardrail(redact_cards)])
    server.script(Reply.text("Noted."))
    events = [
        e
        async for e in run_agent(
            agent, ask("card 4111 1111 1111 1111 please"), session(store), result_processor=None, client=client
        )
    ]
    assert server.requests[0].messages[-1] == {"role": "user", "content": "card [card] please"}
    assert "4111" not in stored_text(store)
    (acted,) = [e for e in events if e["type"] == "guardrail"]
    assert acted["stage"] == "message" and acted["action"] == "replace" and acted["guardrail"] == "redact_cards"


async def test_a_message_guardrail_that_fails_fails_closed(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def broken(text: str) -> None:
        raise RuntimeError("classifier down")

    agent = Agent(name="Guarded", model="m", guardrails=[MessageGuardrail(broken)])
    result = await run_agent(agent, ask("hello"), session(store), client=client)
    assert result["status"] == "blocked" and "classifier down" in result["final_output"]
    assert server.requests == []


AGENT_MODULE = """
from timestep import Agent, GuardrailInterrupt, MessageGuardrail

def ask_about_refunds(text):
    if "refund" in text.lower():
        raise GuardrailInterrupt("A refund request: let the agent see it?")

agent = Agent(name="Guarded", model="m", instructions="Be helpful.", guardrails=[MessageGuardrail(ask_about_refunds)])
"""

RESUME = """
import asyncio, json, sys
from timestep import FileSession, ModelClient, pending_interruptions, run_agent
from guarded import agent

async def main():
    session = FileSession("Guarded", "paused", "Be helpful.", storage_dir=sys.argv[2])
    (waiting,) = await pending_interruptions(agent, session)
    decision = {"approve": True, "args": {"content": "I would like a refund for order 7"}}
    result = await run_agent(agent, [], session, approvals={waiting.tool_call_id: decision},
                             client=ModelClient(base_url=sys.argv[1], api_key="k"))
    print(json.dumps({"status": result["status"], "final": result["final_output"], "kind": waiting.kind}))

asyncio.run(main())
"""


async def test_a_paused_message_is_approved_in_another_process(
    server: TestServer, client: ModelClient, store: Path, tmp_path: Path
) -> None:
    (tmp_path / "guarded.py").write_text(AGENT_MODULE)
    (tmp_path / "resume.py").write_text(RESUME)
    sys.path.insert(0, str(tmp_path))
    try:
        from guarded import agent  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    paused = await run_agent(agent, ask("refund please"), session(store, "paused"), client=client)
    assert paused["status"] == "interrupted"
    (waiting,) = paused["interruptions"]
    assert waiting["kind"] == "message" and waiting["args"] == {"content": "refund please"}
    assert server.requests == []
    with pytest.raises(Exception, match="awaiting approval"):
        await run_agent(agent, ask("another message"), session(store, "paused"), client=client)

    server.script(Reply.text("Refund started."))
    proc = subprocess.run(
        [sys.executable, "resume.py", server.base_url, str(store)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "completed", "final": "Refund started.", "kind": "message"}
    assert server.requests[0].messages[-1] == {"role": "user", "content": "I would like a refund for order 7"}
    assert await pending_interruptions(agent, session(store, "paused")) == []
    messages = await session(store, "paused").get_items()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


async def test_a_paused_message_declined_stops_before_the_model(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def ask_first(text: str) -> None:
        raise GuardrailInterrupt("Let it through?")

    agent = Agent(name="Guarded", model="m", guardrails=[MessageGuardrail(ask_first)])
    paused = await run_agent(agent, ask("hi"), session(store), client=client)
    mid = paused["interruptions"][0]["tool_call_id"]
    done = await run_agent(agent, [], session(store), approvals={mid: "not now"}, client=client)
    assert done["status"] == "blocked" and done["final_output"] == "A person declined this message: not now"
    assert server.requests == []
    assert [m["role"] for m in await session(store).get_items()] == ["system"]


# -- answers ---------------------------------------------------------------------------------------

STORY = "The sky is blue today. Birds are singing. The launch code is 0000. Please keep it safe."


def no_codes(text: str) -> GuardrailResult | None:
    if "launch code" in text.lower():
        return GuardrailResult.block("the answer contains a launch code")
    return None


def ask_about_wires(text: str) -> None:
    if "wire" in text.lower():
        raise GuardrailInterrupt("A wire: let the agent see it?")


def chained() -> Agent:
    """One guardrail before the one that asks (blocks passwords), one after it (redacts cards)."""
    chain = [MessageGuardrail(no_passwords), MessageGuardrail(ask_about_wires), MessageGuardrail(redact_cards)]
    return Agent(name="Guarded", model="m", instructions="Be helpful.", guardrails=chain)


async def test_an_edited_message_goes_through_every_message_guardrail_again(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = chained()

    async def paused(conversation: str) -> str:
        result = await run_agent(agent, ask("wire 500 to Ada"), session(store, conversation), client=client)
        assert result["status"] == "interrupted"
        return str(result["interruptions"][0]["tool_call_id"])

    # An edit that a guardrail before the approving one refuses: blocked, the model never sees it.
    mid = await paused("before")
    edit = {"approve": True, "args": {"content": "wire 500, my password is hunter2"}}
    result = await run_agent(agent, [], session(store, "before"), approvals={mid: edit}, client=client)
    assert result["status"] == "blocked" and result["final_output"] == "messages must not contain passwords"
    assert server.requests == [] and "hunter2" not in json.dumps(await session(store, "before").get_items())
    # One that a guardrail after it redacts; the one that asked is not asked again about the edit.
    mid = await paused("after")
    server.script(Reply.text("Wiring."))
    edit = {"approve": True, "args": {"content": "wire 50 from card 4111 1111 1111 1111"}}
    result = await run_agent(agent, [], session(store, "after"), approvals={mid: edit}, client=client)
    assert result["status"] == "completed"
    assert server.requests[-1].messages[-1]["content"] == "wire 50 from card [card]"
    # Approved as it was: the guardrails after the one that asked still see it.
    mid = await paused("as-is")
    await run_agent(agent, [], session(store, "as-is"), approvals={mid: True}, client=client)
    assert await pending_interruptions(agent, session(store, "as-is")) == []


async def test_an_edited_message_can_pause_again_for_another_guardrail(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def ask_about_refunds(text: str) -> None:
        if "refund" in text.lower():
            raise GuardrailInterrupt("A refund: let the agent see it?")

    chain = [MessageGuardrail(ask_about_refunds), MessageGuardrail(ask_about_wires)]
    agent = Agent(name="Guarded", model="m", instructions="Be helpful.", guardrails=chain)
    first = await run_agent(agent, ask("wire 5"), session(store), client=client)
    mid = first["interruptions"][0]["tool_call_id"]
    edit = {"approve": True, "args": {"content": "wire 5 as a refund"}}
    again = await run_agent(agent, [], session(store), approvals={mid: edit}, client=client)
    assert again["status"] == "interrupted" and server.requests == []
    [waiting] = await pending_interruptions(agent, session(store))
    assert waiting.args == {"content": "wire 5 as a refund"} and waiting.prompt == "A refund: let the agent see it?"
    server.script(Reply.text("Done."))
    done = await run_agent(agent, [], session(store), approvals={waiting.tool_call_id: True}, client=client)
    assert done["status"] == "completed"
    assert server.requests[-1].messages[-1]["content"] == "wire 5 as a refund"


async def test_a_streamed_answer_blocked_part_way_never_shows_the_blocked_text(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    agent = Agent(name="Guarded", model="m", guardrails=[AnswerGuardrail(no_codes)])
    server.script(Reply.text(STORY))
    events = [e async for e in run_agent(agent, ask("story"), session(store), True, None, client=client)]
    shown = "".join(e["delta"] for e in events if e["type"] == "content_delta")
    assert shown == "The sky is blue today. Birds are singing."
    assert "launch" not in shown and "0000" not in shown
    (blocked,) = [e for e in events if e["type"] == "guardrail"]
    assert blocked["action"] == "block" and blocked["stage"] == "answer" and blocked["released"] == len(shown)
    end = events[-1]
    assert end["type"] == "run_end" and end["status"] == "blocked"
    messages, journal = await load(session(store))
    assert messages[-1] == {
        "role": "assistant",
        "content": "I can't give that answer: the answer contains a launch code.",
    }
    assert journal[-1]["journal"] == "answer_blocked" and journal[-1]["content"] == STORY


async def test_without_answer_guardrails_every_delta_streams_as_it_comes(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    server.script(Reply.text(STORY))
    events = [
        e
        async for e in run_agent(
            Agent(name="Guarded", model="m"), ask("story"), session(store), True, None, client=client
        )
    ]
    deltas = [e["delta"] for e in events if e["type"] == "content_delta"]
    assert "".join(deltas) == STORY and len(deltas) == len(STORY.split(" "))


@pytest.mark.parametrize("checkpoint", [10, "answer"])
async def test_checkpoints_by_size_or_whole_answer(
    server: TestServer, client: ModelClient, store: Path, checkpoint: Any
) -> None:
    seen: list[str] = []

    def record(text: str) -> None:
        seen.append(text)

    agent = Agent(name="Guarded", model="m", guardrails=[AnswerGuardrail(record, checkpoint=checkpoint)])
    server.script(Reply.text(STORY))
    events = [e async for e in run_agent(agent, ask("story"), session(store), True, None, client=client)]
    assert "".join(e["delta"] for e in events if e["type"] == "content_delta") == STORY
    assert seen[-1] == STORY
    if checkpoint == "answer":
        assert seen == [STORY]
    else:
        assert all(len(t) % 10 == 0 for t in seen[:-1]) and len(seen) > 3


async def test_an_answer_can_be_redacted_or_retried(server: TestServer, client: ModelClient, store: Path) -> None:
    asked = []

    def polite(text: str) -> GuardrailResult | None:
        asked.append(text)
        if "stupid" in text:
            return GuardrailResult.retry("be polite")
        return GuardrailResult.replace(text.replace("0000", "****"))

    agent = Agent(name="Guarded", model="m", guardrails=[AnswerGuardrail(polite)])
    server.script(Reply.text("That is a stupid question."), Reply.text("The code is 0000."))
    result = await run_agent(agent, ask("code?"), session(store), client=client)
    assert result["status"] == "completed" and result["final_output"] == "The code is ****."
    second = server.requests[1].messages
    assert second[-2] == {"role": "assistant", "content": "That is a stupid question."}
    assert second[-1]["role"] == "user" and "be polite" in second[-1]["content"]
    messages = await session(store).get_items()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == "The code is ****." and "0000" not in json.dumps(messages)


async def test_an_answer_guardrail_that_fails_fails_closed(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    def broken(text: str) -> None:
        raise ValueError("no verdict")

    agent = Agent(name="Guarded", model="m", guardrails=[AnswerGuardrail(broken)])
    server.script(Reply.text("Hello there."))
    events = [e async for e in run_agent(agent, ask("hi"), session(store), True, None, client=client)]
    assert not [e for e in events if e["type"] == "content_delta"]
    assert events[-1]["status"] == "blocked" and "no verdict" in events[-1]["final_output"]
