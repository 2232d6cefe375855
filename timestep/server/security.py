"""What every request meets before a route: a size limit, and the bearer token when one is set.

Both are plain ASGI middleware, so they hold for the API and the static page alike, for the app
served by ``timestep serve`` and for the same app mounted in someone else's. The token is compared
in constant time (:func:`hmac.compare_digest`) and never written anywhere; a missing or wrong one is
a 401 that does not say which. The page's own files are served without a token (they hold nothing
but code); everything under ``/api`` except the OpenAPI document needs it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/api/openapi.json", "/api/docs", "/api/health"})


async def send_error(send: Send, status: int, kind: str, message: str, headers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with a 413, declared or not.

    The body is read here, up to the limit, and handed on whole; later ``receive`` calls go to the
    server again, so a streaming response still hears the client disconnect.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await send_error(
                send, 413, "PayloadTooLarge", f"request bodies are limited to {self.max_bytes} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_error(
                    send, 413, "PayloadTooLarge", f"request bodies are limited to {self.max_bytes} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class BearerToken:
    """Require ``Authorization: Bearer <token>`` on the API."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under a prefix: the API's own path
        if scope["type"] != "http" or not path.startswith("/api/") or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = credential.strip()
        if not hmac.compare_digest(given, self._token):
            return await send_error(
                send, 401, "Unauthorized", "a valid bearer token is required", [(b"www-authenticate", b"Bearer")]
            )
        return await self.app(scope, receive, send)
