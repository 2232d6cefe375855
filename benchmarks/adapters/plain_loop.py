"""The hand-written tool loop the floors share; only the HTTP client under it differs.

History is a Python list and nothing is persisted: the least work any library can do for a turn.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from benchmarks.common import INSTRUCTIONS, MODEL, TOOL_SCHEMA, weather

MAX_STEPS = 10
TOOLS = {"get_weather": weather}


class Transport(Protocol):
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The parsed JSON of one non-streamed completion."""
        ...

    def data_lines(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """The payload of each ``data:`` line of one streamed completion, up to ``[DONE]``."""
        ...


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
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": INSTRUCTIONS}]

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        self.messages.extend(messages)

    async def _complete(self) -> dict[str, Any]:
        body = {"model": MODEL, "messages": self.messages, "tools": [TOOL_SCHEMA]}
        message: dict[str, Any] = (await self._transport.complete(body))["choices"][0]["message"]
        return message

    async def _complete_stream(self) -> dict[str, Any]:
        body = {"model": MODEL, "messages": self.messages, "tools": [TOOL_SCHEMA], "stream": True}
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        async for data in self._transport.data_lines(body):
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
