"""Human approval: inline, paused and resumed in another process, edited, forged, and crash-proof."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timestep import ApprovalError, Interruption, ModelClient, pending_interruptions, run_agent
from timestep.approvals import load
from timestep.testing import Reply, TestServer, ToolCall
from timestep.testing.server import RecordedRequest

from .approval_app import CrashingSession, agent
from .test_run import valid_for_api

APP = Path(__file__).with_name("approval_app.py")
OSLO = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.jsonl"
    monkeypatch.setenv("EFFECTS", str(path))
    monkeypatch.delenv("KILL_AT", raising=False)
    monkeypatch.delenv("KILL_IN", raising=False)
    return path


def ran(effects: Path, name: str | None = None) -> list[Any]:
    if not effects.exists():
        return []
    rows = [json.loads(line) for line in effects.read_text().splitlines()]
    return [detail for tool_name, detail in rows if name is None or tool_name == name]


def session(store: Path, conversation: str = "conv") -> CrashingSession:
    return CrashingSession(agent.name, conversation, agent.instructions, store)


def app(server: TestServer, store: Path, mode: str, approvals: Any = None, **env: str) -> dict[str, Any] | None:
    """Run the app in a fresh process; its result, or None if it was killed."""
    argv = [sys.executable, str(APP), server.base_url, str(store), "conv", mode]
    if approvals is not None:
        argv.append(json.dumps(approvals))
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False)
    if proc.returncode == -9:
        return None
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def tool_results(request: RecordedRequest) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in request.messages if m["role"] == "tool"}


async def test_inline_handler_approves_and_declines(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    asked: list[Interruption] = []

    def approve(interruption: Interruption) -> bool:
        asked.append(interruption)
        return True

    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="c1")), Reply.text("Sunny in Oslo."))
    result = await run_agent(agent, OSLO, session(store, "a"), approval_handler=approve, client=client)
    assert result["status"] == "completed" and ran(effects, "get_weather") == [{"city": "Oslo"}]
    assert asked[0].prompt == "Look up weather for Oslo?" and asked[0].tool_call_id == "c1"
    assert asked[0].args == {"city": "Oslo"} and asked[0].agent == "Shop Assistant"

    async def decline(interruption: Interruption) -> str:
        return "not today"

    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="c2")), Reply.text("OK, I won't."))
    result = await run_agent(agent, OSLO, session(store, "b"), approval_handler=decline, client=client)
    assert result["status"] == "completed" and len(ran(effects, "get_weather")) == 1
    assert (
        "declined" in tool_results(server.requests[-1])["c2"] and "not today" in tool_results(server.requests[-1])["c2"]
    )


async def test_pause_then_resume_in_another_process(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Lima"}, id="lima"), ToolCall("get_weather", {"city": "Oslo"}, id="oslo")
        ),
    )
    events = [e async for e in run_agent(agent, OSLO, session(store), result_processor=None, client=client)]
    interrupt = next(e for e in events if e["type"] == "interrupt")
    assert (interrupt["kind"], interrupt["depth"]) == ("approval", 0)
    assert (interrupt["tool_call_id"], interrupt["name"], interrupt["arguments"]) == (
        "oslo",
        "get_weather",
        {"city": "Oslo"},
    )
    assert interrupt["prompt"] == "Look up weather for Oslo?" and interrupt["agent"] == "Shop Assistant"
    end = events[-1]
    assert end["status"] == "interrupted" and [i["tool_call_id"] for i in end["interruptions"]] == ["oslo"]
    # The call that needed nobody's approval already ran and keeps its result.
    assert ran(effects, "get_weather") == [{"city": "Lima"}]
    assert any(i.get("tool_call_id") == "lima" for i in await session(store).get_items())

    server.script(Reply.text("Sunny in Lima and Oslo."))
    result = app(server, store, "resume", {"oslo": True})
    assert result is not None and result["status"] == "completed"
    assert result["final_output"] == "Sunny in Lima and Oslo."
    assert ran(effects, "get_weather") == [{"city": "Lima"}, {"city": "Oslo"}]
    assert tool_results(server.requests[-1]) == {
        "lima": '{"result": "Sunny in Lima"}',
        "oslo": '{"result": "Sunny in Oslo"}',
    }
    assert valid_for_api(await session(store).get_items())


async def test_decline_with_a_message_in_another_process(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    paused = await run_agent(agent, OSLO, session(store), client=client)
    assert paused["status"] == "interrupted"
    server.script(Reply.text("Understood."))
    result = app(server, store, "resume", {"oslo": "declined: not today"})
    assert result is not None and result["final_output"] == "Understood."
    assert ran(effects) == []
    told = tool_results(server.requests[-1])["oslo"]
    assert "declined" in told and "not today" in told


async def test_two_pending_approvals_decided_one_at_a_time(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Oslo"}, id="o1"), ToolCall("get_weather", {"city": "OSLO"}, id="o2")
        )
    )
    first = await run_agent(agent, OSLO, session(store), client=client)
    assert sorted(i["tool_call_id"] for i in first["interruptions"]) == ["o1", "o2"]

    second = await run_agent(agent, [], session(store), approvals={"o2": True}, client=client)
    assert second["status"] == "interrupted" and [i["tool_call_id"] for i in second["interruptions"]] == ["o1"]
    assert ran(effects) == [{"city": "OSLO"}]

    server.script(Reply.text("Only one lookup."))
    third = await run_agent(agent, [], session(store), approvals={"o1": False}, client=client)
    assert third["status"] == "completed" and ran(effects) == [{"city": "OSLO"}]
    items = await session(store).get_items()
    assert valid_for_api(items)
    tool_order = [i["tool_call_id"] for i in items if i.get("role") == "tool"]
    assert tool_order == ["o1", "o2"]  # call order, although o2 finished a run earlier


async def test_approval_with_edited_arguments(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(agent, OSLO, session(store), client=client)
    server.script(Reply.text("Sunny in Bergen."))
    result = await run_agent(
        agent, [], session(store), approvals={"oslo": {"approve": True, "args": {"city": "Bergen"}}}, client=client
    )
    assert result["status"] == "completed"
    assert ran(effects) == [{"city": "Bergen"}]
    items = await session(store).get_items()
    decision = next(i for i in await session(store).get_journal() if i.get("journal") == "decision")
    assert decision["original_args"] == {"city": "Oslo"} and decision["args"] == {"city": "Bergen"}
    call = next(i for i in items if i.get("tool_calls"))["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}  # what the model asked stays recorded
    assert result["tool_calls"][0]["arguments"] == {"city": "Bergen"}


async def test_forged_replayed_and_tampered_approvals_run_nothing(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(agent, OSLO, session(store), client=client)

    with pytest.raises(ApprovalError, match="no tool call 'call_forged' is awaiting approval"):
        await run_agent(agent, [], session(store), approvals={"call_forged": True}, client=client)
    with pytest.raises(ApprovalError, match="awaiting approval"):
        await run_agent(agent, [{"role": "user", "content": "and Paris?"}], session(store), client=client)

    # Someone edits the stored call's arguments after the approval was asked for.
    path = session(store).path
    path.write_text(path.read_text().replace('{\\"city\\": \\"Oslo\\"}', '{\\"city\\": \\"Paris\\"}'))
    with pytest.raises(ApprovalError, match="no longer matches"):
        await run_agent(agent, [], session(store), approvals={"oslo": True}, client=client)
    assert ran(effects) == []

    # A settled call cannot be approved again.
    path.write_text(path.read_text().replace('{\\"city\\": \\"Paris\\"}', '{\\"city\\": \\"Oslo\\"}'))
    server.script(Reply.text("Done."))
    await run_agent(agent, [], session(store), approvals={"oslo": True}, client=client)
    with pytest.raises(ApprovalError, match="no tool call 'oslo' is awaiting approval"):
        await run_agent(agent, [], session(store), approvals={"oslo": True}, client=client)
    assert ran(effects) == [{"city": "Oslo"}]


def crash_points() -> list[tuple[str, str]]:
    points = [("KILL_AT", f"{n}:{when}") for n in range(1, 10) for when in ("before", "after")]
    return [*points, ("KILL_IN", "charge"), ("KILL_IN", "notify"), ("KILL_IN", "get_weather")]


@pytest.mark.parametrize(("var", "value"), crash_points())
def test_sigkill_anywhere_then_resume(server: TestServer, store: Path, effects: Path, var: str, value: str) -> None:
    def model(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["role"] == "tool":
            return Reply.text("All done.")
        return Reply.tool_calls(
            ToolCall("charge", {"amount": 5}, id="pay"),
            ToolCall("notify", {"message": "charged"}, id="tell"),
            ToolCall("get_weather", {"city": "Lima"}, id="look"),
        )

    server.responder = model
    first = app(server, store, "start", **{var: value})
    assert first is None, "the process should have been killed"

    result = app(server, store, "resume")
    assert result is not None
    if result["status"] == "interrupted":
        # Only a non-idempotent call whose outcome is unknown may pause; a person declines the re-run.
        assert {i["kind"] for i in result["interruptions"]} == {"unknown_outcome"}
        assert {i["tool_call_id"] for i in result["interruptions"]} <= {"pay", "look"}
        declines = {i["tool_call_id"]: "declined: it may have gone through" for i in result["interruptions"]}
        result = app(server, store, "resume", declines)
        assert result is not None
    assert result["status"] == "completed" and result["final_output"] == "All done."

    items = [json.loads(line) for line in session(store).path.read_text().splitlines()]
    assert valid_for_api(items)
    results = {i["tool_call_id"]: i["content"] for i in items if i.get("role") == "tool"}
    assert sorted(results) == ["look", "pay", "tell"]
    expected = {"pay": ("charge", "charged 5"), "tell": ("notify", "notified"), "look": ("get_weather", None)}
    for call_id, (tool_name, real) in expected.items():
        count = len(ran(effects, tool_name))
        declined = "declined" in results[call_id]
        if tool_name == "notify":  # idempotent: re-run if the crash lost its result, never declined
            assert not declined and 1 <= count <= 2
        elif declined:
            assert count <= 1  # its outcome was lost in the crash; never re-run blindly
        else:
            assert count == 1  # its result was recorded: it ran exactly once
            assert real is None or results[call_id] == real


async def test_a_handler_answers_calls_left_waiting_and_one_question_at_a_time(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Oslo"}, id="o1"), ToolCall("get_weather", {"city": "oslo"}, id="o2")
        )
    )
    paused = await run_agent(agent, OSLO, session(store), client=client)
    assert paused["status"] == "interrupted"

    asking = 0
    overlapped = False

    async def slow_person(interruption: Interruption) -> bool:
        nonlocal asking, overlapped
        asking += 1
        overlapped = overlapped or asking > 1
        await asyncio.sleep(0.05)
        asking -= 1
        return interruption.tool_call_id == "o1"

    server.script(Reply.text("One of two."), Reply.text("Noted."))
    # A new message with a handler present: the waiting calls are settled first, then the message is sent.
    result = await run_agent(
        agent, [{"role": "user", "content": "thanks"}], session(store), approval_handler=slow_person, client=client
    )
    assert result["status"] == "completed" and not overlapped
    assert ran(effects) == [{"city": "Oslo"}]
    items = await session(store).get_items()
    assert valid_for_api(items) and items[-2] == {"role": "user", "content": "thanks"}


async def test_two_resumes_of_one_approval_run_the_tool_once(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="oslo")))
    await run_agent(agent, OSLO, session(store), client=client)
    server.script(Reply.text("Sunny in Oslo.", delay=0.1))
    outcomes = await asyncio.gather(
        *(run_agent(agent, [], session(store), approvals={"oslo": True}, client=client) for _ in range(2)),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ApprovalError", "dict"]
    assert ran(effects) == [{"city": "Oslo"}]
    items = await session(store).get_items()
    journal = await session(store).get_journal()
    assert valid_for_api(items) and sum(1 for i in journal if i.get("journal") == "decision") == 1


async def test_a_run_waits_for_another_run_of_the_same_conversation(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    from timestep import RunConfig, SessionBusyError

    async with session(store).lock():
        with pytest.raises(SessionBusyError, match="still being run elsewhere"):
            await run_agent(agent, OSLO, session(store), client=client, config=RunConfig(lock_timeout=0.05))


async def test_a_call_stopped_mid_run_is_pending_before_any_run_asks(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("charge", {"amount": 5}, id="pay")))
    assert app(server, store, "start", KILL_IN="charge") is None  # killed while the charge ran
    assert ran(effects, "charge") == [{"amount": 5, "key": "pay"}]
    # Read from the session alone: the question a resumed run would ask, already.
    [waiting] = await pending_interruptions(agent, session(store))
    assert (waiting.tool_call_id, waiting.kind, waiting.args) == ("pay", "unknown_outcome", {"amount": 5})
    assert "may or may not have happened" in waiting.prompt
    with pytest.raises(ApprovalError, match="awaiting approval"):
        await run_agent(agent, [{"role": "user", "content": "Hello?"}], session(store), client=client)
    with pytest.raises(ApprovalError, match="without new arguments"):
        await run_agent(agent, [], session(store), approvals={"pay": {"approve": True, "args": {"amount": 1}}})
    server.script(Reply.text("Not charged again."))
    result = await run_agent(agent, [], session(store), approvals={"pay": "it went through"}, client=client)
    assert result["status"] == "completed" and result["final_output"] == "Not charged again."
    assert "it went through" in tool_results(server.requests[-1])["pay"]
    assert ran(effects, "charge") == [{"amount": 5, "key": "pay"}]  # never re-run blindly
    assert await pending_interruptions(agent, session(store)) == []
    _, journal = await load(session(store))
    kinds = [(r["journal"], r.get("kind")) for r in journal if r.get("call") == "pay"]
    assert kinds[-3:] == [("started", None), ("interrupt", "unknown_outcome"), ("decision", None)]


async def test_an_approved_rerun_of_a_stopped_call_runs_it_once_more(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("charge", {"amount": 7}, id="pay")))
    assert app(server, store, "start", KILL_IN="charge") is None
    server.script(Reply.text("Charged."))
    result = await run_agent(agent, [], session(store), approvals={"pay": True}, client=client)
    assert result["status"] == "completed"
    assert tool_results(server.requests[-1])["pay"] == "charged 7"
    assert len(ran(effects, "charge")) == 2  # the person chose to run it again


async def test_an_idempotent_call_stopped_mid_run_is_not_pending_and_runs_again(
    server: TestServer, client: ModelClient, store: Path, effects: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("notify", {"message": "hi"}, id="tell")))
    assert app(server, store, "start", KILL_IN="notify") is None
    assert await pending_interruptions(agent, session(store)) == []
    server.script(Reply.text("Told."))
    result = await run_agent(agent, [{"role": "user", "content": "Done?"}], session(store), client=client)
    assert result["status"] == "completed" and ran(effects, "notify") == ["hi", "hi"]
    assert [m["role"] for m in server.requests[-1].messages[-3:]] == ["assistant", "tool", "user"]
