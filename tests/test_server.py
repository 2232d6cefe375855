"""The HTTP API over real HTTP, on every store: streamed runs, approvals from another connection,
disconnects, restarts, racing decisions, and every bad request answered with JSON and its status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server_fixtures import (
    Gate,
    LiveServer,
    bank_agent,
    guarded_agent,
    ledger_lines,
    sse,
    typed_agent,
    until_end,
)
from tests.stores_fixtures import pg_prefix, store_and_spec, unique  # noqa: F401 - fixtures
from timestep import ModelClient
from timestep.server import create_app
from timestep.sessions import Store
from timestep.testing import Reply, TestServer, ToolCall

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


@pytest.fixture
def model(server: TestServer) -> ModelClient:
    return ModelClient(base_url=server.base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def serve(
    store_and_spec: tuple[Store, str],  # noqa: F811
    model: ModelClient,
    ledger: Path,
) -> Iterator[str]:
    store, _ = store_and_spec
    with LiveServer(create_app([bank_agent(ledger)], store=store, client=model)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def conv(url: str, cid: str, what: str = "") -> str:
    return f"{url}/api/agents/Bank/conversations/{cid}" + (f"/{what}" if what else "")


async def pause_for_approval(http: aiohttp.ClientSession, url: str, server: TestServer, cid: str) -> str:
    """Start a run whose one call waits for a person; its tool call id."""
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "Ada", "amount": 500}, id="call_big")))
    async with http.post(conv(url, cid, "messages"), json={"content": "Send 500 to Ada"}) as r:
        assert r.status == 200, await r.text()
        result = await r.json()
    assert result["status"] == "interrupted"
    [waiting] = result["interruptions"]
    return str(waiting["tool_call_id"])


async def test_a_streamed_run(serve: str, server: TestServer, http: aiohttp.ClientSession) -> None:
    cid = unique()
    server.script(Reply.text("Hello there, friend", chunks=3))
    async with http.post(conv(serve, cid, "messages"), json={"content": "Hi"}, headers=SSE) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        seen = await until_end(r)
    kinds = [e["type"] for _, e in seen]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert "".join(e["delta"] for _, e in seen if e["type"] == "content_delta") == "Hello there, friend"
    ids = [int(i.rpartition("-")[2]) for i, _ in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    async with http.get(conv(serve, cid)) as r:
        shown = await r.json()
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
    assert shown["messages"][1]["content"] == "Hello there, friend"
    assert shown["running"] is False and shown["pending"] == []
    # A client that does not stream gets the result.
    server.script(Reply.text("Again"))
    async with http.post(conv(serve, cid, "messages"), json={"content": "Once more"}) as r:
        result = await r.json()
    assert result["status"] == "completed" and result["final_output"] == "Again"


async def test_conversations_are_created_listed_and_deleted(
    serve: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    base = f"{serve}/api/agents/Bank/conversations"
    async with http.post(base, json={"conversation_id": "mine"}) as r:
        assert r.status == 201 and (await r.json())["conversation_id"] == "mine"
    async with http.post(base, json={"conversation_id": "mine"}) as r:
        assert r.status == 409
    async with http.post(base) as r:
        made = (await r.json())["conversation_id"]
    server.script(Reply.text("ok"))
    async with http.post(f"{base}/mine/messages", json={"content": "hello"}) as r:
        assert (await r.json())["final_output"] == "ok"
    async with http.get(base) as r:
        listed = {c["conversation_id"]: c for c in (await r.json())["conversations"]}
    assert listed["mine"]["message_count"] == 3  # system, user, assistant
    assert made in listed and listed[made]["message_count"] == 0
    async with http.delete(f"{base}/mine") as r:
        assert r.status == 204
    async with http.get(f"{base}/mine") as r:
        assert r.status == 404
    async with http.delete(f"{base}/mine") as r:
        assert r.status == 404


async def test_a_paused_run_is_approved_from_another_connection(
    serve: str, server: TestServer, http: aiohttp.ClientSession, ledger: Path
) -> None:
    cid = unique()
    call_id = await pause_for_approval(http, serve, server, cid)
    assert ledger_lines(ledger) == []
    async with aiohttp.ClientSession() as other:
        async with other.get(conv(serve, cid, "pending")) as r:
            [pending] = (await r.json())["pending"]
        assert pending["tool_call_id"] == call_id and pending["args"] == {"to": "Ada", "amount": 500}
        assert pending["parameters"]["required"] == ["to", "amount"]
        server.script(Reply.text("Sent."))
        decision = {"decisions": [{"tool_call_id": call_id, "approve": True}]}
        async with other.post(conv(serve, cid, "decisions"), json=decision, headers=SSE) as r:
            seen = await until_end(r)
    assert next(e for _, e in seen if e["type"] == "tool_result")["result"] == "sent 500 to Ada"
    assert seen[-1][1]["status"] == "completed"
    assert ledger_lines(ledger) == [{"to": "Ada", "amount": 500}]


async def test_declining_with_a_message_and_approving_edited_arguments(
    serve: str, server: TestServer, http: aiohttp.ClientSession, ledger: Path
) -> None:
    cid = unique()
    call_id = await pause_for_approval(http, serve, server, cid)
    server.script(Reply.text("Not sent."))
    decline = {"decisions": [{"tool_call_id": call_id, "approve": False, "message": "too much"}]}
    async with http.post(conv(serve, cid, "decisions"), json=decline) as r:
        result = await r.json()
    assert result["status"] == "completed"
    [told] = [m["content"] for m in result["messages"] if m["role"] == "tool"]
    assert "too much" in told  # the model reads why
    assert ledger_lines(ledger) == []
    cid2 = unique()
    call_id = await pause_for_approval(http, serve, server, cid2)
    server.script(Reply.text("Sent less."))
    edit = {"decisions": [{"tool_call_id": call_id, "approve": True, "args": {"to": "Ada", "amount": 50}}]}
    async with http.post(conv(serve, cid2, "decisions"), json=edit) as r:
        assert (await r.json())["status"] == "completed"
    assert ledger_lines(ledger) == [{"to": "Ada", "amount": 50}]


async def test_a_run_goes_on_when_the_client_leaves_and_a_reconnect_sees_the_rest(
    serve: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    gate = Gate(Reply.text("I was not interrupted"))
    server.responder = gate
    async with http.post(conv(serve, cid, "messages"), json={"content": "Hi"}, headers=SSE) as r:
        first_id, first = await anext(aiter(sse(r)))
    assert first["type"] == "run_start"  # and the connection is closed here, mid-run
    await gate.reached()
    async with http.get(conv(serve, cid)) as r:
        assert (await r.json())["running"] is True
    gate.release.set()
    async with http.get(conv(serve, cid, "events"), headers={**SSE, "Last-Event-ID": first_id}) as r:
        rest = await until_end(r)
    assert rest[0][0] != first_id and all(e["type"] != "run_start" for _, e in rest)
    assert rest[-1][1]["final_output"] == "I was not interrupted"
    async with http.get(conv(serve, cid)) as r:
        assert (await r.json())["messages"][-1]["content"] == "I was not interrupted"
    # Another tab, from the start of what this server saw:
    async with http.get(conv(serve, cid, "events"), params={"follow": "false"}) as r:
        replayed = [e async for _, e in sse(r)]
    assert replayed[0]["type"] == "run_start" and replayed[-1]["type"] == "run_end"


async def test_a_restart_with_a_call_waiting(
    store_and_spec: tuple[Store, str],  # noqa: F811
    model: ModelClient,
    server: TestServer,
    ledger: Path,
    http: aiohttp.ClientSession,
) -> None:
    store, _ = store_and_spec
    cid = unique()
    with LiveServer(create_app([bank_agent(ledger)], store=store, client=model)) as url:
        call_id = await pause_for_approval(http, url, server, cid)
        async with http.get(conv(url, cid)) as r:
            old_cursor = (await r.json())["cursor"]
    with LiveServer(create_app([bank_agent(ledger)], store=store, client=model)) as url:
        async with http.get(conv(url, cid)) as r:
            shown = await r.json()
        assert [p["tool_call_id"] for p in shown["pending"]] == [call_id]
        assert shown["cursor"] != old_cursor
        server.script(Reply.text("Sent after the restart."))
        decision = {"decisions": [{"tool_call_id": call_id, "approve": True}]}
        async with http.post(conv(url, cid, "decisions"), json=decision) as r:
            assert (await r.json())["final_output"] == "Sent after the restart."
    assert ledger_lines(ledger) == [{"to": "Ada", "amount": 500}]


async def test_two_decisions_race_and_one_wins(
    serve: str, server: TestServer, http: aiohttp.ClientSession, ledger: Path
) -> None:
    cid = unique()
    call_id = await pause_for_approval(http, serve, server, cid)
    server.script(Reply.text("Sent once."))

    async def decide(approve: bool) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as own:
            body = {"decisions": [{"tool_call_id": call_id, "approve": approve}]}
            async with own.post(conv(serve, cid, "decisions"), json=body) as r:
                return r.status, await r.json()

    approved, declined = await asyncio.gather(decide(True), decide(False))
    winner, loser = (approved, declined) if approved[0] == 200 else (declined, approved)
    assert (winner[0], loser[0]) == (200, 409)
    assert loser[1]["error"]["type"] == "ApprovalError" and "already decided" in loser[1]["error"]["message"]
    assert winner[1]["status"] == "completed"
    sent = [{"to": "Ada", "amount": 500}] if winner is approved else []
    assert ledger_lines(ledger) == sent  # the winner's decision, and only it, took effect


async def test_a_message_while_a_run_goes_on_is_a_conflict(
    serve: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    gate = Gate(Reply.text("first"))
    server.responder = gate
    async with http.post(conv(serve, cid, "messages"), params={"background": "true"}, json={"content": "a"}) as r:
        assert r.status == 202
        started = await r.json()
    await gate.reached()
    async with http.post(conv(serve, cid, "messages"), json={"content": "b"}) as r:
        assert r.status == 409 and (await r.json())["error"]["type"] == "ConversationBusy"
    async with http.delete(conv(serve, cid)) as r:
        assert r.status == 409
    gate.release.set()
    async with http.get(conv(serve, cid, "events"), headers={"Last-Event-ID": started["cursor"]}) as r:
        assert (await until_end(r))[-1][1]["final_output"] == "first"


@pytest.fixture
def guarded(
    store_and_spec: tuple[Store, str],  # noqa: F811
    model: ModelClient,
) -> Iterator[str]:
    """The agents whose conversation is guarded (Guarded) and whose answer is typed (Weather)."""
    store, _ = store_and_spec
    with LiveServer(create_app([guarded_agent(), typed_agent()], store=store, client=model)) as url:
        yield url


def guarded_conv(url: str, cid: str, what: str = "", agent: str = "Guarded") -> str:
    return f"{url}/api/agents/{agent}/conversations/{cid}" + (f"/{what}" if what else "")


async def test_a_blocked_message_and_a_redacted_one(
    guarded: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    async with http.post(guarded_conv(guarded, cid, "messages"), json={"content": "my password is hunter2"}) as r:
        result = await r.json()
    assert (result["status"], result["final_output"]) == ("blocked", "never send passwords here")
    assert server.requests == [] and result["messages"] == []  # the model never saw it, nothing stored
    server.script(Reply.text("Noted."))
    async with http.post(
        guarded_conv(guarded, cid, "messages"), json={"content": "card 4111 1111 1111 1111"}, headers=SSE
    ) as r:
        seen = [e for _, e in await until_end(r)]
    [note] = [e for e in seen if e["type"] == "guardrail"]
    assert (note["stage"], note["action"], note["guardrail"]) == ("message", "replace", "screen_message")
    assert server.requests[-1].messages[-1]["content"] == "card [card]"
    async with http.get(guarded_conv(guarded, cid)) as r:
        assert [m["content"] for m in (await r.json())["messages"]] == ["card [card]", "Noted."]


async def pause_message(http: aiohttp.ClientSession, url: str, cid: str) -> str:
    async with http.post(guarded_conv(url, cid, "messages"), json={"content": "please wire 500 to Ada"}) as r:
        result = await r.json()
    assert result["status"] == "interrupted"
    [waiting] = result["interruptions"]
    assert waiting["kind"] == "message"
    return str(waiting["tool_call_id"])


async def test_a_paused_message_is_listed_and_decided_as_a_call_is(
    guarded: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    mid = await pause_message(http, guarded, cid)
    assert server.requests == []
    async with aiohttp.ClientSession() as other:  # another person, another connection
        async with other.get(guarded_conv(guarded, cid, "pending")) as r:
            [pending] = (await r.json())["pending"]
        assert pending["tool_call_id"] == mid and pending["kind"] == "message"
        assert pending["args"] == {"content": "please wire 500 to Ada"}
        assert pending["prompt"] == "Let this message through to the agent?"
        assert pending["parameters"]["required"] == ["content"]
        async with other.get(guarded_conv(guarded, cid)) as r:
            assert [p["tool_call_id"] for p in (await r.json())["pending"]] == [mid]
        for wrong in ({"content": 5}, {"text": "hi"}, {"content": ""}):
            edit = {"decisions": [{"tool_call_id": mid, "approve": True, "args": wrong}]}
            async with other.post(guarded_conv(guarded, cid, "decisions"), json=edit) as r:
                assert await status_and_type(r) == (422, "ValidationError"), wrong
        server.script(Reply.text("Sending 50."))
        edit = {"decisions": [{"tool_call_id": mid, "approve": True, "args": {"content": "please wire 50 to Ada"}}]}
        async with other.post(guarded_conv(guarded, cid, "decisions"), json=edit, headers=SSE) as r:
            seen = [e for _, e in await until_end(r)]
    [approval] = [e for e in seen if e["type"] == "approval"]
    assert approval["tool_call_id"] == mid and approval["approved"] is True
    assert approval["edited_arguments"] == {"content": "please wire 50 to Ada"}
    assert seen[-1]["status"] == "completed"
    assert server.requests[-1].messages[-1]["content"] == "please wire 50 to Ada"  # the edited text, only
    again = {"decisions": [{"tool_call_id": mid, "approve": True}]}
    async with http.post(guarded_conv(guarded, cid, "decisions"), json=again) as r:
        assert await status_and_type(r) == (409, "ApprovalError")
    async with http.get(guarded_conv(guarded, cid)) as r:
        assert [m["content"] for m in (await r.json())["messages"]] == ["please wire 50 to Ada", "Sending 50."]


async def test_an_edited_message_is_checked_by_the_message_guardrails_again(
    guarded: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    mid = await pause_message(http, guarded, cid)
    edit = {"decisions": [{"tool_call_id": mid, "approve": True, "args": {"content": "wire it, password hunter2"}}]}
    async with http.post(guarded_conv(guarded, cid, "decisions"), json=edit) as r:
        result = await r.json()
    assert (result["status"], result["final_output"]) == ("blocked", "never send passwords here")
    assert server.requests == []  # the edited text never reached the model
    async with http.get(guarded_conv(guarded, cid)) as r:
        shown = await r.json()
    assert shown["messages"] == [] and shown["pending"] == [] and "hunter2" not in json.dumps(shown)
    cid = unique()
    mid = await pause_message(http, guarded, cid)
    server.script(Reply.text("Wiring."))
    edit = {"decisions": [{"tool_call_id": mid, "approve": True, "args": {"content": "pay from 4111 1111 1111 1111"}}]}
    async with http.post(guarded_conv(guarded, cid, "decisions"), json=edit) as r:
        assert (await r.json())["status"] == "completed"
    assert server.requests[-1].messages[-1]["content"] == "pay from [card]"


async def test_a_paused_message_waits_through_a_restart(
    store_and_spec: tuple[Store, str],  # noqa: F811
    model: ModelClient,
    server: TestServer,
    http: aiohttp.ClientSession,
) -> None:
    store, _ = store_and_spec
    cid = unique()
    with LiveServer(create_app([guarded_agent()], store=store, client=model)) as url:
        mid = await pause_message(http, url, cid)
    with LiveServer(create_app([guarded_agent()], store=store, client=model)) as url:
        async with http.get(guarded_conv(url, cid, "pending")) as r:
            assert [(p["tool_call_id"], p["kind"]) for p in (await r.json())["pending"]] == [(mid, "message")]
        server.script(Reply.text("Wiring after the restart."))
        decision = {"decisions": [{"tool_call_id": mid, "approve": True}]}
        async with http.post(guarded_conv(url, cid, "decisions"), json=decision) as r:
            assert (await r.json())["final_output"] == "Wiring after the restart."
    assert server.requests[-1].messages[-1]["content"] == "please wire 500 to Ada"


async def test_a_declined_message_blocks_the_run(guarded: str, server: TestServer, http: aiohttp.ClientSession) -> None:
    cid = unique()
    mid = await pause_message(http, guarded, cid)
    decline = {"decisions": [{"tool_call_id": mid, "approve": False, "message": "not today"}]}
    async with http.post(guarded_conv(guarded, cid, "decisions"), json=decline) as r:
        result = await r.json()
    assert result["status"] == "blocked" and "not today" in result["final_output"]
    assert server.requests == []
    async with http.get(guarded_conv(guarded, cid, "pending")) as r:
        assert (await r.json())["pending"] == []


async def test_an_answer_blocked_mid_stream_never_shows_the_blocked_text(
    guarded: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    cid = unique()
    server.script(Reply.text("All good. Your code is 1234. Bye now.", chunks=8))
    async with http.post(guarded_conv(guarded, cid, "messages"), json={"content": "hi"}, headers=SSE) as r:
        seen = [e for _, e in await until_end(r)]
    shown = "".join(e["delta"] for e in seen if e["type"] == "content_delta")
    assert shown == "All good."
    [block] = [e for e in seen if e["type"] == "guardrail"]
    assert (block["stage"], block["action"], block["reason"], block["released"]) == (
        "answer",
        "block",
        "it contains a code",
        len(shown),
    )
    assert seen[-1]["status"] == "blocked"
    assert seen[-1]["final_output"] == "I can't give that answer: it contains a code."


async def test_a_typed_answer_is_an_object_in_the_result_and_the_stream(
    guarded: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    forecast = {"city": "Lima", "temperature": 21, "summary": "sunny"}
    async with http.get(f"{guarded}/api/agents") as r:
        agents = {a["name"]: a for a in (await r.json())["agents"]}
    assert agents["Guarded"]["output"] is None
    output = agents["Weather"]["output"]
    assert output["wrapped"] is False and set(output["schema"]["required"]) == set(forecast)
    server.script(Reply.tool_calls(ToolCall("final_answer", forecast)))
    async with http.post(guarded_conv(guarded, unique(), "messages", "Weather"), json={"content": "Lima?"}) as r:
        result = await r.json()
    assert result["status"] == "completed" and result["final_output"] == forecast
    server.script(Reply.tool_calls(ToolCall("final_answer", forecast)))
    async with http.post(
        guarded_conv(guarded, unique(), "messages", "Weather"), json={"content": "Lima?"}, headers=SSE
    ) as r:
        end = (await until_end(r))[-1][1]
    assert end["output"] == forecast  # the object, as JSON, not its Python repr
    assert json.loads(end["final_output"]) == forecast


@pytest.fixture
def small(tmp_path: Path, model: ModelClient, ledger: Path) -> Iterator[str]:
    app = create_app([bank_agent(ledger)], store=str(tmp_path / "c"), client=model, token="s3cret", max_body=2000)
    with LiveServer(app) as url:
        yield url


async def status_and_type(response: aiohttp.ClientResponse) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/json"
    return response.status, (await response.json())["error"]["type"]


async def test_every_bad_request_is_json_with_its_status(
    small: str, server: TestServer, http: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    base = f"{small}/api/agents/Bank/conversations"
    async with http.get(base) as r:
        assert await status_and_type(r) == (401, "Unauthorized")
    async with http.get(base, headers={"Authorization": "Bearer s3cre"}) as r:
        assert await status_and_type(r) == (401, "Unauthorized")
    async with http.get(f"{small}/api/openapi.json") as r:
        assert r.status == 200  # the API's description is public; the API is not
    cases: list[tuple[str, str, dict[str, Any], tuple[int, str]]] = [
        ("GET", f"{small}/api/agents/Nobody/conversations", {}, (404, "NotFound")),
        ("GET", f"{base}/never-seen", {}, (404, "NotFound")),
        ("DELETE", f"{base}/never-seen", {}, (404, "NotFound")),
        ("GET", f"{base}/{'x' * 300}", {}, (400, "SessionNameError")),
        ("GET", f"{base}/a%00b/pending", {}, (400, "SessionNameError")),
        (
            "POST",
            f"{base}/c/messages",
            {"data": b"{not json", "headers": {"content-type": "application/json"}},
            (400, "BadRequest"),
        ),
        ("POST", f"{base}/c/messages", {"json": {}}, (422, "ValidationError")),
        ("POST", f"{base}/c/messages", {"json": {"content": "x", "extra": 1}}, (422, "ValidationError")),
        ("POST", f"{base}/c/messages", {"json": {"content": "x" * 3000}}, (413, "PayloadTooLarge")),
        ("POST", f"{base}/c/decisions", {"json": {"decisions": []}}, (422, "ValidationError")),
        (
            "POST",
            f"{base}/c/decisions",
            {"json": {"decisions": [{"tool_call_id": "x", "approve": False, "args": {}}]}},
            (422, "ValidationError"),
        ),
        (
            "POST",
            f"{base}/c/decisions",
            {"json": {"decisions": [{"tool_call_id": "nope", "approve": True}]}},
            (404, "NotFound"),
        ),
        ("GET", f"{base}/never-seen/pending", {}, (404, "NotFound")),
        ("GET", f"{base}/never-seen/events", {}, (404, "NotFound")),
        ("GET", f"{base}/never-seen/events?follow=false", {}, (404, "NotFound")),
        ("POST", base, {"json": {"conversation_id": "../x"}}, (400, "SessionNameError")),
        ("POST", base, {"json": {"conversation_id": "a/b"}}, (400, "SessionNameError")),
        ("POST", base, {"json": {"conversation_id": ".."}}, (400, "SessionNameError")),
        # No coercion: the OpenAPI document says boolean, string, and so it is.
        ("POST", base, {"json": {"conversation_id": 5}}, (422, "ValidationError")),
        ("POST", f"{base}/c/messages", {"json": {"content": 5}}, (422, "ValidationError")),
    ]
    for flag in ("yes", "1", "on", "False"):
        cases.append(
            ("POST", f"{base}/c/messages?background={flag}", {"json": {"content": "x"}}, (422, "ValidationError"))
        )
        cases.append(("GET", f"{base}/c/events?follow={flag}", {}, (422, "ValidationError")))
    for approve in ("yes", 1, "off", 0, "true", None):
        decision = {"decisions": [{"tool_call_id": "x", "approve": approve}]}
        cases.append(("POST", f"{base}/c/decisions", {"json": decision}, (422, "ValidationError")))
    for field, value in (("tool_call_id", 5), ("message", 5), ("args", [1])):
        decision = {"decisions": [{"tool_call_id": "x", "approve": False, field: value}]}
        cases.append(("POST", f"{base}/c/decisions", {"json": decision}, (422, "ValidationError")))
    for method, url, extra, expected in cases:
        headers = {**auth, **extra.pop("headers", {})}
        async with http.request(method, url, headers=headers, **extra) as r:
            assert await status_and_type(r) == expected, (method, url)

    # A chunked body with no declared length is held to the limit too.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"content": "' + b"y" * 300

    async with http.post(f"{base}/c/messages", data=chunks(), headers=auth) as r:
        assert await status_and_type(r) == (413, "PayloadTooLarge")
    # A waiting call: a new message is a conflict, and edited arguments must fit the schema.
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "Ada", "amount": 500}, id="call_w")))
    async with http.post(f"{base}/w/messages", json={"content": "Send"}, headers=auth) as r:
        assert (await r.json())["status"] == "interrupted"
    async with http.post(f"{base}/w/messages", json={"content": "again"}, headers=auth) as r:
        assert await status_and_type(r) == (409, "ApprovalError")
    nope = {"decisions": [{"tool_call_id": "nope", "approve": True}]}
    async with http.post(f"{base}/w/decisions", json=nope, headers=auth) as r:
        assert await status_and_type(r) == (409, "ApprovalError")  # it exists: no such call waits
    for after in ("zzz", "1", "abc-", "abcd-²"):
        async with http.get(f"{base}/w/events", params={"after": after, "follow": "false"}, headers=auth) as r:
            assert await status_and_type(r) == (400, "BadRequest"), after
    async with http.get(f"{base}/w/events", params={"after": "0badcafe-3", "follow": "false"}, headers=auth) as r:
        assert r.status == 200  # another server's id (from before a restart): from the start
    bad_edit = {"decisions": [{"tool_call_id": "call_w", "approve": True, "args": {"to": "Ada", "amount": "lots"}}]}
    async with http.post(f"{base}/w/decisions", json=bad_edit, headers=auth) as r:
        status, kind = await status_and_type(r)
        assert (status, kind) == (422, "ValidationError")
    async with http.get(f"{base}/w/pending", headers=auth) as r:
        assert [p["tool_call_id"] for p in (await r.json())["pending"]] == ["call_w"]  # nothing was decided


async def test_a_store_that_is_down_is_a_503_streamed_or_not(
    model: ModelClient, ledger: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app([bank_agent(ledger)], store="postgresql://x@127.0.0.1:1/x", client=model)
    with caplog.at_level("WARNING", logger="timestep.server"), LiveServer(app) as url:
        for headers in ({}, SSE):
            async with http.post(conv(url, "c", "messages"), json={"content": "Hi"}, headers=headers) as r:
                assert await status_and_type(r) == (503, "SessionUnavailableError"), headers
        async with http.get(conv(url, "c")) as r:
            assert await status_and_type(r) == (503, "SessionUnavailableError")
    assert caplog.text.count("the store is unavailable") == 3


async def test_a_run_that_fails_once_streaming_ends_with_an_error_event_and_a_log_line(
    serve: str, server: TestServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply.error(400, "the model is gone"))
    with caplog.at_level("WARNING", logger="timestep.server"):
        async with http.post(conv(serve, unique(), "messages"), json={"content": "Hi"}, headers=SSE) as r:
            assert r.status == 200
            seen = [e async for _, e in sse(r)]  # to the end of the stream: it ends
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "run_start" and "error" in kinds and kinds[-1] == "run_end"
    assert seen[-1]["status"] == "error"
    assert "ModelHTTPError" in caplog.text and "the model is gone" in caplog.text


def test_create_app_refuses_what_it_cannot_serve(ledger: Path) -> None:
    from timestep import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least one"):
        create_app([])
    with pytest.raises(ConfigurationError, match="two agents"):
        create_app([bank_agent(ledger), bank_agent(ledger)])


async def test_mounted_under_a_prefix_the_token_still_guards_the_api(
    tmp_path: Path, model: ModelClient, ledger: Path, http: aiohttp.ClientSession
) -> None:
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/chat", create_app([bank_agent(ledger)], store=str(tmp_path / "c"), client=model, token="t0ken"))
    with LiveServer(outer) as url:
        async with http.get(f"{url}/chat/api/agents") as r:
            assert r.status == 401
        async with http.get(f"{url}/chat/api/agents", headers={"Authorization": "Bearer t0ken"}) as r:
            assert [a["name"] for a in (await r.json())["agents"]] == ["Bank"]
        async with http.get(f"{url}/chat/") as r:
            assert r.status == 200 and "app.js" in await r.text()
