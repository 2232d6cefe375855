"""Scripted model for the fake Chat Completions server.

``python -m timestep.testing --responder benchmarks.responder:respond`` answers every request with this:
after a tool result it answers in text that quotes the result, otherwise it calls ``get_weather`` for the
city named in the last user message.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import city_from_question
from timestep.testing import Reply, ToolCall


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def respond(body: dict[str, Any]) -> Reply:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return Reply.text(f"The weather: {_text(last.get('content'))}")
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return Reply.tool_calls(ToolCall("get_weather", {"city": city_from_question(_text(user.get("content")))}))
