"""A hand-written Chat Completions loop on `openai.AsyncOpenAI`, history kept in a list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, TOOL_SCHEMA, weather

MAX_STEPS = 10
TOOLS = {"get_weather": weather}
TOOL_PARAMS: Any = [TOOL_SCHEMA]


class OpenAIConversation:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client
        self.messages: list[Any] = [{"role": "system", "content": INSTRUCTIONS}]

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        self.messages.extend(messages)

    async def _complete(self) -> dict[str, Any]:
        completion = await self._client.chat.completions.create(model=MODEL, messages=self.messages, tools=TOOL_PARAMS)
        msg = completion.choices[0].message
        message: dict[str, Any] = {"role": "assistant", "content": msg.content}
        if msg.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},  # type: ignore[union-attr]
                }
                for c in msg.tool_calls
            ]
        return message

    async def _complete_stream(self) -> dict[str, Any]:
        stream = await self._client.chat.completions.create(
            model=MODEL, messages=self.messages, tools=TOOL_PARAMS, stream=True
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                text.append(delta.content)
            for d in delta.tool_calls or []:
                call = calls.setdefault(
                    d.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if d.id:
                    call["id"] = d.id
                if d.function and d.function.name:
                    call["function"]["name"] += d.function.name
                if d.function and d.function.arguments:
                    call["function"]["arguments"] += d.function.arguments
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


class OpenAIClient:
    supports_streaming = True

    def __init__(self, base_url: str) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120.0)

    async def conversation(self, conversation_id: str) -> OpenAIConversation:
        return OpenAIConversation(self._client)

    async def aclose(self) -> None:
        await self._client.close()


async def create(base_url: str, workdir: Path) -> OpenAIClient:
    return OpenAIClient(base_url)
