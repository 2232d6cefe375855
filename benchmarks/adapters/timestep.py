"""Timestep: an Agent with the tool, run by ``run_agent``, each conversation in a FileSession."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, aweather, history
from timestep import Agent, FileSession, ModelClient, run_agent


async def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    return await aweather(city)


def _agent() -> Agent:
    return Agent(name="Bench", model=MODEL, instructions=INSTRUCTIONS, tools=[get_weather])


class TimestepConversation:
    def __init__(self, agent: Agent, client: ModelClient, session: FileSession) -> None:
        self._agent = agent
        self._client = client
        self.session = session

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        await self.session.add_items(list(messages))

    async def turn(self, user_text: str, *, stream: bool) -> str:
        messages = [{"role": "user", "content": user_text}]
        if not stream:
            result = await run_agent(self._agent, messages, self.session, client=self._client)
            if result["status"] != "completed":
                raise RuntimeError(f"run ended {result['status']}: {result.get('error')}")
            return str(result["final_output"])
        deltas: list[str] = []
        end: dict[str, Any] = {}
        async for event in run_agent(self._agent, messages, self.session, stream=True, client=self._client):
            if event["type"] == "content_delta":
                deltas.append(event["delta"])
            elif event["type"] == "run_end" and event.get("depth", 0) == 0:
                end = event
        if end.get("status") != "completed":
            raise RuntimeError(f"run ended {end.get('status')}")
        if not deltas:
            raise RuntimeError("streaming run produced no text deltas")
        return str(end["final_output"])


class Timestep:
    supports_streaming = True

    def __init__(self, base_url: str, workdir: Path) -> None:
        self._agent = _agent()
        self._client = ModelClient(base_url=base_url, api_key=API_KEY)
        self._dir = workdir / "conversations"

    async def conversation(self, conversation_id: str) -> TimestepConversation:
        session = FileSession(
            agent_name=self._agent.name,
            conversation_id=conversation_id,
            agent_instructions=self._agent.instructions,
            storage_dir=self._dir,
        )
        return TimestepConversation(self._agent, self._client, session)

    async def aclose(self) -> None:
        await self._client.aclose()


async def create(base_url: str, workdir: Path) -> Timestep:
    return Timestep(base_url, workdir)


async def append_curve(workdir: Path, levels: tuple[int, ...], samples: int) -> dict[int, float]:
    """Median µs of one ``add_items`` of one message, with ``n`` messages already stored, per level."""
    session = FileSession(
        agent_name="Bench", conversation_id="append", agent_instructions=INSTRUCTIONS, storage_dir=workdir
    )
    stored = 0
    out: dict[int, float] = {}
    chunk = history(1000)
    for level in levels:
        while stored < level:
            batch = chunk[: min(len(chunk), level - stored)]
            await session.add_items(batch)
            stored += len(batch)
        await session.get_items()  # a session in use has read its conversation
        times = []
        for i in range(samples):
            item: dict[str, Any] = {"role": "user", "content": f"Appended message {i} at level {level}."}
            start = time.perf_counter()
            await session.add_items([item])
            times.append(time.perf_counter() - start)
            stored += 1
        out[level] = statistics.median(times) * 1e6
    return out
