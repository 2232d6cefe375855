"""A floor: the hand-written loop (plain_loop.py) on one ``httpx2.AsyncClient`` + json."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2

from benchmarks.adapters.plain_loop import PlainConversation
from benchmarks.common import API_KEY


def _client(base_url: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120.0,
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
    )


class HttpxTransport:
    def __init__(self, client: httpx2.AsyncClient) -> None:
        self._client = client

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post("/chat/completions", json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def data_lines(self, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self._client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                yield data


class PlainHttp:
    """``shards`` clients, conversations spread over them round robin: one pool each, so each pool
    holds 1/shards of the connections (httpcore2's pool scans all of its connections per request)."""

    supports_streaming = True

    def __init__(self, base_url: str, shards: int = 1) -> None:
        self._clients = [_client(base_url) for _ in range(shards)]
        self._next = itertools.cycle(self._clients)

    async def conversation(self, conversation_id: str) -> PlainConversation:
        return PlainConversation(HttpxTransport(next(self._next)))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


async def create(base_url: str, workdir: Path) -> PlainHttp:
    return PlainHttp(base_url)


async def create_sharded(base_url: str, workdir: Path) -> PlainHttp:
    return PlainHttp(base_url, shards=16)
