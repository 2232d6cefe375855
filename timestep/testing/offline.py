"""A scripted model for chatting with any agent offline: ``timestep chat --offline`` and the test server's default.

It is no model at all, and says so on its first reply; what it offers is a way to see an agent's
tools, guardrails and approvals work without a key or a network. The rules:

* a message that names one of the offered tools (``get_weather``, or ``get weather``), or a word of
  its name other than a verb (``weather``), calls it; so does a follow-up that starts with "and"
  ("And in Oslo?") when the previous turn called a tool;
* the arguments come from the tool's schema (as :func:`tool_then_answer` builds them), with the
  message's subject as the text: the place after "in", "for" or "at" ("Weather in Lima?" gives
  ``"Lima"``), else the message without the tool's name;
* after a tool result, it reports the result in a sentence;
* anything else is repeated back, in markdown.
"""

from __future__ import annotations

import re
from typing import Any

from .server import Reply, ToolCall, _arguments_for

# Words of a tool's name that say what it does rather than what it is about: "get" in get_weather.
_VERBS = frozenset(
    [
        "get",
        "set",
        "list",
        "fetch",
        "find",
        "search",
        "lookup",
        "look",
        "read",
        "create",
        "add",
        "delete",
        "remove",
        "update",
        "run",
        "do",
        "make",
        "send",
        "check",
    ]
)
_PLACE = re.compile(r"\b(?:in|for|at|of)\s+((?:[A-Z][\w'-]*)(?:\s+[A-Z][\w'-]*)*)")

INTRODUCTION = (
    "*This is the built-in offline model: it repeats what you say, and calls a tool when you name it "
    "(for example {example}).*\n\n"
)


def offline_model(body: dict[str, Any]) -> Reply:
    """Answer one Chat Completions request body by the rules in this module's docstring."""
    raw = body.get("messages")
    messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        result = str(last.get("content") or "")
        if result.startswith(("A person declined", "Blocked by guardrail")):
            return Reply.text(f"The tool did not run: {result}")
        return Reply.text(f"The tool answered: {result}")
    text = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    functions = [
        t.get("function", t)
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function", t), dict)
    ]
    function = _named(functions, text) or _followed_up(functions, messages, text)
    if function is not None:
        name = str(function.get("name"))
        return Reply.tool_calls(ToolCall(name, _arguments_for(function.get("parameters"), _subject(text, name))))
    first = not any(m.get("role") == "assistant" for m in messages)
    example = f"`{functions[0].get('name')}`" if functions else "a tool, once the agent has one"
    lead = INTRODUCTION.format(example=example) if first else ""
    return Reply.text(f"{lead}You said: {text}")


def _named(functions: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    lowered = text.lower()
    words = set(re.findall(r"[a-z0-9]+", lowered))
    for exact in (True, False):
        for function in functions:
            name = str(function.get("name", "")).lower()
            if not name:
                continue
            if exact and (name in lowered or name.replace("_", " ") in lowered):
                return function
            if not exact and words & (set(re.split(r"[_\W]+", name)) - _VERBS - {""}):
                return function
    return None


def _followed_up(functions: list[dict[str, Any]], messages: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    """ "And in Oslo?" after a turn that called a tool: the same tool again."""
    if not re.match(r"\s*and\b", text, re.IGNORECASE):
        return None
    called = [
        str((c.get("function") or {}).get("name"))
        for m in messages
        if m.get("role") == "assistant"
        for c in m.get("tool_calls") or ()
        if isinstance(c, dict)
    ]
    return next((f for f in functions if called and f.get("name") == called[-1]), None)


def _subject(text: str, tool_name: str) -> str:
    places = _PLACE.findall(text)
    if places:
        return str(places[-1])
    for name in (tool_name, tool_name.replace("_", " ")):
        text = re.sub(re.escape(name), " ", text, flags=re.IGNORECASE)
    return " ".join(text.split()).strip(" ?!.,") or text
