"""Helpers for the server's tests: the app served by uvicorn on 127.0.0.1, and an SSE reader.

The app runs in uvicorn's own thread and event loop, as in production, and the tests talk to it
over real HTTP from theirs; so a test that drops a connection really drops a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from pydantic import BaseModel

from timestep import (
    Agent,
    AnswerGuardrail,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    MessageGuardrail,
)
from timestep.testing import Reply


class LiveServer:
    """``with LiveServer(app) as url:`` serves ``app`` on a free port of 127.0.0.1 until the block ends."""

    def __init__(self, app: Any, port: int = 0) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The (id, event) pairs of a ``text/event-stream`` response, comments (pings) skipped."""
    event_id, data = "", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            data = []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "data":
            data.append(value)


async def until_end(response: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Events up to and including the top-level ``run_end``."""
    seen = []
    async for event_id, event in sse(response):
        seen.append((event_id, event))
        if event["type"] == "run_end" and event["depth"] == 0:
            break
    return seen


class Gate:
    """A model that waits, mid-request, until the test lets it answer: a run held at a known point."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def __call__(self, body: dict[str, Any]) -> Reply:
        self.arrived.set()
        await asyncio.to_thread(self.release.wait, 30)
        return self.reply

    async def reached(self) -> None:
        assert await asyncio.to_thread(self.arrived.wait, 30), "the run never reached the model"


def bank_agent(ledger: Path) -> Agent:
    """One tool that moves money (appending to ``ledger``): never to Mallory, asked of a person first over 100."""

    def send_money(to: str, amount: int) -> str:
        """Send money to someone."""
        with open(ledger, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"to": to, "amount": amount}) + "\n")
        return f"sent {amount} to {to}"

    def ask_first(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        if tool_name == "send_money" and args.get("to") == "Mallory":
            return GuardrailResult.block("Mallory is on the sanctions list")
        if tool_name == "send_money" and int(args.get("amount", 0)) > 100:
            raise GuardrailInterrupt(f"Send {args.get('amount')} to {args.get('to')}?", tool_name, args)
        return GuardrailResult.proceed()

    def lookup(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    helper = Agent(name="Helper", model="test-model", instructions="You look things up.", tools=[lookup])
    return Agent(
        name="Bank",
        model="test-model",
        instructions="You move money when asked.",
        tools=[send_money],
        handoffs=[helper],
        guardrails=[InputGuardrail(ask_first)],
    )


CARD = re.compile(r"\b\d{4}(?: \d{4}){3}\b")


def screen_message(text: str) -> GuardrailResult | None:
    """Passwords never reach the model, card numbers are redacted, wires wait for a person."""
    if "password" in text.lower():
        return GuardrailResult.block("never send passwords here")
    if "wire" in text.lower():
        raise GuardrailInterrupt("Let this message through to the agent?")
    redacted = CARD.sub("[card]", text)
    return GuardrailResult.replace(redacted) if redacted != text else None


def screen_answer(text: str) -> GuardrailResult | None:
    """An answer naming a code is refused; one that hedges ("maybe") is asked for again."""
    if "code" in text.lower():
        return GuardrailResult.block("it contains a code")
    if "maybe" in text.lower():
        return GuardrailResult.retry("be sure")
    return None


def guarded_agent() -> Agent:
    """An agent whose conversation is guarded both ways: what comes in, and what it answers."""
    return Agent(
        name="Guarded",
        model="test-model",
        instructions="You help with accounts.",
        guardrails=[MessageGuardrail(screen_message), AnswerGuardrail(screen_answer)],
    )


class Forecast(BaseModel):
    city: str
    temperature: int
    summary: str


def typed_agent() -> Agent:
    """An agent whose final answer is a ``Forecast``, asked for with the final-answer tool."""
    return Agent(
        name="Weather",
        model="test-model",
        instructions="You forecast the weather.",
        output_type=Forecast,
        output_mode="tool",
    )


def ledger_lines(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines()]
