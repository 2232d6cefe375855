"""How Timestep talks to an OpenAI-compatible Chat Completions endpoint.

Plain HTTP on ``aiohttp`` with bodies serialised by ``json``. Timestep's messages are already in the
API's wire form, so there is nothing to transform: the ``openai`` client's typed-params transform
walks every message of every request, which costs hundreds of milliseconds per call on a long
conversation. ``aiohttp`` rather than ``httpx2`` (which ``openai`` is built on) because its
connection pool stays cheap with many connections open: at 1,000 concurrent conversations
``httpx2``'s pool scans every connection on every request (see docs/benchmarks.md for both, side by
side).

What the ``openai`` client gives, this module keeps: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``,
retries with exponential backoff on 408, 409, 429, 5xx and connection errors that honour
``Retry-After``, timeouts, errors that say what happened, and the same reading of a
``text/event-stream`` (multi-line ``data``, comments, ``[DONE]``, error events). A configured
``openai.AsyncOpenAI`` can be handed in with :meth:`ModelClient.from_openai`; its base URL, key,
headers, timeout and retry budget are used, its transform is not.

Secrets stay in the request: the key is sent once, in ``Authorization``, and every error that leaves
this module has the key and any secret-looking header value (``api-key``, ``x-auth-token``...)
replaced by ``***``, whatever the server echoed back, because error texts end up in events, stored
tool results and logs. Nothing here logs.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    import aiohttp

from .exceptions import ConfigurationError, ModelConnectionError, ModelHTTPError, ModelResponseError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0
MAX_CONNECTIONS = 1000
REDACTED = "***"
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password|signature|session", re.IGNORECASE)
_MIN_SECRET = 6  # shorter values are not secrets worth hiding, and would blank out ordinary words
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass
class ModelClient:
    """An endpoint and how to call it. One instance can be shared by any number of runs."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 120.0
    connect_timeout: float = 10.0
    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:  # never show the key or header values
        return f"ModelClient(base_url={self._redact(self.base_url)!r}, api_key={REDACTED if self.api_key else None})"

    @classmethod
    def from_env(cls) -> ModelClient:
        """``OPENAI_BASE_URL`` (default: OpenAI) and ``OPENAI_API_KEY``, as the openai client reads them."""
        base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        api_key = os.environ.get("OPENAI_API_KEY") or None
        if api_key is None and base_url.rstrip("/") == DEFAULT_BASE_URL:
            raise ConfigurationError(
                "OPENAI_API_KEY is not set: set it, or set OPENAI_BASE_URL to a local OpenAI-compatible "
                "server (Ollama, vLLM, timestep.testing.TestServer)"
            )
        return cls(base_url=base_url, api_key=api_key)

    @classmethod
    def from_openai(cls, client: Any) -> ModelClient:
        """Use an ``openai.AsyncOpenAI``'s endpoint, key, headers, timeout and retry budget."""
        headers = {k: v for k, v in dict(getattr(client, "_custom_headers", {}) or {}).items() if isinstance(v, str)}
        if getattr(client, "organization", None):
            headers.setdefault("OpenAI-Organization", client.organization)
        if getattr(client, "project", None):
            headers.setdefault("OpenAI-Project", client.project)
        read, connect = _timeouts(getattr(client, "timeout", None))
        return cls(
            base_url=str(client.base_url),
            api_key=client.api_key or None,
            headers=headers,
            timeout=read,
            connect_timeout=connect,
            max_retries=int(getattr(client, "max_retries", 2)),
        )

    # -- HTTP ------------------------------------------------------------------------------------

    async def _session(self) -> aiohttp.ClientSession:
        """One pooled ``aiohttp`` session per event loop: connections cannot cross loops.

        The pool is closed when its loop shuts down (``asyncio.run`` and ``asyncio.Runner`` close every
        open async generator first; :func:`_close_at_shutdown` is one), so a script that never calls
        :meth:`aclose` still leaves no socket open, and no finalizer has to do I/O.
        """
        import asyncio  # at call time: ``import timestep`` stays light

        loop = asyncio.get_running_loop()
        entry = self._http.get(loop)
        if entry is None:
            import aiohttp

            session = aiohttp.ClientSession(
                headers=self._request_headers(),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_connect=self.connect_timeout, sock_read=self.timeout
                ),
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            )
            closer = _close_at_shutdown(session)
            await closer.__anext__()
            entry = self._http[loop] = (session, closer)
        return entry[0]

    def _request_headers(self) -> dict[str, str]:
        """Ours, then the caller's (which win, as in ``openai``), the key once, in ``Authorization``."""
        merged: dict[str, tuple[str, str]] = {}
        defaults = {"Content-Type": "application/json", "Accept": "application/json"}
        for name, value in (*defaults.items(), *self.headers.items()):
            merged[name.lower()] = (name, value)
        if self.api_key and "authorization" not in merged:
            merged["authorization"] = ("Authorization", f"Bearer {self.api_key}")
        return dict(merged.values())

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop."""
        import asyncio  # at call time: ``import timestep`` stays light

        entry = self._http.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming Chat Completion, retried as configured."""
        _, raw = await self._send(body, stream=False)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ModelResponseError(
                self._redact(
                    f"{self.base_url}/chat/completions answered with invalid JSON: {_snippet(raw) or '(empty body)'}"
                )
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise ModelResponseError(
                self._redact(f"{self.base_url}/chat/completions answered without choices: {_snippet(data)}")
            )
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of a streaming Chat Completion. Retries happen only before the first chunk."""
        import aiohttp

        response, _ = await self._send({**body, "stream": True}, stream=True)
        try:
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raw = await response.read()
                raise ModelResponseError(
                    self._redact(
                        f"{self.base_url}/chat/completions did not answer with a stream (content-type "
                        f"{content_type or 'missing'!r}): {_snippet(raw) or '(empty body)'}"
                    )
                )
            done = False
            try:
                events = _EventStream()
                async for piece in response.content.iter_any():
                    for event, data in events.feed(piece):
                        if data == "[DONE]":
                            done = True
                            break
                        yield self._chunk(event, data)
                    if done:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ModelResponseError(
                    self._redact(f"the stream broke off before it finished: {self._describe(exc)}")
                ) from exc
            if not done:
                raise ModelResponseError("the stream ended before it finished (no [DONE]): the connection was cut")
        finally:
            response.release()  # back to the pool if the body was read to its end, else closed

    def _chunk(self, event: str, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            if event == "error":
                raise ModelResponseError(self._redact(f"the stream reported an error: {_snippet(data)}")) from None
            raise ModelResponseError(
                self._redact(f"the stream sent a chunk that is not JSON: {_snippet(data)}")
            ) from None
        if event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            raise ModelResponseError(self._redact(f"the stream reported an error: {_error_message(chunk)}"))
        if not isinstance(chunk, dict):
            raise ModelResponseError(self._redact(f"the stream sent a chunk that is not an object: {_snippet(data)}"))
        return chunk

    async def _send(self, body: dict[str, Any], *, stream: bool) -> tuple[aiohttp.ClientResponse, bytes]:
        """POST with retries. Streamed, the open response; else the response and its whole body."""
        import asyncio

        import aiohttp

        session = await self._session()
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            response: aiohttp.ClientResponse | None = None
            try:
                response = await session.post(url, data=content)
                if response.status < 400 and stream:
                    return response, b""
                raw = await response.read()
            except (aiohttp.ClientConnectionError, TimeoutError, aiohttp.ClientPayloadError) as exc:
                if response is not None:
                    response.release()
                if attempt >= self.max_retries:
                    raise self._unreachable(exc, answered=response is not None, attempts=attempt + 1) from exc
                await asyncio.sleep(self._backoff(attempt, None))
                attempt += 1
                continue
            except aiohttp.ClientResponseError as exc:  # the server's answer was not valid HTTP
                raise ModelResponseError(
                    self._redact(f"{url} answered with a malformed HTTP response: {self._describe(exc)}")
                ) from exc
            if response.status < 400:
                return response, raw
            if response.status in RETRY_STATUSES and attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt, response.headers))
                attempt += 1
                continue
            raise ModelHTTPError(
                response.status,
                self._redact(_error_message(raw) + (f" (after {attempt + 1} attempts)" if attempt else "")),
                url=self._redact(url),
                body=self._redact(raw.decode("utf-8", "replace")[:2000]),
            )

    def _unreachable(self, exc: BaseException, *, answered: bool, attempts: int) -> Exception:
        """The error for a request that failed below HTTP: never reached, timed out, or cut mid-answer."""
        after = f" (after {attempts} attempt{'s' if attempts > 1 else ''})"
        if answered:  # the status line came, then the body broke off
            return ModelResponseError(
                self._redact(f"{self.base_url} answered, but its answer broke off: {self._describe(exc)}{after}")
            )
        return ModelConnectionError(self._redact(f"cannot reach {self.base_url}: {self._describe(exc)}{after}"))

    def _describe(self, exc: BaseException) -> str:
        """What went wrong, never empty: several of these exceptions carry no text of their own."""
        name = type(exc).__name__
        import aiohttp

        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"no connection within {self.connect_timeout:g} s ({name})"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout:g} s ({name})"
        text = str(exc).strip()
        return f"{name}: {text}" if text else f"{name} (no details given)"

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = _hide(text, secret)
        return text

    def _secrets(self) -> list[str]:
        found = [self.api_key] if self.api_key else []
        for name, value in self.headers.items():
            if _SECRET_HEADER.search(name):
                found.append(value)
                found.extend(value.split())  # "Bearer sk-..." hides the bare token too
        # longest first, so a value containing another is hidden whole
        return sorted({s for s in found if len(s) >= _MIN_SECRET}, key=len, reverse=True)

    def _backoff(self, attempt: int, headers: Any) -> float:
        """``Retry-After`` (seconds, milliseconds or an HTTP date) if the server said; else exponential."""
        if headers is not None:
            ms = headers.get("retry-after-ms")
            after = headers.get("retry-after")
            try:
                if ms is not None:
                    return min(max(float(ms) / 1000, 0.0), MAX_RETRY_AFTER)
                if after is not None:
                    return min(max(float(after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                import email.utils  # rare: an HTTP-date Retry-After

                try:
                    when = email.utils.parsedate_to_datetime(after) if after else None
                except (TypeError, ValueError):
                    when = None
                if when is not None:
                    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
        delay = min(self.backoff_base * 2.0**attempt, self.backoff_max)
        return delay * (0.75 + random.random() / 2)


def _timeouts(timeout: Any) -> tuple[float, float]:
    """(read, connect) seconds from an ``openai`` timeout: a number, an ``httpx2.Timeout`` or ``None``."""
    if isinstance(timeout, int | float):
        return float(timeout), min(float(timeout), 10.0)
    read = getattr(timeout, "read", None)
    connect = getattr(timeout, "connect", None)
    read_s = float(read) if isinstance(read, int | float) else 600.0
    return read_s, float(connect) if isinstance(connect, int | float) else min(read_s, 10.0)


class _EventStream:
    """The events of a ``text/event-stream``, as the WHATWG spec reads it, fed piece by piece.

    Lines end in CRLF, LF or CR; ``:`` starts a comment; ``data`` lines of one event join with
    ``\\n``; a blank line dispatches; an event without data is dropped. Lines are split as bytes
    before decoding, so a UTF-8 character cut across two network reads stays whole. A plain method
    rather than an async generator: one fewer suspension per chunk on the streaming hot path.
    """

    __slots__ = ("_data", "_event", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[tuple[str, str]]:
        """The ``(event, data)`` pairs this network read completes."""
        buffer = self._tail + piece
        hold = b""
        if buffer.endswith(b"\r"):  # maybe the first half of a CRLF
            buffer, hold = buffer[:-1], b"\r"
        lines = _LINE_END.split(buffer)
        self._tail = lines.pop() + hold
        out: list[tuple[str, str]] = []
        data = self._data
        for raw in lines:
            if not raw:
                if data:
                    out.append((self._event or "message", "\n".join(data)))
                    data = self._data = []
                self._event = ""
                continue
            line = raw.decode("utf-8", "replace")
            name, _, value = line.partition(":")
            if not name:
                continue  # a comment (": keep-alive")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                self._event = value
        return out


async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await session.close()


def _hide(text: str, secret: str) -> str:
    """``text`` with the secret, and any long enough piece of it, replaced by ``REDACTED``.

    A server that echoes a key often echoes it cut (``sk-proj-abc...xyz`` less its last characters, or
    with stars in the middle), so hiding the whole key is not enough: any run of a quarter of it, or
    of eight characters if that is more, goes too (a key's shared prefix alone, ``sk-proj-``, may go
    with it: hiding too much is the safe side).
    """
    if secret in text:
        text = text.replace(secret, REDACTED)
    window = min(len(secret), max(8, len(secret) // 4))
    spans: list[tuple[int, int]] = []
    for i in range(len(secret) - window + 1):
        at = text.find(secret[i : i + window])
        while at >= 0:
            start, end, j = at, at + window, i + window
            while end < len(text) and j < len(secret) and text[end] == secret[j]:
                end, j = end + 1, j + 1
            k = i
            while start > 0 and k > 0 and text[start - 1] == secret[k - 1]:
                start, k = start - 1, k - 1
            spans.append((start, end))
            at = text.find(secret[i : i + window], at + 1)
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:  # overlaps the previous span: it is already hidden up to ``last``
            if end > last:
                last = end
            continue
        out += [text[last:start], REDACTED]
        last = end
    return "".join([*out, text[last:]])


def _snippet(value: Any, limit: int = 300) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(raw: Any) -> str:
    """The ``error.message`` of an OpenAI-shaped error body, or the body itself."""
    data = raw
    if isinstance(raw, bytes | str):
        try:
            data = json.loads(raw)
        except ValueError:
            return _snippet(raw) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return _snippet(data) or "(empty body)"
