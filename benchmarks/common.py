"""What every adapter shares: the tool, the question, the answer check, the workload sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

MODEL = "test-model"
INSTRUCTIONS = "You are a weather assistant. Use the get_weather tool to answer questions about the weather."
API_KEY = "sk-bench"

TOOL_DESCRIPTION = "Get the current weather for a city."
TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

_QUESTION_RE = re.compile(r"weather in ([^?]+)\?")


class _Counter:
    """How often the tool really ran in this process; the harness checks it after every turn."""

    calls = 0


TOOL_CALLS = _Counter()


def weather(city: str) -> str:
    """The one tool: every adapter wraps this function in its own library's tool type."""
    TOOL_CALLS.calls += 1
    return f"Sunny in {city}"


async def aweather(city: str) -> str:
    """Async flavour of :func:`weather`, for libraries that want a coroutine."""
    return weather(city)


def question(city: str) -> str:
    return f"What's the weather in {city}?"


def city_from_question(text: str) -> str:
    match = _QUESTION_RE.search(text)
    if match is None:
        raise ValueError(f"no city in user message: {text!r}")
    return match.group(1)


class WrongAnswer(AssertionError):
    """An adapter produced an answer that does not carry the tool's result."""


def check_answer(answer: object, city: str) -> None:
    expected = f"Sunny in {city}"
    if not isinstance(answer, str) or expected not in answer:
        raise WrongAnswer(f"expected an answer containing {expected!r}, got {answer!r}")


def history(n: int) -> list[dict[str, str]]:
    """`n` messages of earlier, tool-free conversation, alternating user and assistant."""
    out: list[dict[str, str]] = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"role": "user", "content": f"Earlier question number {i}: please note the topic {i}."})
        else:
            out.append({"role": "assistant", "content": f"Noted topic {i - 1}; happy to help with that later."})
    return out


class Conversation(Protocol):
    async def turn(self, user_text: str, *, stream: bool) -> str:
        """One user turn: model -> tool -> model. Returns the final assistant text."""
        ...

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        """Store earlier messages (untimed) before the timed turns of W3."""
        ...


class Adapter(Protocol):
    supports_streaming: bool

    async def conversation(self, conversation_id: str) -> Conversation: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Sizes:
    w1_conversations: int = 50
    w1_turns: int = 5
    w2_conversations: int = 200
    w2_large: int = 1000
    w2_latency: float = 0.1
    w3_history: int = 2000
    w3_large: int = 10_000
    w3_turns: int = 5
    append_levels: tuple[int, ...] = (10, 1_000, 10_000, 100_000)
    append_samples: int = 21


FULL = Sizes()
QUICK = Sizes(
    w1_conversations=3,
    w1_turns=2,
    w2_conversations=5,
    w2_large=20,
    w3_history=50,
    w3_large=200,
    w3_turns=2,
    append_levels=(10, 1_000),
    append_samples=5,
)
