"""pydantic-ai with its OpenAI Chat Completions model on a custom base_url.

It persists nothing: the history is a list of its message objects kept in memory between turns.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, TOOL_DESCRIPTION, weather


def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    return weather(city)


class PydanticAIConversation:
    def __init__(self, agent: Agent[None, str]) -> None:
        self._agent = agent
        self.messages: list[ModelMessage] = []

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        for m in messages:
            if m["role"] == "user":
                self.messages.append(ModelRequest(parts=[UserPromptPart(content=m["content"])]))
            else:
                self.messages.append(ModelResponse(parts=[TextPart(content=m["content"])]))

    async def turn(self, user_text: str, *, stream: bool) -> str:
        if not stream:
            result = await self._agent.run(user_text, message_history=self.messages)
            self.messages = result.all_messages()
            return result.output
        async with self._agent.run_stream(user_text, message_history=self.messages) as streamed:
            async for _text in streamed.stream_text(delta=True, debounce_by=None):
                pass
            output = await streamed.get_output()
        self.messages = streamed.all_messages()
        return output


class PydanticAI:
    supports_streaming = True

    def __init__(self, base_url: str) -> None:
        self._provider = OpenAIProvider(base_url=base_url, api_key=API_KEY)
        model = OpenAIChatModel(MODEL, provider=self._provider)
        tool = Tool(get_weather, name="get_weather", description=TOOL_DESCRIPTION)
        self._agent: Agent[None, str] = Agent(model, instructions=INSTRUCTIONS, tools=[tool])

    async def conversation(self, conversation_id: str) -> PydanticAIConversation:
        return PydanticAIConversation(self._agent)

    async def aclose(self) -> None:
        await self._provider.client.close()


async def create(base_url: str, workdir: Path) -> PydanticAI:
    return PydanticAI(base_url)
