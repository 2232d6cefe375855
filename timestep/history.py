"""History policies: trim what is *sent* to the model, never what is stored.

A long conversation eventually costs more per call than it is worth, or no longer fits the model's
context. ``RunConfig(history=policy)`` lets a run send a window of it instead; the session keeps
every item, so a later run (or a person reading the conversation) still has all of it, and a policy
can be changed at any time without rewriting anything.

Each policy is a plain function of the messages about to be sent, so any callable will do; the two
here cover the common needs and keep the rules a model endpoint insists on:

* the system message (the first message, when it is one) is always kept;
* the window is the *latest* messages, in order;
* an assistant message that called tools is never separated from its tool results: the window
  never starts on a ``tool`` message. When the cut falls inside such a group, the orphaned results
  are dropped rather than the window widened, so a limit is a limit;
* the exception to that is the one case where it would leave nothing to send: then the last
  message is kept with whatever it needs (its tool call), because an empty request is never useful.

Counting tokens exactly needs the model's tokenizer, which Timestep does not ship; ``token_budget``
takes any ``count(message) -> int`` and defaults to a characters-over-four estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError

Message = dict[str, Any]
HistoryPolicy = Callable[[list[Message]], list[Message]]

_PER_MESSAGE_TOKENS = 4  # role and framing, roughly what chat formats add around each message


def approx_chars_over_4(message: Message) -> int:
    """A tokenizer-free estimate: about four characters per token, plus a little per message."""
    chars = _text_length(message.get("content"))
    for call in message.get("tool_calls") or ():
        fn = (call.get("function") if isinstance(call, dict) else None) or {}
        chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return _PER_MESSAGE_TOKENS + (chars + 3) // 4


def _text_length(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(_text_length(part.get("text")) if isinstance(part, dict) else 0 for part in content)
    return len(str(content))


@dataclass(frozen=True)
class _LastMessages:
    n: int

    def __call__(self, messages: list[Message]) -> list[Message]:
        head, body = _split(messages)
        return head + body[_window_start(body, max(0, len(body) - self.n)) :]


@dataclass(frozen=True)
class _TokenBudget:
    max_tokens: int
    count: Callable[[Message], int] = field(repr=False)

    def __call__(self, messages: list[Message]) -> list[Message]:
        head, body = _split(messages)
        left = self.max_tokens - sum(self.count(m) for m in head)
        start = len(body)
        while start > 0:
            cost = self.count(body[start - 1])
            if cost > left:
                break
            left -= cost
            start -= 1
        return head + body[_window_start(body, start) :]


def last_messages(n: int) -> HistoryPolicy:
    """Send the system message and the latest ``n`` other messages (see the module notes on tool calls)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"last_messages(n) needs a whole number of messages of at least 1, got {n!r}")
    return _LastMessages(n)


def token_budget(max_tokens: int, count: Callable[[Message], int] = approx_chars_over_4) -> HistoryPolicy:
    """Send the system message and as many of the latest messages as fit in ``max_tokens``.

    ``count(message)`` is the size of one message in tokens; pass the model's own tokenizer for an
    exact fit. The last message is always sent, even if it alone is over the budget.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigurationError(f"token_budget(max_tokens) needs a whole number of at least 1, got {max_tokens!r}")
    if not callable(count):
        raise ConfigurationError("token_budget(count=...) must be a function of one message returning an int")
    return _TokenBudget(max_tokens, count)


def _split(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    if messages and messages[0].get("role") == "system":
        return messages[:1], messages[1:]
    return [], list(messages)


def _window_start(body: list[Message], start: int) -> int:
    """Move a window's start off orphaned tool results; if that empties it, back to the last message's group."""
    while start < len(body) and body[start].get("role") == "tool":
        start += 1
    if start < len(body) or not body:
        return start
    start = len(body) - 1
    while start > 0 and body[start].get("role") == "tool":
        start -= 1
    return start
