"""The floor: a hand-written Chat Completions loop on httpx2 + json, history kept in a list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, TOOL_SCHEMA, weather

MAX_STEPS = 10
TOOLS = {"get_weather": weather}


def _merge_tool_deltas(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for d in deltas:
        call = calls.setdefault(
            d.get("index", 0), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


class PlainConversation:
    def __init__(self, client: httpx2.AsyncClient) -> None:
        self._client = client
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": INSTRUCTIONS}]

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        self.messages.extend(messages)

    async def _complete(self) -> dict[str, Any]:
        body = {"model": MODEL, "messages": self.messages, "tools": [TOOL_SCHEMA]}
        response = await self._client.post("/chat/completions", json=body)
        response.raise_for_status()
        message: dict[str, Any] = response.json()["choices"][0]["message"]
        return message

    async def _complete_stream(self) -> dict[str, Any]:
        body = {"model": MODEL, "messages": self.messages, "tools": [TOOL_SCHEMA], "stream": True}
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        async with self._client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choices = json.loads(data).get("choices") or []
                if not choices:
                    continue
                delta = choices[0].get("delta") or {}
                if delta.get("content"):
                    text.append(delta["content"])
                if delta.get("tool_calls"):
                    _merge_tool_deltas(calls, delta["tool_calls"])
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return message

    async def turn(self, user_text: str, *, stream: bool) -> str:
        self.messages.append({"role": "user", "content": user_text})
        for _ in range(MAX_STEPS):
            message = await (self._complete_stream() if stream else self._complete())
            self.messages.append(message)
            tool_calls = message.get("tool_calls")
            if not tool_calls:
                return str(message.get("content") or "")
            for call in tool_calls:
                args = json.loads(call["function"]["arguments"] or "{}")
                result = TOOLS[call["function"]["name"]](**args)
                self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        raise RuntimeError("too many model steps")


class PlainHttp:
    supports_streaming = True

    def __init__(self, base_url: str) -> None:
        self._client = httpx2.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120.0,
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
        )

    async def conversation(self, conversation_id: str) -> PlainConversation:
        return PlainConversation(self._client)

    async def aclose(self) -> None:
        await self._client.aclose()


async def create(base_url: str, workdir: Path) -> PlainHttp:
    return PlainHttp(base_url)
