"""Tests for ``timestep.testing``: the OpenAI-compatible test server.

Everything goes over real HTTP (httpx2 and the official ``openai`` SDK), because
the server's whole value is that its bytes on the wire match OpenAI's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from timestep.testing import RecordedRequest, Reply, TestServer, ToolCall, tool_then_answer

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server() -> Iterator[TestServer]:
    with TestServer() as running:
        yield running


def chat(server: TestServer, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx2.Response:
    payload = {"model": "gpt-test", "messages": USER_HI} if body is None else body
    with httpx2.Client() as client:
        return client.post(server.base_url + "/chat/completions", json=payload, **kwargs)


def stream_events(server: TestServer, body: dict[str, Any]) -> tuple[httpx2.Response, list[str]]:
    """POST a streaming request; return the response and every SSE ``data`` field."""
    with (
        httpx2.Client() as client,
        client.stream("POST", server.base_url + "/chat/completions", json=body) as response,
    ):
        return response, [event.data for event in httpx2.EventSource(response)]


def chunks_of(data: list[str]) -> list[dict[str, Any]]:
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


# --------------------------------------------------------------------------- non-streaming


def test_scripted_replies_are_consumed_in_order_with_openai_shape(server: TestServer) -> None:
    server.script(Reply.text("first"), Reply.text("second"))
    assert server.pending == 2

    first = chat(server)
    second = chat(server)

    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-test"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "first", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = body["usage"]
    assert usage["prompt_tokens"] >= 1 and usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert second.json()["choices"][0]["message"]["content"] == "second"
    assert second.json()["id"] != body["id"]
    assert server.pending == 0


def test_tool_calls_reply_non_streaming(server: TestServer) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Oslo"}, id="call_1"),
            ToolCall("broken", '{"city": "Os', id="call_2"),
            content="Let me check.",
        )
    )

    choice = chat(server).json()["choices"][0]

    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": '{"city": "Os'}},
    ]


def test_tool_call_ids_are_generated_and_unique() -> None:
    first, second = ToolCall("f", {}), ToolCall("f", {})
    assert first.id.startswith("call_") and second.id.startswith("call_")
    assert first.id != second.id
    assert ToolCall("f", {}, id=None).id.startswith("call_")


def test_empty_reply_has_null_content_and_stop(server: TestServer) -> None:
    server.script(Reply.empty())
    choice = chat(server).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": None}
    assert choice["finish_reason"] == "stop"


def test_model_defaults_when_request_has_none(server: TestServer) -> None:
    server.script(Reply.text("x"))
    assert chat(server, {"messages": USER_HI}).json()["model"] == "test-model"


# --------------------------------------------------------------------------- responder, recording


async def test_responder_answers_when_the_queue_is_empty(server: TestServer) -> None:
    seen: list[dict[str, Any]] = []

    def echo(body: dict[str, Any]) -> Reply:
        seen.append(body)
        return Reply.text("echo: " + body["messages"][-1]["content"])

    server.script(Reply.text("scripted"))
    server.responder = echo
    async with httpx2.AsyncClient(base_url=server.base_url) as client:
        replies = []
        for text in ("a", "b"):
            response = await client.post(
                "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": text}]}
            )
            replies.append(response.json()["choices"][0]["message"]["content"])

        async def async_responder(body: dict[str, Any]) -> Reply:
            await asyncio.sleep(0)
            return Reply.text("async")

        server.responder = async_responder
        response = await client.post("/chat/completions", json={"messages": USER_HI})
        replies.append(response.json()["choices"][0]["message"]["content"])

    assert replies == ["scripted", "echo: b", "async"]
    assert [body["messages"][0]["content"] for body in seen] == ["b"]


def test_responder_errors_become_explanatory_500s(server: TestServer) -> None:
    def broken(body: dict[str, Any]) -> Reply:
        raise RuntimeError("boom")

    server.responder = broken
    response = chat(server)
    assert response.status_code == 500
    assert "RuntimeError: boom" in response.json()["error"]["message"]


def test_requests_are_recorded_with_headers_and_body() -> None:
    with TestServer(api_key="sk-test") as server:
        server.script(Reply.text("one"), Reply.text("two"))
        body = {"model": "m", "messages": USER_HI, "stream": False, "temperature": 0}
        chat(server, body, headers={"Authorization": "Bearer sk-test", "X-Trace": "abc"})
        chat(server, {**body, "stream": True}, headers={"Authorization": "Bearer sk-test"})

        first, second = server.requests
        assert isinstance(first, RecordedRequest)
        assert (first.method, first.path) == ("POST", "/v1/chat/completions")
        assert first.headers["authorization"] == "Bearer sk-test"
        assert first.headers["x-trace"] == "abc"
        assert first.headers["content-type"] == "application/json"
        assert first.body == body
        assert first.messages == USER_HI
        assert first.stream is False and second.stream is True

        server.responder = tool_then_answer
        server.script(Reply.text("left over"))
        server.reset()
        assert server.requests == [] and server.pending == 0 and server.responder is None


def test_record_false_keeps_nothing() -> None:
    with TestServer(record=False, responder=tool_then_answer) as server:
        assert chat(server).status_code == 200
        assert server.requests == []


def test_no_scripted_reply_left_is_a_clear_500(server: TestServer) -> None:
    response = chat(server)
    assert response.status_code == 500
    error = response.json()["error"]
    assert "test server has no scripted reply left" in error["message"]
    assert error["type"] == "server_error"
    assert error["param"] is None and error["code"] is None


# --------------------------------------------------------------------------- streaming


def test_text_streams_one_delta_per_word(server: TestServer) -> None:
    server.script(Reply.text("Hello brave  new world"))

    response, data = stream_events(server, {"model": "m", "messages": USER_HI, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    chunks = chunks_of(data)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "m" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] == ""
    assert [d["content"] for d in deltas[1:-1]] == ["Hello ", "brave  ", "new ", "world"]
    assert deltas[-1] == {}
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 5 + ["stop"]


def test_text_streams_in_n_chunks(server: TestServer) -> None:
    server.script(Reply.text("abcdefghij", chunks=3), Reply.text("ab", chunks=5))
    body = {"messages": USER_HI, "stream": True}

    pieces = [c["choices"][0]["delta"].get("content") for c in chunks_of(stream_events(server, body)[1])]
    assert pieces[1:-1] == ["abcd", "efg", "hij"]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks_of(stream_events(server, body)[1])]
    assert pieces[1:-1] == ["a", "b"]


def test_tool_call_arguments_are_split_across_deltas(server: TestServer) -> None:
    long_arguments = {"query": "x" * 60, "limit": 3}
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Oslo"}, id="call_a"),
            ToolCall("search", long_arguments, id="call_b"),
            ToolCall("noop", "{}", id="call_c"),
        )
    )

    chunks = chunks_of(stream_events(server, {"messages": USER_HI, "stream": True})[1])

    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict[str, Any]] = {}
    pieces: dict[int, list[str]] = {}
    for delta in deltas[1:-1]:
        (call,) = delta["tool_calls"]
        index = call["index"]
        if "id" in call:
            assert index not in calls, "the opening delta of a call comes once"
            assert call["type"] == "function" and call["function"]["arguments"] == ""
            calls[index] = call
            pieces[index] = []
        else:
            assert set(call) == {"index", "function"}
            pieces[index].append(call["function"]["arguments"])
    assert [calls[i]["id"] for i in range(3)] == ["call_a", "call_b", "call_c"]
    assert [calls[i]["function"]["name"] for i in range(3)] == ["get_weather", "search", "noop"]
    assert all(len(pieces[i]) >= 2 for i in range(3))
    assert json.loads("".join(pieces[0])) == {"city": "Oslo"}
    assert json.loads("".join(pieces[1])) == long_arguments
    assert "".join(pieces[2]) == "{}"


def test_include_usage_adds_a_final_usage_chunk(server: TestServer) -> None:
    server.script(Reply.text("some words here"))
    body = {"messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}

    chunks = chunks_of(stream_events(server, body)[1])

    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["id"] == chunks[0]["id"]
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]


# --------------------------------------------------------------------------- failure injection


def test_error_reply_with_retry_after(server: TestServer) -> None:
    server.script(
        Reply.error(
            429,
            "rate limited",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": "0.1"},
        ),
        Reply.error(503),
    )

    response = chat(server)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0.1"
    assert response.json() == {
        "error": {
            "message": "rate limited",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    streamed = chat(server, {"messages": USER_HI, "stream": True})
    assert streamed.status_code == 503
    assert streamed.headers["content-type"] == "application/json"
    assert streamed.json()["error"] == {
        "message": "503 Service Unavailable",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_raw_reply_is_sent_verbatim(server: TestServer) -> None:
    server.script(Reply.raw(200, '{"choices": [tru'), Reply.raw(502, b"<html>bad gateway</html>", "text/html"))

    first = chat(server)
    assert (first.status_code, first.text, first.headers["content-type"]) == (
        200,
        '{"choices": [tru',
        "application/json",
    )
    second = chat(server)
    assert (second.status_code, second.content, second.headers["content-type"]) == (
        502,
        b"<html>bad gateway</html>",
        "text/html",
    )


def test_cut_after_drops_the_stream_midway(server: TestServer) -> None:
    server.script(Reply.text("one two three four").cut_after(2), Reply.text("intact"))
    received: list[str] = []

    with httpx2.Client() as client:
        with (
            pytest.raises(httpx2.RemoteProtocolError),
            client.stream(
                "POST", server.base_url + "/chat/completions", json={"messages": USER_HI, "stream": True}
            ) as response,
        ):
            assert response.status_code == 200
            received.extend(event.data for event in httpx2.EventSource(response))
        # The server keeps serving new connections afterwards.
        after = client.post(server.base_url + "/chat/completions", json={"messages": USER_HI})

    assert "[DONE]" not in received
    assert [json.loads(item)["choices"][0]["delta"].get("content") for item in received] == ["", "one "]
    assert after.json()["choices"][0]["message"]["content"] == "intact"


def test_cut_without_streaming_closes_without_a_response(server: TestServer) -> None:
    server.script(Reply.text("never sent").cut_after(3), Reply.cut(), Reply.error(500).cut_after(0))
    for stream in (False, True, True):
        with (
            pytest.raises(httpx2.RemoteProtocolError),
            httpx2.Client() as client,
            client.stream(
                "POST", server.base_url + "/chat/completions", json={"messages": USER_HI, "stream": stream}
            ) as response,
        ):
            # Reply.cut() streamed with 0 chunks: headers only, then the drop.
            response.read()


async def test_delay_does_not_block_other_requests(server: TestServer) -> None:
    server.script(Reply.text("slow", delay=0.4), Reply.text("fast"))
    finished: list[str] = []

    async with httpx2.AsyncClient(base_url=server.base_url) as client:

        async def ask() -> None:
            response = await client.post("/chat/completions", json={"messages": USER_HI})
            finished.append(response.json()["choices"][0]["message"]["content"])

        started = time.perf_counter()
        slow = asyncio.create_task(ask())
        while not server.requests:  # make sure the slow request claimed the first reply
            await asyncio.sleep(0.005)
        await ask()
        fast_elapsed = time.perf_counter() - started
        await slow
        slow_elapsed = time.perf_counter() - started

    assert finished == ["fast", "slow"]
    assert fast_elapsed < 0.3 <= 0.4 <= slow_elapsed


def test_latency_applies_to_every_reply() -> None:
    with TestServer(latency=0.15, responder=tool_then_answer) as server:
        started = time.perf_counter()
        assert chat(server).status_code == 200
        assert time.perf_counter() - started >= 0.15


# --------------------------------------------------------------------------- auth, routing


def test_api_key_is_enforced() -> None:
    with TestServer(api_key="sk-right") as server:
        server.script(Reply.text("welcome"))

        missing = chat(server)
        wrong = chat(server, headers={"Authorization": "Bearer sk-wrong"})
        models = httpx2.get(server.base_url + "/models")
        right = chat(server, headers={"Authorization": "Bearer sk-right"})

    assert missing.status_code == wrong.status_code == models.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    assert right.status_code == 200
    assert right.json()["choices"][0]["message"]["content"] == "welcome"


def test_models_unknown_paths_and_bad_json(server: TestServer) -> None:
    with httpx2.Client(base_url=server.base_url) as client:
        models = client.get("/models")
        unknown = client.get("/nope")
        wrong_method = client.get("/chat/completions")
        bad_json = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        not_object = client.post("/chat/completions", json=[1, 2])

    assert models.json() == {"object": "list", "data": [{"id": "test-model", "object": "model"}]}
    assert unknown.status_code == wrong_method.status_code == 404
    assert unknown.json()["error"]["message"] == "Unknown request URL: GET /v1/nope."
    assert bad_json.status_code == not_object.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert server.pending == 0 and len(server.requests) == 2


def test_malformed_http_gets_a_400(server: TestServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")


# --------------------------------------------------------------------------- concurrency, lifecycle


async def test_fifty_concurrent_requests_on_keep_alive_connections(server: TestServer) -> None:
    connections: set[int] = set()

    def answer(body: dict[str, Any]) -> Reply:
        # The responder runs inside the task serving the connection, so
        # distinct tasks are distinct TCP connections.
        connections.add(id(asyncio.current_task()))
        return Reply.text("answer " + body["messages"][0]["content"])

    server.responder = answer
    limits = httpx2.Limits(max_connections=10, max_keepalive_connections=10)

    async with httpx2.AsyncClient(base_url=server.base_url, limits=limits) as client:

        async def ask(i: int) -> str:
            body = {"messages": [{"role": "user", "content": str(i)}], "stream": i % 2 == 0}
            if i % 2:
                response = await client.post("/chat/completions", json=body)
                return str(response.json()["choices"][0]["message"]["content"])
            async with client.stream("POST", "/chat/completions", json=body) as response:
                chunks = [json.loads(e.data) async for e in httpx2.EventSource(response) if e.data != "[DONE]"]
            return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

        answers = await asyncio.gather(*(ask(i) for i in range(50)))

    assert answers == [f"answer {i}" for i in range(50)]
    assert len(server.requests) == 50
    assert 1 <= len(connections) <= 10  # 50 requests over at most 10 kept-alive connections


async def test_async_context_manager_and_explicit_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    async with TestServer(port=free_port, responder=tool_then_answer) as server:
        assert server.base_url == f"http://127.0.0.1:{free_port}/v1"
        async with httpx2.AsyncClient() as client:
            response = await client.post(server.base_url + "/chat/completions", json={"messages": USER_HI})
        assert response.json()["choices"][0]["message"]["content"] == "You said: hi"
        with pytest.raises(OSError):
            TestServer(port=free_port).start()
    with pytest.raises(RuntimeError):
        _ = server.base_url


def test_start_stop_restart() -> None:
    server = TestServer(responder=tool_then_answer)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    server.start()
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    assert chat(server).status_code == 200
    server.stop()
    server.stop()  # idempotent
    server.start()
    try:
        assert chat(server).status_code == 200
    finally:
        server.stop()


def test_stop_with_a_client_still_connected() -> None:
    server = TestServer().start()
    server.script(Reply.text("x", delay=30))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        while not server.requests:
            time.sleep(0.005)
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 5
        with contextlib.suppress(ConnectionResetError):  # a reset is just as good as EOF here
            assert sock.recv(4096) == b""


def test_reply_validation() -> None:
    with pytest.raises(ValueError):
        Reply.text("x", chunks=0)
    with pytest.raises(ValueError):
        Reply.error(100)
    with pytest.raises(ValueError):
        Reply.text("x", delay=-1)
    with pytest.raises(ValueError):
        Reply.text("x").cut_after(-1)
    with pytest.raises(ValueError):
        Reply.tool_calls()
    with pytest.raises(TypeError):
        TestServer().script("hello")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the official SDK


async def test_official_openai_sdk_accepts_the_wire_format(server: TestServer) -> None:
    server.script(
        Reply.text("Hello from the test server."),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="call_w")),
        Reply.text("Streaming works fine."),
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"}, id="call_1"),
            ToolCall("get_time", {"zone": "Europe/Oslo"}, id="call_2"),
            content="Checking.",
        ),
    )
    messages: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]

    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        completion = await client.chat.completions.create(model="gpt-test", messages=messages)
        assert completion.choices[0].message.content == "Hello from the test server."
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.total_tokens > 0

        completion = await client.chat.completions.create(model="gpt-test", messages=messages)
        (call,) = completion.choices[0].message.tool_calls or []
        assert call.id == "call_w" and call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Oslo"}
        assert completion.choices[0].finish_reason == "tool_calls"

        for expected_content, expected_calls in (
            ("Streaming works fine.", []),
            (
                "Checking.",
                [
                    ("call_1", "get_weather", {"city": "Oslo", "unit": "celsius"}),
                    ("call_2", "get_time", {"zone": "Europe/Oslo"}),
                ],
            ),
        ):
            stream = await client.chat.completions.create(
                model="gpt-test", messages=messages, stream=True, stream_options={"include_usage": True}
            )
            content = ""
            calls: dict[int, list[str]] = {}
            finish_reason = None
            usage = None
            chunk_count = 0
            async for chunk in stream:
                chunk_count += 1
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    content += choice.delta.content or ""
                    finish_reason = choice.finish_reason or finish_reason
                    for delta in choice.delta.tool_calls or []:
                        entry = calls.setdefault(delta.index, ["", "", ""])
                        entry[0] += delta.id or ""
                        if delta.function is not None:
                            entry[1] += delta.function.name or ""
                            entry[2] += delta.function.arguments or ""
            assert chunk_count > 3
            assert content == expected_content
            reassembled = [(i, n, json.loads(a)) for _, (i, n, a) in sorted(calls.items())]
            assert reassembled == expected_calls
            assert finish_reason == ("tool_calls" if expected_calls else "stop")
            assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    assert [request.stream for request in server.requests] == [False, False, True, True]
    assert server.requests[0].headers["authorization"] == "Bearer test"


async def test_official_sdk_sees_errors_and_drops(server: TestServer) -> None:
    server.script(Reply.error(429, "slow down", type="rate_limit_error"), Reply.text("a b c").cut_after(2))
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError, match="slow down"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass


# --------------------------------------------------------------------------- the rule-based responder


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "city": {"type": "string"},
                "note": {"type": "string"},
            },
            "required": ["unit", "city"],
        },
    },
}


def test_tool_then_answer_rules() -> None:
    user = {"role": "user", "content": "Oslo"}

    reply = tool_then_answer({"messages": [user], "tools": [WEATHER_TOOL]})
    (call,) = reply.tool_call_list
    assert call.name == "get_weather"
    assert call.arguments == {"unit": "celsius", "city": "Oslo"}

    only_strings = {
        "type": "function",
        "function": {"name": "f", "parameters": {"properties": {"a": {}, "b": {}}}},
    }
    (call,) = tool_then_answer({"messages": [user], "tools": [only_strings]}).tool_call_list
    assert call.arguments == {"a": "Oslo"}

    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
    done = tool_then_answer({"messages": [user, assistant, tool_result], "tools": [WEATHER_TOOL]})
    assert done == Reply.text("Done: sunny")

    assert tool_then_answer({"messages": [user]}) == Reply.text("You said: Oslo")
    parts = {"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]}
    assert tool_then_answer({"messages": [parts]}) == Reply.text("You said: multipart")
    assert tool_then_answer({}) == Reply.text("You said: ")


async def test_tool_then_answer_drives_a_full_tool_loop_with_the_sdk() -> None:
    async with (
        TestServer(responder=tool_then_answer) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        messages: list[Any] = [{"role": "user", "content": "Bergen"}]
        first = await client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
        (call,) = first.choices[0].message.tool_calls or []
        assert call.type == "function"
        assert json.loads(call.function.arguments)["city"] == "Bergen"
        messages += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ]
        second = await client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
        assert second.choices[0].message.content == "Done: rain"


# --------------------------------------------------------------------------- as a separate process


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the server did not print its listening line in time"
    return proc.stdout.readline()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runs_as_a_module_until_signalled(stop_signal: signal.Signals) -> None:
    command = [
        sys.executable,
        "-m",
        "timestep.testing",
        "--port",
        "0",
        "--responder",
        "timestep.testing:tool_then_answer",
        "--no-record",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = _read_line(proc, timeout=30)
            assert line.startswith("listening on http://127.0.0.1:")
            base_url = line.split()[-1]
            assert base_url.endswith("/v1")
            response = httpx2.post(base_url + "/chat/completions", json={"messages": USER_HI})
            assert response.json()["choices"][0]["message"]["content"] == "You said: hi"
            proc.send_signal(stop_signal)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_module_rejects_a_bad_responder() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "timestep.testing", "--responder", "no_colon_here"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "package.module:function" in result.stderr
