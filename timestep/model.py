"""How Timestep talks to an OpenAI-compatible Chat Completions endpoint.

Plain HTTP on ``httpx2`` (the HTTP client the ``openai`` package itself is built on) with bodies
serialised by ``json``. Timestep's messages are already in the API's wire form, so there is nothing
to transform: the ``openai`` client's typed-params transform walks every message of every request,
which costs hundreds of milliseconds per call on a long conversation (see docs/benchmarks.md).

What the ``openai`` client gives, this module keeps: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``,
retries with exponential backoff on 429, 5xx and connection errors that honour ``Retry-After``,
timeouts, and errors that say what the endpoint answered. A configured ``openai.AsyncOpenAI`` can
be handed in with :meth:`ModelClient.from_openai`; its base URL, key, headers, timeout and retry
budget are used, its transform is not.

Nothing here logs; the API key lives only in the ``Authorization`` header.
"""

from __future__ import annotations

import json
import os
import random
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

from .exceptions import ConfigurationError, ModelConnectionError, ModelHTTPError, ModelResponseError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


@dataclass
class ModelClient:
    """An endpoint and how to call it. One instance can be shared by any number of runs."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    connect_timeout: float = 10.0
    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._http: dict[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()  # type: ignore[assignment]

    def __repr__(self) -> str:  # never show the key
        return f"ModelClient(base_url={self.base_url!r}, api_key={'***' if self.api_key else None})"

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
        timeout = getattr(client, "timeout", None)
        read_timeout = timeout if isinstance(timeout, int | float) else getattr(timeout, "read", None) or 120.0
        return cls(
            base_url=str(client.base_url),
            api_key=client.api_key or None,
            headers=headers,
            timeout=float(read_timeout),
            max_retries=int(getattr(client, "max_retries", 2)),
        )

    # -- HTTP ------------------------------------------------------------------------------------

    async def _client(self) -> Any:
        """One pooled httpx2 client per event loop: connections cannot cross loops.

        The pool is closed when its loop shuts down (``asyncio.run`` and ``asyncio.Runner`` close every
        open async generator first; :func:`_close_at_shutdown` is one), so a script that never calls
        :meth:`aclose` still leaves no socket open.
        """
        import asyncio  # at call time: ``import timestep`` stays light

        loop = asyncio.get_running_loop()
        entry = self._http.get(loop)
        if entry is None:
            import httpx2

            headers = {"content-type": "application/json", "accept": "application/json", **self.headers}
            if self.api_key:
                headers["authorization"] = f"Bearer {self.api_key}"
            http = httpx2.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx2.Timeout(self.timeout, connect=self.connect_timeout),
                limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
            )
            closer = _close_at_shutdown(http)
            await closer.__anext__()
            entry = self._http[loop] = (http, closer)
        return entry[0]

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop."""
        import asyncio  # at call time: ``import timestep`` stays light

        entry = self._http.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming Chat Completion, retried as configured."""
        response = await self._send(body, stream=False)
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise ModelResponseError(
                f"{self.base_url}/chat/completions answered with invalid JSON: {_snippet(response.content)}"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise ModelResponseError(f"{self.base_url}/chat/completions answered without choices: {_snippet(data)}")
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of a streaming Chat Completion. Retries happen only before the first chunk."""
        import httpx2

        response = await self._send({**body, "stream": True}, stream=True)
        done = False
        try:
            async for sse in httpx2.EventSource(response):
                if sse.data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(sse.data)
                except ValueError:
                    raise ModelResponseError(
                        f"the stream sent a chunk that is not JSON: {_snippet(sse.data)}"
                    ) from None
                if isinstance(chunk, dict) and "error" in chunk:
                    raise ModelResponseError(f"the stream reported an error: {_error_message(chunk)}")
                yield chunk
        except httpx2.SSEError as exc:
            raise ModelResponseError(f"{self.base_url}/chat/completions did not answer with a stream: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ModelResponseError(f"the stream broke off before it finished: {exc or type(exc).__name__}") from exc
        finally:
            await response.aclose()
        if not done:
            raise ModelResponseError("the stream ended before it finished (no [DONE]): the connection was cut")

    async def _send(self, body: dict[str, Any], *, stream: bool) -> Any:
        import asyncio

        import httpx2

        http = await self._client()
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        url = "/chat/completions"
        attempt = 0
        while True:
            try:
                request = http.build_request("POST", url, content=content)
                response = await http.send(request, stream=stream)
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
                if attempt >= self.max_retries:
                    raise ModelConnectionError(
                        f"cannot reach {self.base_url}: {type(exc).__name__}: {exc or 'no answer'}"
                        f" (after {attempt + 1} attempt{'s' if attempt else ''})"
                    ) from exc
                await asyncio.sleep(self._backoff(attempt, None))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            raw = await response.aread()
            await response.aclose()
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt, response.headers))
                attempt += 1
                continue
            raise ModelHTTPError(
                response.status_code,
                _error_message(raw) + (f" (after {attempt + 1} attempts)" if attempt else ""),
                url=f"{self.base_url}{url}",
                body=raw.decode("utf-8", "replace")[:2000],
            )

    def _backoff(self, attempt: int, headers: Any) -> float:
        """``Retry-After`` (seconds, milliseconds or an HTTP date) if the server said; else exponential."""
        if headers is not None:
            ms = headers.get("retry-after-ms")
            after = headers.get("retry-after")
            try:
                if ms is not None:
                    return min(float(ms) / 1000, MAX_RETRY_AFTER)
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


async def _close_at_shutdown(http: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await http.aclose()


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
    return _snippet(data)
