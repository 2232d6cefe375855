"""Helpers for the server's tests: the app served by uvicorn on 127.0.0.1, and an SSE reader.

The app runs in uvicorn's own thread and event loop, as in production, and the tests talk to it
over real HTTP from theirs; so a test that drops a connection really drops a socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from timestep import Agent, GuardrailInterrupt, GuardrailResult, InputGuardrail
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


def ledger_lines(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines()]
