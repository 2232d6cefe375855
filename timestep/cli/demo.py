"""``timestep demo``: a hotel concierge that shows a tool, a handoff, an approval and a guardrail.

The agents are ordinary module-level Agents, so they also work outside the demo::

    timestep chat timestep.cli.demo:concierge                      # with OPENAI_API_KEY

and :func:`scripted_model` is a rule-based stand-in for a model that knows these agents, so the
same chat runs with no key and no network::

    python -m timestep.testing --port 8123 --responder timestep.cli.demo:scripted_model &
    timestep chat timestep.cli.demo:concierge --base-url http://127.0.0.1:8123/v1

Offline, the demo serves :func:`scripted_model` from :class:`timestep.testing.TestServer` and talks
to it over HTTP exactly as it would to a real endpoint: what runs is the real run loop, streaming,
session writes and all; only the model's words are scripted. Importing this module loads neither
rich nor click, so it can serve as that responder anywhere.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..agent import Agent
from ..guardrails import GuardrailInterrupt, GuardrailResult, InputGuardrail, OutputGuardrail
from ..testing import Reply, ToolCall

if TYPE_CHECKING:
    from ..approvals import Interruption
    from .chat import Approver
    from .render import Output, Renderer
    from .terminal import Terminal

DEFAULT_MODEL = "gpt-4o-mini"

CURRENT = {
    "lisbon": "Lisbon: sunny, 24°C, light breeze from the west",
    "oslo": "Oslo: overcast, 9°C",
    "paris": "Paris: light rain, 14°C",
    "tokyo": "Tokyo: clear skies, 19°C",
    "new york": "New York: windy, 12°C",
    "mcmurdo station": "McMurdo Station: blowing snow, -28°C, wind 60 km/h",
}
FORECAST = {
    "lisbon": "Lisbon: sunny tomorrow and Sunday, 25°C; no rain expected.",
    "oslo": "Oslo: rain from mid-morning tomorrow, 8°C; drier on Sunday.",
    "paris": "Paris: showers tomorrow, clearing on Sunday; 15°C.",
    "tokyo": "Tokyo: clear tomorrow, a chance of rain on Sunday; 20°C.",
    "new york": "New York: cold and dry tomorrow, 10°C.",
    "mcmurdo station": "McMurdo Station: storm warning for the next two days.",
}
# A city whose data costs money: the approval guardrail asks before anyone looks it up.
PAID_FEEDS = {"mcmurdo station": "$0.50"}
SECRET = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}|api[_-]?key\s*[=:]", re.IGNORECASE)


def _known(city: str) -> str:
    return ", ".join(c.title() for c in CURRENT if c not in PAID_FEEDS)


async def get_weather(city: str) -> str:
    """The weather right now in a city.

    Args:
        city: The city, e.g. "Lisbon".
    """
    return CURRENT.get(city.strip().lower(), f"No data for {city} (this demo knows {_known(city)}).")


async def get_forecast(city: str) -> str:
    """The forecast for the next two days in a city.

    Args:
        city: The city, e.g. "Oslo".
    """
    return FORECAST.get(city.strip().lower(), f"No forecast for {city} (this demo knows {_known(city)}).")


async def weather_service_status() -> str:
    """Check that the weather service the hotel relies on is up."""
    # A status page that leaks its configuration: the output guardrail must keep this from the model.
    return "weather-feed v2.3: OK, 42 ms. config: endpoint=https://feed.example/v2 api_key=sk-demo-4f9a2c71e8b3d605"


def paid_feed_approval(tool_name: str, args: dict[str, Any]) -> None:
    """Ask a person before a lookup that costs money."""
    city = str(args.get("city", ""))
    fee = PAID_FEEDS.get(city.strip().lower())
    if fee is not None:
        raise GuardrailInterrupt(f"{city} comes from a paid research-station feed ({fee} a lookup). Allow it?")


def no_secrets(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult | None:
    """Never let a credential that a tool happened to return reach the model (or the guest)."""
    if SECRET.search(str(result)):
        return GuardrailResult.block("the result contains what looks like an API key")
    return None


forecaster = Agent(
    name="forecaster",
    model=DEFAULT_MODEL,
    instructions=(
        "You forecast the weather for the coming days. Call get_forecast for the city asked about, "
        "then answer in one or two sentences."
    ),
    tools=[get_forecast],
)

concierge = Agent(
    name="concierge",
    model=DEFAULT_MODEL,
    instructions=(
        "You are the concierge of a small hotel. For the weather right now, call get_weather. Hand any "
        "question about the coming days (forecasts, rain tomorrow, the weekend) to the forecaster. To "
        "check the weather service, call weather_service_status. If a tool result was blocked or "
        "declined, say so plainly. Answer in one or two sentences."
    ),
    tools=[get_weather, weather_service_status],
    handoffs=[forecaster],
    # The concierge's guardrails also govern the forecaster's tools (guardrails flow down handoffs).
    guardrails=[InputGuardrail(paid_feed_approval), OutputGuardrail(no_secrets)],
)


# -- the scripted model -----------------------------------------------------------------------------

FORECAST_WORDS = ("tomorrow", "weekend", "forecast", "will it", "next week", "coming days", "sunday", "saturday")
STATUS_WORDS = ("status", "service", "healthy", "working", "up?")
HELP_REPLY = (
    "I can tell you the weather right now in a city, ask our forecaster about the coming days, "
    "or check the weather service."
)


def scripted_model(body: dict[str, Any]) -> Reply:
    """A rule-based model for the demo agents: picks their tools from keywords, words answers from results.

    A ``timestep.testing`` responder: give it the request body of a Chat Completions call.
    """
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    tools = {t.get("function", {}).get("name") for t in body.get("tools") or () if isinstance(t, dict)}
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        name, args = _call_for(messages, str(last.get("tool_call_id")))
        return Reply.text(_after_tool(name, args, str(last.get("content") or "")))
    text = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    lowered = text.lower()
    city = _city(text)
    if "get_forecast" in tools:
        return Reply.tool_calls(ToolCall("get_forecast", {"city": city or text}))
    if "weather_service_status" in tools and any(w in lowered for w in STATUS_WORDS):
        return Reply.tool_calls(ToolCall("weather_service_status", {}))
    if "transfer_to_forecaster" in tools and any(w in lowered for w in FORECAST_WORDS):
        return Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": text}))
    if "get_weather" in tools and city:
        return Reply.tool_calls(ToolCall("get_weather", {"city": city}))
    return Reply.text(HELP_REPLY)


def _city(text: str) -> str | None:
    lowered = text.lower()
    for known in sorted(CURRENT, key=len, reverse=True):
        if known in lowered:
            return known.title().replace("Mcmurdo", "McMurdo")
    match = re.search(r"\b(?:in|at|for)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)", text)
    return match.group(1) if match else None


def _call_for(messages: list[dict[str, Any]], call_id: str) -> tuple[str, dict[str, Any]]:
    import json

    for message in reversed(messages):
        for call in message.get("tool_calls") or ():
            if call.get("id") == call_id:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {}
                return str(fn.get("name", "")), args if isinstance(args, dict) else {}
    return "", {}


def _after_tool(name: str, args: dict[str, Any], result: str) -> str:
    if result.startswith("Blocked by guardrail"):
        return "I ran the check, but a guardrail withheld its result because it contained a secret, so I can't show it."
    if result.startswith("A person declined"):
        return f"Understood: no lookup for {args.get('city', 'that')}, and nothing was charged."
    if result.startswith("Error"):
        return f"Sorry, that did not work: {result}"
    if name == "get_weather":
        return f"Right now in {result}."
    if name == "get_forecast":
        return result + (" Take an umbrella." if "rain" in result or "showers" in result else "")
    if name.startswith("transfer_to_"):
        return f"Our forecaster says: {result}"
    return f"Done: {result}"


# -- the tour ---------------------------------------------------------------------------------------

STEPS = (
    ("A question answered with a tool", "What's the weather in Lisbon right now?"),
    ("A handoff to another agent", "Will it rain in Oslo tomorrow?"),
    ("A call that needs approval", "And what is it like at McMurdo Station right now?"),
    ("An output guardrail", "Is the weather service working?"),
)


def run_demo(
    *,
    offline: bool,
    approve: bool | None,
    store: str | None,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """``timestep demo``: the four steps against the scripted model, or a real one when configured."""
    import asyncio
    import contextlib
    import tempfile

    import click

    from ..model import ModelClient
    from ..sessions import open_store
    from ..testing import TestServer
    from .chat import converse
    from .loading import make_client, with_model
    from .render import Output, Renderer
    from .setup import new_conversation_id
    from .terminal import Terminal

    output = Output()
    online = not offline and bool(base_url or api_key)
    agent = with_model(concierge, model) if online and model else concierge
    with contextlib.ExitStack() as stack:
        if online:
            client = make_client(base_url, api_key)
            output.note(f"Using the model {agent.model} at {client.base_url}.")
        else:
            server = stack.enter_context(TestServer(responder=scripted_model, latency=0.15 if output.fancy else 0.0))
            client = ModelClient(base_url=server.base_url, api_key="offline-demo")
            output.note(
                "Using the built-in scripted model (offline: no OPENAI_API_KEY or OPENAI_BASE_URL). "
                "Set one, or pass --base-url, to use a real model."
            )
        folder = store or stack.enter_context(tempfile.TemporaryDirectory(prefix="timestep-demo-"))
        opened = open_store(folder)
        conversation_id = new_conversation_id()
        session = opened.session(agent.name, conversation_id, agent.instructions)
        renderer = Renderer(output)
        runner = stack.enter_context(asyncio.Runner())
        terminal = Terminal(output)
        ask = _demo_approver(output, renderer, terminal, approve)
        output.note(
            f"A hotel {agent.name} with tools, a {forecaster.name} it hands forecasts to, and two guardrails. "
            f"Conversation {conversation_id}."
        )
        try:
            for n, (title, text) in enumerate(STEPS, start=1):
                output.line()
                output.rule(f"{n}/{len(STEPS)}  {title}")
                output.line(f"you> {text}", "bold green")
                message = [{"role": "user", "content": text}]
                result = runner.run(converse(agent, session, message, client=client, renderer=renderer, approve=ask))
                if result.status == "error":
                    raise click.ClickException(result.error or "the demo run failed")
            items = runner.run(session.get_items())
        finally:
            runner.run(client.aclose())
            runner.run(opened.aclose())
        output.line()
        stored = sum(1 for i in items if "role" in i)
        if store:
            output.note(f"Done: {stored} messages stored in {opened.describe()}. See them with:")
            output.note(f"  timestep sessions show {conversation_id} --store {store}")
        else:
            output.note(f"Done: {stored} messages stored in a temporary folder, now removed (--store keeps them).")
        output.note("Talk to the concierge yourself: timestep chat timestep.cli.demo:concierge (needs a model).")


def _demo_approver(output: Output, renderer: Renderer, terminal: Terminal, approve: bool | None) -> Approver:
    """Ask on a terminal unless --yes/--no answered already; with no terminal, approve and say so."""
    from .chat import settle, terminal_approver
    from .render import show_interruption

    if approve is None and terminal.interactive:
        return terminal_approver(output, renderer, terminal)
    why = "--yes" if approve else "--no" if approve is False else "no terminal to ask and no --yes/--no: approving"
    answer = approve is not False

    async def decide(interruption: Interruption) -> bool:
        await settle(renderer)
        show_interruption(output, interruption)
        output.line(f"    approve? [y/n] {'y' if answer else 'n'}  ({why})", "bold")
        return answer

    return decide
