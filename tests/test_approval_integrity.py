"""Approvals that cannot be forged by writing to the store, on every store.

Each attack edits the stored conversation the way anyone with write access to the store could
(through the store's own API: read it, clear it, write it back changed) and then resumes the run.
The promise: a tool runs only with arguments a person was shown and approved; a stored question,
decision or attempt that was changed is an ``ApprovalError`` and nothing runs. With an approval
secret, records a run did not sign are refused too, so writing a decision is not approving.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import stores_fixtures as fixtures
from tests.stores_fixtures import payment_agent, unique
from timestep import ApprovalError, ModelClient, RunConfig, pending_interruptions, run_agent
from timestep.approvals import digest, fingerprint, load
from timestep.sessions import Session, Store
from timestep.testing import Reply, TestServer, ToolCall

store_and_spec = fixtures.store_and_spec
pg_prefix = fixtures.pg_prefix

Journal = list[dict[str, Any]]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def ledger_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def tamper(session: Session, change: Callable[[Journal], Journal]) -> None:
    """Rewrite the stored conversation with its journal changed, as a writer to the store could."""
    messages, journal = await load(session)
    await session.clear_session()
    await session.add_items([m for m in messages if m.get("role") != "system"] + change([dict(r) for r in journal]))


async def pause(server: TestServer, client: ModelClient, agent: Any, session: Session, amount: int, **kw: Any) -> str:
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "Ada", "amount": amount})))
    result = await run_agent(agent, ask(f"send {amount}"), session, client=client, **kw)
    assert result["status"] == "interrupted"
    return str(result["interruptions"][0]["tool_call_id"])


async def test_a_decision_copied_onto_another_call_does_not_run_it(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    session = store.session(agent.name, unique(), agent.instructions)
    first = await pause(server, client, agent, session, 500)
    server.script(Reply.text("sent"))
    await run_agent(agent, [], session, client=client, approvals={first: True})
    second = await pause(server, client, agent, session, 900)

    def copy_decision(journal: Journal) -> Journal:
        (approved,) = [r for r in journal if r["journal"] == "decision" and r["call"] == first]
        return [*journal, {**approved, "call": second}]

    await tamper(session, copy_decision)
    server.script(Reply.text("should not be asked"))
    with pytest.raises(ApprovalError, match="does not answer the question"):
        await run_agent(agent, [], session, client=client)
    assert ledger_of(ledger) == [{"to": "Ada", "amount": 500}]


async def test_an_edited_question_is_refused_before_it_is_shown_or_approved(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    session = store.session(agent.name, unique(), agent.instructions)
    call = await pause(server, client, agent, session, 500)

    def show_less(journal: Journal) -> Journal:
        for r in journal:
            if r["journal"] == "interrupt":
                r["args"] = {"to": "Ada", "amount": 5}
        return journal

    await tamper(session, show_less)
    with pytest.raises(ApprovalError, match="arguments it shows are not the ones"):
        await pending_interruptions(agent, session)
    with pytest.raises(ApprovalError, match="arguments it shows are not the ones"):
        await run_agent(agent, [], session, client=client, approvals={call: True})
    assert ledger_of(ledger) == []


async def test_an_edited_question_with_a_matching_fingerprint_is_asked_again(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    """A writer who also fixes the fingerprint gets the person to approve 5; 500 is then asked anew."""
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    session = store.session(agent.name, unique(), agent.instructions)
    call = await pause(server, client, agent, session, 500)

    def show_less(journal: Journal) -> Journal:
        for r in journal:
            if r["journal"] == "interrupt":
                r["args"] = {"to": "Ada", "amount": 5}
                r["args_fingerprint"] = fingerprint("send_money", r["args"])
        return journal

    await tamper(session, show_less)
    (shown,) = await pending_interruptions(agent, session)
    assert shown.args == {"to": "Ada", "amount": 5}
    result = await run_agent(agent, [], session, client=client, approvals={call: True})
    assert result["status"] == "interrupted"
    assert result["interruptions"][0]["args"] == {"to": "Ada", "amount": 500}
    assert ledger_of(ledger) == []


class Crash(BaseException):
    """Stands for the process dying while the tool runs: nothing after it is written."""


async def test_a_rerun_runs_only_the_arguments_the_person_was_shown(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = store_and_spec
    runs: list[int] = []

    def send_money(to: str, amount: int) -> str:
        runs.append(amount)
        if len(runs) == 1:
            raise Crash
        return f"sent {amount}"

    from timestep import Agent

    agent = Agent(name="Payer", model="m", tools=[send_money])
    session = store.session(agent.name, unique(), None)
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "Ada", "amount": 50})))
    with pytest.raises(Crash):
        await run_agent(agent, ask("send 50"), session, client=client)
    paused = await run_agent(agent, [], session, client=client)
    assert paused["status"] == "interrupted" and paused["interruptions"][0]["kind"] == "unknown_outcome"
    call = paused["interruptions"][0]["tool_call_id"]
    assert paused["interruptions"][0]["args"] == {"to": "Ada", "amount": 50}

    def run_more(journal: Journal) -> Journal:
        for r in journal:
            if r["journal"] == "started":
                r["args"] = {"to": "Ada", "amount": 5000}
        return journal

    await tamper(session, run_more)
    with pytest.raises(ApprovalError, match="arguments to run again are not the ones"):
        await run_agent(agent, [], session, client=client, approvals={call: True})
    assert runs == [50]


# -- with an approval secret -------------------------------------------------------------------


async def test_with_a_secret_a_written_decision_is_not_an_approval(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    signed = RunConfig(approval_secret="s3cret-for-tests")
    session = store.session(agent.name, unique(), agent.instructions)
    call = await pause(server, client, agent, session, 500, config=signed)

    def approve_it(journal: Journal) -> Journal:
        (interrupt,) = [r for r in journal if r["journal"] == "interrupt"]
        decision = {"journal": "decision", "call": call, "approve": True, "message": None}
        return [*journal, {**decision, "original_args": interrupt["args"], "interrupt": digest(interrupt)}]

    await tamper(session, approve_it)
    with pytest.raises(ApprovalError, match=r"decision record of tool call .* is unsigned"):
        await run_agent(agent, [], session, client=client, config=signed)
    assert ledger_of(ledger) == []


async def test_with_a_secret_only_the_same_secret_resumes_and_it_is_never_stored(
    server: TestServer,
    client: ModelClient,
    store_and_spec: tuple[Store, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    monkeypatch.setenv("TIMESTEP_APPROVAL_SECRET", "from-the-environment")
    session = store.session(agent.name, unique(), agent.instructions)
    call = await pause(server, client, agent, session, 500)
    with pytest.raises(ApprovalError, match="wrongly signed"):
        await run_agent(
            agent, [], session, client=client, approvals={call: True}, config=RunConfig(approval_secret="x")
        )
    server.script(Reply.text("sent"))
    done = await run_agent(agent, [], session, client=client, approvals={call: True})
    assert done["status"] == "completed"
    assert ledger_of(ledger) == [{"to": "Ada", "amount": 500}]
    messages, journal = await load(session)
    assert {r["journal"] for r in journal if "sig" in r} == {"started", "interrupt", "decision"}
    assert "from-the-environment" not in json.dumps([messages, journal])


async def test_with_a_secret_records_do_not_move_between_conversations(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = store_and_spec
    ledger = tmp_path / "ledger.jsonl"
    agent = payment_agent(ledger)
    signed = RunConfig(approval_secret="s3cret-for-tests")
    source = store.session(agent.name, unique(), agent.instructions)
    call = await pause(server, client, agent, source, 500, config=signed)
    server.script(Reply.text("sent"))
    await run_agent(agent, [], source, client=client, approvals={call: True}, config=signed)
    assert len(ledger_of(ledger)) == 1

    # The same model call, its signed question and the person's signed answer, copied elsewhere.
    messages, journal = await load(source)
    assistant = next(m for m in messages if m.get("tool_calls"))
    copied = [r for r in journal if r["journal"] in ("interrupt", "decision")]
    target = store.session(agent.name, unique(), agent.instructions)
    await target.add_items([ask("send 500")[0], assistant, *copied])
    with pytest.raises(ApprovalError, match="wrongly signed"):
        await run_agent(agent, [], target, client=client, config=signed)
    assert len(ledger_of(ledger)) == 1
