"""A scripted model for chatting with any agent offline: ``timestep chat --offline`` and the test server's default.

It is no model at all, and says so on its first reply; what it offers is a way to see an agent's
tools, guardrails and approvals work without a key or a network. The rules:

* a message that names one of the offered tools (``get_weather``, or ``get weather``) calls it,
  with arguments built from the tool's schema and the message (as :func:`tool_then_answer` does);
* after a tool result, it reports the result in a sentence;
* anything else is repeated back, in markdown.
"""

from __future__ import annotations

from typing import Any

from .server import Reply, ToolCall, _arguments_for

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
    lowered = text.lower()
    for function in functions:
        name = str(function.get("name", ""))
        if name and (name.lower() in lowered or name.lower().replace("_", " ") in lowered):
            return Reply.tool_calls(ToolCall(name, _arguments_for(function.get("parameters"), text)))
    first = not any(m.get("role") == "assistant" for m in messages)
    example = f"`{functions[0].get('name')}`" if functions else "a tool, once the agent has one"
    lead = INTRODUCTION.format(example=example) if first else ""
    return Reply.text(f"{lead}You said: {text}")
