"""An in-process, OpenAI-compatible Chat Completions server for tests and benchmarks.

Why a real HTTP server instead of mocking the HTTP client: the code under test
(retries, timeouts, SSE parsing, connection reuse, tool-call reassembly) lives
exactly at the HTTP layer, so the only faithful double is one that speaks the
same bytes on a real socket as ``api.openai.com`` does.

Design
------
* **Own thread, own event loop.** :class:`TestServer` runs ``asyncio.start_server``
  on a private event loop in a daemon thread. Tests can therefore drive it from
  synchronous code, from any asyncio event loop (pytest-asyncio creates a new one
  per test), or from another process (``python -m timestep.testing``), and a
  test's loop being blocked or closed never affects the server.
* **h11 for HTTP/1.1.** h11 is a small, well-tested, sans-I/O protocol state
  machine: it gives correct keep-alive, pipelining, chunked transfer encoding and
  framing errors without pulling in a web framework. Each TCP connection is one
  asyncio task looping over request/response cycles.
* **Scripted replies.** Tests describe *what the model says* with :class:`Reply`
  values queued by :meth:`TestServer.script` (consumed FIFO, one per chat
  completion request) and, once the queue is empty, a ``responder`` callable.
  Running out of both is a loud HTTP 500 whose message names the problem, so a
  test that makes one request too many fails with an obvious reason instead of
  hanging or receiving a made-up answer.
* **Byte-faithful wire format.** Non-streaming bodies and ``text/event-stream``
  chunks have the same shape, keys and ordering rules as OpenAI's API (role
  chunk first, tool-call arguments split over several deltas, optional usage
  chunk, ``data: [DONE]``), so the official ``openai`` SDK accepts them and
  client code is exercised on the same edge cases it meets in production.
* **Failure injection.** :meth:`Reply.error`, :meth:`Reply.raw`,
  :meth:`Reply.cut_after` and :meth:`Reply.cut_body_after` produce rate limits,
  malformed bodies, connections dropped before the answer or mid-stream, and
  answers reset part-way through their body, which are otherwise hard to
  provoke deterministically.
* **Cheap per request.** Benchmarks push thousands of requests through one
  server, so the hot path avoids logging, copies and per-request allocations
  beyond the response itself; recording can be switched off with
  ``record=False``.

Thread-safety: scripting, reading ``requests`` and :meth:`TestServer.reset` from
the test's thread while the server thread serves is safe because the shared
structures are a :class:`collections.deque` and a list, whose single operations
are atomic under the GIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal

import h11

__all__ = [
    "RecordedRequest",
    "Reply",
    "Responder",
    "TestServer",
    "ToolCall",
    "tool_then_answer",
]

_ReplyKind = Literal["message", "error", "raw"]

_CHAT_PATH = b"/v1/chat/completions"
_MODELS_PATH = b"/v1/models"
_READ_SIZE = 65536
_DEFAULT_MODEL = "test-model"
_NO_REPLY_MESSAGE = "test server has no scripted reply left"
_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_WORDS = re.compile(r"\s*\S+\s*")
_COMPACT = (",", ":")
_DONE_FRAME = b"data: [DONE]\n\n"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_MAX_ARGUMENT_PIECE = 16


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


# --------------------------------------------------------------------------- public values


@dataclass(frozen=True, slots=True, init=False)
class ToolCall:
    """One function call the scripted assistant makes.

    ``arguments`` given as a dict are JSON-encoded; given as a string they are
    sent verbatim, which is how tests feed a client malformed or truncated JSON.
    The id defaults to a fresh ``call_<hex>`` so that several calls in one
    conversation never collide, like real tool-call ids.
    """

    name: str
    arguments: dict[str, Any] | str
    id: str

    def __init__(self, name: str, arguments: dict[str, Any] | str, id: str | None = None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "arguments", arguments)
        object.__setattr__(self, "id", id if id is not None else _new_id("call_"))

    @property
    def arguments_json(self) -> str:
        """The arguments exactly as they appear on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


def _check_status(status: int) -> int:
    # h11 only sends final responses; 1xx would corrupt the connection state.
    if not 200 <= status <= 599:
        raise ValueError(f"HTTP status must be between 200 and 599, got {status}")
    return status


def _check_delay(delay: float) -> float:
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    return delay


@dataclass(frozen=True, slots=True)
class Reply:
    """What the server answers to one chat completion request.

    Build replies with the classmethods (:meth:`text`, :meth:`tool_calls`,
    :meth:`empty`, :meth:`error`, :meth:`raw`) rather than the constructor; they
    validate their input and keep tests readable. Replies are immutable, so a
    single value can be scripted several times or shared between tests.

    Every constructor accepts ``delay``: seconds the server waits (without
    blocking other connections) before answering, to exercise client timeouts
    and cancellation.
    """

    kind: _ReplyKind
    content: str | None = None
    tool_call_list: tuple[ToolCall, ...] = ()
    chunks: int | None = None
    status: int = 200
    error_type: str = "server_error"
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    cut_after_chunks: int | None = None
    cut_body_after_bytes: int | None = None

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def text(cls, content: str, *, chunks: int | None = None, delay: float = 0.0) -> Reply:
        """An assistant text answer (``finish_reason`` ``"stop"``).

        When streamed, the text is split into one delta per word (each word
        keeps its trailing whitespace) so clients see realistic incremental
        output; ``chunks=N`` instead splits it into N roughly equal parts, e.g.
        ``chunks=1`` to receive it in a single delta.
        """
        if chunks is not None and chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        return cls(kind="message", content=content, chunks=chunks, delay=_check_delay(delay))

    @classmethod
    def tool_calls(cls, *calls: ToolCall, content: str | None = None, delay: float = 0.0) -> Reply:
        """An assistant message that calls tools (``finish_reason`` ``"tool_calls"``).

        ``content`` optionally adds text next to the calls, which some models
        emit and which clients must not lose.
        """
        if not calls:
            raise ValueError("Reply.tool_calls() needs at least one ToolCall")
        return cls(kind="message", content=content, tool_call_list=calls, delay=_check_delay(delay))

    @classmethod
    def empty(cls, *, delay: float = 0.0) -> Reply:
        """An assistant message with neither content nor tool calls.

        Models do produce these; clients must cope with ``content: null``.
        """
        return cls(kind="message", delay=_check_delay(delay))

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str = "server_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

        ``headers`` are added to the response, e.g. ``{"retry-after": "0.1"}``
        to test that a client honours the server's back-off hint. The message
        defaults to the status phrase.
        """
        if message is None:
            message = f"{status} {_REASONS.get(status, b'Error').decode()}"
        return cls(
            kind="error",
            content=message,
            status=_check_status(status),
            error_type=type,
            error_code=code,
            headers=tuple((k.lower(), v) for k, v in (headers or {}).items()),
            delay=_check_delay(delay),
        )

    @classmethod
    def raw(
        cls,
        status: int,
        body: str | bytes,
        content_type: str = "application/json",
        *,
        delay: float = 0.0,
    ) -> Reply:
        """Send exactly ``body`` with this status and content type.

        For malformed-response tests: invalid JSON, HTML error pages from a
        proxy, a hand-written broken event stream, and so on.
        """
        data = body.encode() if isinstance(body, str) else bytes(body)
        return cls(
            kind="raw",
            status=_check_status(status),
            body=data,
            content_type=content_type,
            delay=_check_delay(delay),
        )

    @classmethod
    def cut(cls, after_chunks: int = 0, *, delay: float = 0.0) -> Reply:
        """A text reply that drops the connection; shorthand for ``Reply.text(...).cut_after(n)``."""
        return cls.text("this answer is never finished", delay=delay).cut_after(after_chunks)

    def cut_after(self, n: int) -> Reply:
        """A copy of this reply that closes the TCP connection part-way.

        Streamed, the response headers and ``n`` SSE chunks are sent, then the
        connection is closed without the final chunk or ``[DONE]``. Not
        streamed, the connection is closed without any response. This is how a
        crashed upstream or a network failure looks to the client.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return dataclasses.replace(self, cut_after_chunks=n)

    def cut_body_after(self, n: int) -> Reply:
        """A copy of this reply that answers, then closes the connection ``n`` bytes into the body.

        The status line and headers (with the full ``content-length``) go out, then the first ``n``
        bytes of the body, then the TCP connection is closed: a reset in the middle of an answer, as
        opposed to :meth:`cut_after`'s connection that never answers. Streamed replies are cut the
        same way, ``n`` bytes into the event stream.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return dataclasses.replace(self, cut_body_after_bytes=n)

    # -- derived values -----------------------------------------------------------------------

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call_list else "stop"

    def content_pieces(self) -> list[str]:
        """The content deltas this reply streams (see :meth:`text`)."""
        content = self.content
        if not content:
            return []
        if self.chunks is None:
            return _WORDS.findall(content) or [content]
        parts = min(self.chunks, len(content))
        size, extra = divmod(len(content), parts)
        pieces: list[str] = []
        start = 0
        for i in range(parts):
            end = start + size + (1 if i < extra else 0)
            pieces.append(content[start:end])
            start = end
        return pieces


Responder = Callable[[dict[str, Any]], Reply | Awaitable[Reply]]
"""Computes the reply for a request body when no scripted reply is queued (sync or async)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A chat completion request as the server received it, for assertions.

    Header names are lower-cased (HTTP header names are case-insensitive, so
    tests should not depend on the client's spelling). ``body`` is the parsed
    JSON, ``{}`` when the body was empty or not a JSON object.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """``body["messages"]``; raises ``KeyError`` if the client sent none."""
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


# --------------------------------------------------------------------------- wire format


def _error_body(message: str, type_: str, code: str | None = None) -> bytes:
    payload = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json.dumps(payload).encode()


def _text_of(content: Any) -> str:
    """Plain text of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _estimate_tokens(chars: int) -> int:
    # About four characters per token for English text: good enough for tests
    # that only check usage is present and plausible.
    return (chars + 3) // 4


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        chars += len(_text_of(message.get("content")))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                function = call.get("function") or {}
                chars += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return _estimate_tokens(chars)


def _split_arguments(arguments: str) -> list[str]:
    """Argument deltas: at least two for strings longer than one character, like OpenAI's."""
    if len(arguments) <= 1:
        return [arguments] if arguments else []
    size = min(_MAX_ARGUMENT_PIECE, math.ceil(len(arguments) / 2))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


class _Completion:
    """Renders one :class:`Reply` of kind ``"message"`` for one request."""

    __slots__ = ("arguments", "body", "created", "id", "model", "reply", "usage")

    def __init__(self, reply: Reply, body: dict[str, Any]) -> None:
        self.reply = reply
        self.body = body
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        model = body.get("model")
        self.model = model if isinstance(model, str) else _DEFAULT_MODEL
        self.arguments = [call.arguments_json for call in reply.tool_call_list]
        prompt = _prompt_tokens(body)
        completion_chars = len(reply.content or "") + sum(
            len(call.name) + len(args) for call, args in zip(reply.tool_call_list, self.arguments, strict=True)
        )
        completion = _estimate_tokens(completion_chars)
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def json(self) -> bytes:
        reply = self.reply
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_call_list:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": args}}
                for call, args in zip(reply.tool_call_list, self.arguments, strict=True)
            ]
        message["refusal"] = None
        payload = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": self.usage,
        }
        return json.dumps(payload).encode()

    def frames(self) -> Iterator[bytes]:
        """The SSE frames of the streamed answer, without the closing ``[DONE]``."""
        reply = self.reply
        options = self.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        head = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

        def frame(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            chunk: dict[str, Any] = {
                **head,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                chunk["usage"] = None
            return b"data: " + json.dumps(chunk, separators=_COMPACT).encode() + b"\n\n"

        # OpenAI opens with content "" for text answers and null when the
        # answer is only tool calls (or nothing at all).
        opening = "" if reply.content is not None else None
        yield frame({"role": "assistant", "content": opening, "refusal": None})
        for piece in reply.content_pieces():
            yield frame({"content": piece})
        for index, (call, args) in enumerate(zip(reply.tool_call_list, self.arguments, strict=True)):
            function = {"name": call.name, "arguments": ""}
            yield frame({"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]})
            for piece in _split_arguments(args):
                yield frame({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield frame({}, reply.finish_reason)
        if include_usage:
            usage_chunk = {**head, "choices": [], "usage": self.usage}
            yield b"data: " + json.dumps(usage_chunk, separators=_COMPACT).encode() + b"\n\n"


# --------------------------------------------------------------------------- HTTP plumbing


class _Closed(Exception):
    """The connection must be closed after the current request (no keep-alive)."""


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[h11.Request, bytes] | None:
    """Next complete request and its body, or ``None`` when the client is gone."""
    request: h11.Request | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            conn.receive_data(await reader.read(_READ_SIZE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, b"".join(body)
        else:  # ConnectionClosed, or PAUSED after an error
            return None


def _error_response(conn: h11.Connection, message: str) -> bytes:
    data = _error_body(message, "server_error")
    head = _response_head(500, [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())])
    return conn.send(head) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())


def _response_head(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))


async def _send_body(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    data: bytes,
    headers: list[tuple[bytes, bytes]] = _JSON_HEADERS,
) -> None:
    # One write for head + body + end keeps small responses to one segment.
    head = _response_head(status, [*headers, (b"content-length", str(len(data)).encode())])
    writer.write(conn.send(head) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _send_cut_body(
    conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply, body: dict[str, Any], keep: int
) -> None:
    """The head with the whole body's length, ``keep`` bytes of the body, then a closed connection."""
    if reply.kind == "message":
        completion = _Completion(reply, body)
        stream = bool(body.get("stream"))
        data = b"".join([*completion.frames(), _DONE_FRAME]) if stream else completion.json()
        headers = _SSE_HEADERS if stream else _JSON_HEADERS
        status = 200
    else:
        data = (
            _error_body(reply.content or "", reply.error_type, reply.error_code)
            if reply.kind == "error"
            else reply.body
        )
        headers, status = _JSON_HEADERS, reply.status
    head = _response_head(status, [*headers, (b"content-length", str(len(data)).encode())])
    writer.write(conn.send(head) + conn.send(h11.Data(data=data[:keep])))
    await writer.drain()
    raise _Closed  # closing the transport still delivers what was written


async def _send_stream(
    conn: h11.Connection, writer: asyncio.StreamWriter, frames: Iterator[bytes], cut: int | None
) -> None:
    # No content-length: h11 frames the body with chunked transfer encoding.
    writer.write(conn.send(_response_head(200, _SSE_HEADERS)))
    for sent, frame in enumerate(frames):
        if cut is not None and sent >= cut:
            break
        writer.write(conn.send(h11.Data(data=frame)))
        await writer.drain()
    if cut is not None:
        raise _Closed  # closing the transport still delivers what was written
    writer.write(conn.send(h11.Data(data=_DONE_FRAME)) + conn.send(h11.EndOfMessage()))
    await writer.drain()


# --------------------------------------------------------------------------- the server


class TestServer:
    """An OpenAI-compatible Chat Completions server on a background thread.

    Use it as a context manager (``with TestServer() as server`` or ``async
    with``), or call :meth:`start` and :meth:`stop`. Point a client at
    :attr:`base_url`, queue answers with :meth:`script` and/or set
    :attr:`responder`, then assert on :attr:`requests`.

    Args:
        host: interface to bind; loopback by default so tests never listen publicly.
        port: TCP port; 0 lets the OS pick a free one (read it back from :attr:`port`).
        responder: answers requests once the scripted queue is empty; may be
            ``async def``. It runs on the server's event loop, so it must not
            block for long or use objects bound to another event loop.
        api_key: if set, requests without ``Authorization: Bearer <api_key>``
            get a 401 like OpenAI's, to test credential handling.
        latency: seconds awaited before every chat completion reply, to model
            a remote API in benchmarks without blocking other connections.
        record: keep a :class:`RecordedRequest` per chat completion request;
            benchmarks turn it off so memory stays flat over long runs.
    """

    __test__ = False  # the name starts with "Test"; keep pytest from collecting it

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        responder: Responder | None = None,
        api_key: str | None = None,
        latency: float = 0.0,
        record: bool = True,
    ) -> None:
        self.host = host
        self.responder: Responder | None = responder
        self.api_key = api_key
        self.latency = _check_delay(latency)
        self.record = record
        self._requested_port = port
        self._port: int | None = None
        self._expected_auth = f"Bearer {api_key}" if api_key is not None else None
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._chat_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- test-facing API ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TestServer is not running; call start() or use it as a context manager")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, ready for ``OpenAI(base_url=...)``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every chat completion request received, in arrival order (a live list)."""
        return self._requests

    @property
    def pending(self) -> int:
        """How many scripted replies have not been consumed yet."""
        return len(self._queue)

    def script(self, *replies: Reply) -> TestServer:
        """Queue replies; each chat completion request consumes the oldest one."""
        for reply in replies:
            if not isinstance(reply, Reply):
                raise TypeError(f"script() takes Reply values, got {type(reply).__name__}")
        self._queue.extend(replies)
        return self

    def reset(self) -> None:
        """Forget scripted replies, recorded requests and the responder (between tests)."""
        self._queue.clear()
        self._requests.clear()
        self._chat_count = 0
        self.responder = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> TestServer:
        """Bind the port and serve on a daemon thread; returns once connections are accepted.

        Binding errors (``OSError``, e.g. the port is in use) are raised here,
        in the caller's thread, rather than lost in the server thread.
        """
        if self._thread is not None:
            raise RuntimeError("TestServer is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._run_thread, args=(loop, ready, failure), name="timestep-test-server", daemon=True
        )
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, then join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("TestServer.stop() called from its own thread (e.g. a responder) would deadlock")
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._loop = self._thread = None

    def _run_thread(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # e.g. port already in use: re-raised in start()
                failure.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
        finally:
            loop.close()

    async def _open(self) -> None:
        """Start listening on the running loop (also used by ``python -m timestep.testing``)."""
        # A deep backlog: benchmarks open hundreds of connections at once, and
        # a dropped SYN costs the client a full second before it retries.
        self._server = await asyncio.start_server(self._serve_connection, self.host, self._requested_port, backlog=2048)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server = self._server
        if server is None:
            return
        server.close()
        connections = list(self._connections.items())
        for task, writer in connections:
            # abort(), not close(): a client that stopped reading must not stall shutdown.
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for task, _ in connections), return_exceptions=True)
        await server.wait_closed()
        # Let the transports' connection_lost callbacks run before the loop is
        # closed; otherwise their sockets are only released by the GC.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self._server = None
        self._port = None

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> TestServer:
        # Starting takes a few milliseconds of blocking; keep the caller's loop responsive.
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- serving ------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                try:
                    incoming = await _read_request(conn, reader, writer)
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        message = f"malformed HTTP request: {exc}"
                        await _send_body(conn, writer, 400, _error_body(message, "invalid_request_error"))
                    break
                if incoming is None:
                    break
                await self._respond(conn, writer, *incoming)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (_Closed, ConnectionError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            # Shutdown cancels open connections. Ending normally keeps asyncio's stream callback from
            # logging the cancellation as an error (it calls task.exception() on a cancelled task).
            pass
        except Exception as exc:  # a bug here must reach the test as an answer, not a hang
            if conn.our_state is h11.SEND_RESPONSE:
                message = f"test server failed: {type(exc).__name__}: {exc}"
                writer.write(_error_response(conn, message))
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _respond(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, data: bytes
    ) -> None:
        path = request.target.partition(b"?")[0]
        if path == _CHAT_PATH and request.method == b"POST":
            await self._chat_completion(conn, writer, request, path, data)
        elif not self._authorized(request):
            await _send_body(conn, writer, 401, self._unauthorized_body(request))
        elif path == _MODELS_PATH and request.method == b"GET":
            models = {"object": "list", "data": [{"id": _DEFAULT_MODEL, "object": "model"}]}
            await _send_body(conn, writer, 200, json.dumps(models).encode())
        else:
            message = f"Unknown request URL: {request.method.decode()} {path.decode('latin-1')}."
            await _send_body(conn, writer, 404, _error_body(message, "invalid_request_error", "unknown_url"))

    def _authorized(self, request: h11.Request) -> bool:
        if self._expected_auth is None:
            return True
        for name, value in request.headers:
            if name == b"authorization":
                return value.decode("latin-1") == self._expected_auth
        return False

    @staticmethod
    def _unauthorized_body(request: h11.Request) -> bytes:
        sent = any(name == b"authorization" for name, _ in request.headers)
        message = (
            "Incorrect API key provided."
            if sent
            else "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return _error_body(message, "invalid_request_error", "invalid_api_key" if sent else None)

    async def _chat_completion(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        path: bytes,
        data: bytes,
    ) -> None:
        body: dict[str, Any] | None
        try:
            parsed = json.loads(data) if data.strip() else {}
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            body = None
        if self.record:
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
            recorded = RecordedRequest("POST", path.decode("latin-1"), headers, body or {})
            self._requests.append(recorded)
        if not self._authorized(request):
            await _send_body(conn, writer, 401, self._unauthorized_body(request))
            return
        if body is None:
            message = "We could not parse the JSON body of your request. The body must be a JSON object (test server)."
            await _send_body(conn, writer, 400, _error_body(message, "invalid_request_error"))
            return
        self._chat_count += 1
        # Pick the reply before sleeping so scripted replies follow arrival order.
        reply = await self._next_reply(body)
        delay = self.latency + (reply.delay if isinstance(reply, Reply) else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(reply, bytes):  # no reply available: an explanatory 500
            await _send_body(conn, writer, 500, reply)
            return
        await self._send_reply(conn, writer, reply, body)

    async def _next_reply(self, body: dict[str, Any]) -> Reply | bytes:
        """The scripted or computed reply, or an error body explaining why there is none."""
        try:
            return self._queue.popleft()
        except IndexError:
            pass
        responder = self.responder
        if responder is None:
            message = (
                f"{_NO_REPLY_MESSAGE} (chat completion request #{self._chat_count}): queue more with "
                "server.script(...) or set server.responder"
            )
            return _error_body(message, "server_error")
        try:
            result = responder(body)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # surface responder bugs to the test instead of hanging
            return _error_body(f"test server responder raised {type(exc).__name__}: {exc}", "server_error")
        if not isinstance(result, Reply):
            message = f"test server responder returned {type(result).__name__}, expected Reply"
            return _error_body(message, "server_error")
        return result

    async def _send_reply(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply, body: dict[str, Any]
    ) -> None:
        stream = bool(body.get("stream"))
        if reply.cut_body_after_bytes is not None:
            await _send_cut_body(conn, writer, reply, body, reply.cut_body_after_bytes)
        cut = reply.cut_after_chunks
        if cut is not None and not (stream and reply.kind == "message"):
            raise _Closed  # nothing to stream: drop the connection without a response
        if reply.kind == "error":
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
            payload = _error_body(reply.content or "", reply.error_type, reply.error_code)
            await _send_body(conn, writer, reply.status, payload, [*_JSON_HEADERS, *extra])
        elif reply.kind == "raw":
            headers = [(b"content-type", reply.content_type.encode("latin-1"))]
            await _send_body(conn, writer, reply.status, reply.body, headers)
        elif stream:
            await _send_stream(conn, writer, _Completion(reply, body).frames(), cut)
        else:
            await _send_body(conn, writer, 200, _Completion(reply, body).json())


# --------------------------------------------------------------------------- rule-based responder

_PREFERRED_ARGUMENTS = ("city", "query", "message", "text", "location", "input", "prompt", "question")
_PLACEHOLDERS: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _is_free_string(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type", "string") == "string" and "enum" not in schema


def _placeholder(schema: Any) -> Any:
    """A value that satisfies a simple property schema: its default, first enum value, or a zero value."""
    if not isinstance(schema, dict):
        return ""
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return _PLACEHOLDERS.get(kind, "")


def _arguments_for(parameters: Any, text: str) -> dict[str, Any]:
    """Arguments for a tool from its JSON schema, carrying the user's text.

    The text goes into the first free-form string property whose name
    contains city/query/message/text/location/input/prompt/question, else
    into the first free-form string property. Other *required* properties get
    a placeholder (default, first enum value, or a zero value) so the call
    validates; optional ones are left out.
    """
    properties: dict[str, Any] = {}
    required: list[Any] = []
    if isinstance(parameters, dict):
        properties = parameters.get("properties") or {}
        required = parameters.get("required") or []
    strings = [name for name, schema in properties.items() if _is_free_string(schema)]
    preferred = [n for n in strings if any(word in n.lower() for word in _PREFERRED_ARGUMENTS)]
    candidates = preferred or strings
    target = candidates[0] if candidates else None
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        if name == target:
            arguments[name] = text
        elif name in required:
            arguments[name] = _placeholder(schema)
    return arguments


def tool_then_answer(body: dict[str, Any]) -> Reply:
    """A deterministic stand-in for a model that uses a tool, then answers.

    * the last message is a tool result → ``Reply.text("Done: " + result)``;
    * else, if the request offers tools → call the first tool, with arguments
      built from its schema by :func:`_arguments_for` (the user's last message
      goes into the most plausible string property);
    * else → ``Reply.text("You said: " + last user message)``.

    Every conversation therefore takes exactly two model calls when tools are
    offered and one otherwise, which makes benchmark numbers comparable.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        return Reply.text("Done: " + _text_of(last.get("content")))
    text = _last_user_text(messages)
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function", tools[0])
        name = str(function.get("name", "tool"))
        return Reply.tool_calls(ToolCall(name, _arguments_for(function.get("parameters"), text)))
    return Reply.text("You said: " + text)
