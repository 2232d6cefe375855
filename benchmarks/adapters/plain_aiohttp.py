"""The lower floor: the hand-written loop (plain_loop.py) on one ``aiohttp.ClientSession`` + json."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.adapters.plain_loop import PlainConversation
from benchmarks.common import API_KEY


class AiohttpTransport:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._session = session

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(self._url, data=json.dumps(body)) as response:
            response.raise_for_status()
            data: dict[str, Any] = json.loads(await response.read())
            return data

    async def data_lines(self, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self._session.post(self._url, data=json.dumps(body)) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.decode()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                yield data


class PlainAiohttp:
    supports_streaming = True

    def __init__(self, base_url: str) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120.0),
            connector=aiohttp.TCPConnector(limit=1000),
        )
        self._transport = AiohttpTransport(base_url, self._session)

    async def conversation(self, conversation_id: str) -> PlainConversation:
        return PlainConversation(self._transport)

    async def aclose(self) -> None:
        await self._session.close()


async def create(base_url: str, workdir: Path) -> PlainAiohttp:
    return PlainAiohttp(base_url)
