"""The one module that talks to the model, over real HTTP to the test server: retries and their waits,
timeouts, errors that say what happened, secrets that never leave, and the event-stream reading."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from timestep import (
    Agent,
    FileSession,
    ModelClient,
    ModelConnectionError,
    ModelHTTPError,
    ModelResponseError,
    run_agent,
)
from timestep.testing import Reply, TestServer, ToolCall

BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello!"}]}
SECRET = "sk-live-0123456789abcdef"
HEADER_SECRET = "azure-key-fedcba9876543210"
TOLERANCE = 0.05  # timer and scheduling granularity, never an upper bound


def arrivals(server: TestServer, replies: list[Reply]) -> list[float]:
    """Serve ``replies`` in order from a responder that notes when each request arrived."""
    seen: list[float] = []
    queue = list(replies)

    def responder(body: dict[str, Any]) -> Reply:
        seen.append(time.time())
        return queue.pop(0)

    server.responder = responder
    return seen


def says_what_happened(message: str) -> bool:
    """No colon left with nothing after it: ``broke off: `` or ``ReadTimeout:  (after 3 attempts)``."""
    return not re.search(r":\s*($|\()", message)


# -- Retry-After ---------------------------------------------------------------------------------


def _http_date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        pytest.param(lambda: {"retry-after": "1"}, lambda sent: 1.0, id="seconds"),
        pytest.param(lambda: {"retry-after-ms": "400"}, lambda sent: 0.4, id="milliseconds"),
        pytest.param(
            lambda: {"retry-after": _http_date_in(2)},
            # an HTTP date has whole seconds: the wait is until that second, counted from the answer
            lambda sent: email.utils.parsedate_to_datetime(sent["retry-after"]).timestamp(),
            id="http-date",
        ),
    ],
)
async def test_retry_after_is_waited_for(
    server: TestServer,
    client: ModelClient,
    headers: Callable[[], dict[str, str]],
    wait: Callable[[dict[str, str]], float],
) -> None:
    sent = headers()
    seen = arrivals(server, [Reply.error(429, "slow down", headers=sent), Reply.text("fine")])
    data = await client.complete(BODY)
    assert data["choices"][0]["message"]["content"] == "fine"
    assert len(seen) == 2
    expected = wait(sent)
    if expected > 1e6:  # an absolute time: the wait is what was left of it when the 429 came
        expected -= seen[0]
    assert seen[1] - seen[0] >= expected - TOLERANCE


# -- what is retried -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(server: TestServer, client: ModelClient, status: int) -> None:
    server.script(Reply.error(status, "try again"), Reply.text("fine"))
    data = await client.complete(BODY)
    assert data["choices"][0]["message"]["content"] == "fine"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(server: TestServer, client: ModelClient, status: int) -> None:
    server.script(Reply.error(status, "no"), Reply.text("never sent"))
    with pytest.raises(ModelHTTPError) as caught:
        await client.complete(BODY)
    assert caught.value.status_code == status and len(server.requests) == 1


async def test_a_connection_dropped_before_the_answer_is_retried(server: TestServer, client: ModelClient) -> None:
    server.script(Reply.text("lost").cut_after(0), Reply.text("fine"))
    data = await client.complete(BODY)
    assert data["choices"][0]["message"]["content"] == "fine"
    assert len(server.requests) == 2


async def test_a_streamed_answer_is_retried_before_its_first_chunk(server: TestServer, client: ModelClient) -> None:
    server.script(Reply.error(503, "busy"), Reply.text("one two"))
    chunks = [c async for c in client.stream(BODY)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two"
    assert len(server.requests) == 2


# -- a configured openai client ------------------------------------------------------------------


async def test_an_openai_clients_timeout_and_retry_budget_are_used(server: TestServer) -> None:
    oai = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-x", timeout=0.3, max_retries=1)
    client = ModelClient.from_openai(oai)
    server.script(Reply.text("too late", delay=1.5), Reply.text("too late", delay=1.5), Reply.text("third"))
    with pytest.raises(ModelConnectionError) as caught:
        await client.complete(BODY)
    assert "0.3 s" in str(caught.value) and "after 2 attempts" in str(caught.value)
    assert len(server.requests) == 2
    await client.aclose()
    await oai.close()


async def test_an_openai_clients_larger_retry_budget_is_used(server: TestServer) -> None:
    oai = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-x", timeout=openai.Timeout(5.0, connect=1.0), max_retries=3
    )
    client = ModelClient.from_openai(oai)
    client.backoff_base = 0.01
    server.script(*[Reply.error(500, "down")] * 3, Reply.text("fourth time lucky"))
    data = await client.complete(BODY)
    assert data["choices"][0]["message"]["content"] == "fourth time lucky"
    assert (client.timeout, client.connect_timeout) == (5.0, 1.0)
    await client.aclose()
    await oai.close()


# -- secrets -------------------------------------------------------------------------------------


async def test_the_key_is_sent_once_and_never_shown(server: TestServer) -> None:
    client = ModelClient(base_url=server.base_url, api_key=SECRET, headers={"api-key": HEADER_SECRET})
    server.script(Reply.text("hi"))
    await client.complete(BODY)
    headers = server.requests[0].headers
    assert [name for name, value in headers.items() if SECRET in value] == ["authorization"]
    assert headers["authorization"] == f"Bearer {SECRET}"
    for shown in (repr(client), str(client), f"{client}"):
        assert SECRET not in shown and HEADER_SECRET not in shown
    await client.aclose()


async def test_a_callers_authorization_header_replaces_the_key(server: TestServer) -> None:
    client = ModelClient(base_url=server.base_url, api_key=SECRET, headers={"Authorization": "Token other-secret"})
    server.script(Reply.text("hi"))
    await client.complete(BODY)
    assert server.requests[0].headers["authorization"] == "Token other-secret"
    assert not [v for v in server.requests[0].headers.values() if SECRET in v]
    await client.aclose()


async def test_an_echoed_key_is_redacted_from_every_error(server: TestServer) -> None:
    client = ModelClient(base_url=server.base_url, api_key=SECRET, headers={"api-key": HEADER_SECRET}, max_retries=0)
    echo = f"Incorrect API key provided: {SECRET} (header api-key: {HEADER_SECRET}, Authorization: Bearer {SECRET})"
    server.script(Reply.error(401, echo), Reply.raw(200, echo), Reply.raw(200, echo, "text/plain"))
    with pytest.raises(ModelHTTPError) as http_error:
        await client.complete(BODY)
    with pytest.raises(ModelResponseError) as bad_json:
        await client.complete(BODY)
    with pytest.raises(ModelResponseError) as not_a_stream:
        [c async for c in client.stream(BODY)]
    for error in (http_error.value, bad_json.value, not_a_stream.value):
        text = str(error) + getattr(error, "body", "")
        assert "Incorrect API key provided: ***" in text
        assert SECRET not in text and HEADER_SECRET not in text
    await client.aclose()


async def test_a_key_echoed_cut_or_starred_is_redacted_too(server: TestServer) -> None:
    """Proxies echo keys less their last characters, or with stars in the middle: those pieces go too."""
    client = ModelClient(base_url=server.base_url, api_key=SECRET, max_retries=0)
    cut, head, tail = SECRET[:-4], SECRET[: len(SECRET) // 2], SECRET[len(SECRET) // 2 :]
    server.script(Reply.error(401, f"Incorrect API key provided: {cut}****; also {head}...{tail[:-2]}"))
    with pytest.raises(ModelHTTPError) as caught:
        await client.complete(BODY)
    text = str(caught.value) + caught.value.body
    assert "Incorrect API key provided: ***" in text
    for piece in (cut, head, tail[:-2], SECRET[4:20]):
        assert piece not in text, text
    await client.aclose()


async def test_an_empty_body_that_should_be_json_says_so(server: TestServer) -> None:
    client = ModelClient(base_url=server.base_url, api_key="k", max_retries=0)
    server.script(Reply.raw(200, ""))
    with pytest.raises(ModelResponseError) as caught:
        await client.complete(BODY)
    assert str(caught.value).endswith("answered with invalid JSON: (empty body)"), str(caught.value)
    await client.aclose()


async def test_an_echoed_key_never_reaches_the_store_or_the_events(server: TestServer, store: Path) -> None:
    """A delegate's model call fails with the key echoed in the 401 body; the caller stores that error
    as the transfer's tool result and goes on. Neither the events nor any stored file hold the key."""
    helper = Agent(name="Helper", model="m", instructions="Help.")
    boss = Agent(name="Boss", model="m", instructions="Delegate.", handoffs=[helper])
    client = ModelClient(base_url=server.base_url, api_key=SECRET, headers={"x-api-key": HEADER_SECRET})
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "hi"})),
        Reply.error(401, f"Incorrect API key provided: {SECRET}; x-api-key {HEADER_SECRET}", code="invalid_api_key"),
        Reply.text("The helper could not answer."),
    )
    session = FileSession(boss.name, "c1", boss.instructions, store)
    events = [
        e
        async for e in run_agent(
            boss, [{"role": "user", "content": "hi"}], session, result_processor=None, client=client
        )
    ]
    assert events[-1]["status"] == "completed"
    assert "Incorrect API key provided: ***" in json.dumps(events)  # the error did travel
    stored = [p.read_text() for p in store.rglob("*") if p.is_file()]
    assert any("Incorrect API key provided: ***" in text for text in stored)
    for text in [json.dumps(events), *stored]:
        assert SECRET not in text and HEADER_SECRET not in text
    await client.aclose()


# -- errors that say what happened ---------------------------------------------------------------


async def test_a_stream_that_breaks_off_says_how(server: TestServer, client: ModelClient) -> None:
    server.script(Reply.text("one two three four").cut_after(2), Reply.text("one two three four").cut_body_after(150))
    for _ in range(2):
        with pytest.raises(ModelResponseError) as caught:
            [c async for c in client.stream(BODY)]
        message = str(caught.value)
        assert "the stream" in message and says_what_happened(message), message


async def test_a_timeout_says_how_long_was_waited(server: TestServer) -> None:
    client = ModelClient(base_url=server.base_url, api_key="k", timeout=0.2, max_retries=2, backoff_base=0.01)
    server.script(*[Reply.text("late", delay=1.0)] * 3)
    with pytest.raises(ModelConnectionError) as caught:
        await client.complete(BODY)
    message = str(caught.value)
    assert "no answer within 0.2 s" in message and "after 3 attempts" in message
    assert says_what_happened(message), message
    await client.aclose()


async def test_a_reset_in_the_middle_of_an_answer_is_not_cannot_reach(server: TestServer, client: ModelClient) -> None:
    server.script(*[Reply.text("a long enough answer to be cut in two").cut_body_after(40)] * 3)
    with pytest.raises(ModelResponseError) as caught:
        await client.complete(BODY)
    message = str(caught.value)
    assert "answered, but its answer broke off" in message and "cannot reach" not in message
    assert "after 3 attempts" in message and says_what_happened(message), message


async def test_an_endpoint_that_is_down_says_so(store: Path) -> None:
    client = ModelClient(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1, backoff_base=0.01)
    with pytest.raises(ModelConnectionError) as caught:
        await client.complete(BODY)
    message = str(caught.value)
    assert message.startswith("cannot reach http://127.0.0.1:9/v1: ") and "after 2 attempts" in message
    assert says_what_happened(message), message
    await client.aclose()


# -- reading an event stream ---------------------------------------------------------------------


def _chunk(content: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}


async def test_event_stream_comments_multiline_data_and_line_ends(server: TestServer, client: ModelClient) -> None:
    first, second = json.dumps(_chunk("Hel")), json.dumps(_chunk("lo ✓"), ensure_ascii=False)
    half = second.index('"choices"')  # between two JSON tokens: the joining newline is whitespace
    stream = (
        ": keep-alive\r\n\r\n"
        f"event: message\r\ndata: {first}\r\n\r\n"
        f"data: {second[:half]}\ndata: {second[half:]}\n\n"  # one event over two data lines
        "id: 7\rretry: 1000\r\r"  # CR line ends, and an event without data: nothing
        "data: [DONE]\n\n"
    )
    server.script(Reply.raw(200, stream, "text/event-stream"))
    chunks = [c async for c in client.stream(BODY)]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel", "lo ✓"]


@pytest.mark.parametrize(
    "frame",
    [
        'data: {"error": {"message": "the model overloaded", "type": "server_error"}}\n\n',
        'event: error\ndata: {"message": "the model overloaded"}\n\n',
    ],
    ids=["error-in-data", "error-event"],
)
async def test_event_stream_error_events_end_the_stream(server: TestServer, client: ModelClient, frame: str) -> None:
    stream = f"data: {json.dumps(_chunk('Hi'))}\n\n{frame}data: [DONE]\n\n"
    server.script(Reply.raw(200, stream, "text/event-stream"))
    seen: list[dict[str, Any]] = []
    with pytest.raises(ModelResponseError, match=r"the stream reported an error: .*overloaded"):
        async for chunk in client.stream(BODY):
            seen.append(chunk)
    assert len(seen) == 1
