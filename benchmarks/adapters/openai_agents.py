"""openai-agents, forced onto Chat Completions, tracing off, history in a SQLiteSession file."""

from __future__ import annotations

from pathlib import Path

import agents
from agents import Agent, OpenAIChatCompletionsModel, Runner, SQLiteSession, function_tool
from openai import AsyncOpenAI

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, TOOL_DESCRIPTION, weather


@function_tool(name_override="get_weather", description_override=TOOL_DESCRIPTION)
def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    return weather(city)


class AgentsConversation:
    def __init__(self, agent: Agent[None], session: SQLiteSession) -> None:
        self._agent = agent
        self.session = session

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        await self.session.add_items(messages)  # type: ignore[arg-type]

    async def turn(self, user_text: str, *, stream: bool) -> str:
        if not stream:
            result = await Runner.run(self._agent, user_text, session=self.session)
            return str(result.final_output)
        streamed = Runner.run_streamed(self._agent, user_text, session=self.session)
        async for _event in streamed.stream_events():
            pass
        return str(streamed.final_output)


class OpenAIAgents:
    supports_streaming = True

    def __init__(self, base_url: str, workdir: Path) -> None:
        agents.set_tracing_disabled(True)
        self._client = AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120.0)
        model = OpenAIChatCompletionsModel(model=MODEL, openai_client=self._client)
        self._agent: Agent[None] = Agent(name="Bench", instructions=INSTRUCTIONS, model=model, tools=[get_weather])
        self._db = workdir / "agents.sqlite"
        self._sessions: list[SQLiteSession] = []

    async def conversation(self, conversation_id: str) -> AgentsConversation:
        session = SQLiteSession(conversation_id, self._db)
        self._sessions.append(session)
        return AgentsConversation(self._agent, session)

    async def aclose(self) -> None:
        for session in self._sessions:
            session.close()
        await self._client.close()


async def create(base_url: str, workdir: Path) -> OpenAIAgents:
    return OpenAIAgents(base_url, workdir)
