"""LangGraph: a two-node agent graph (model, tools) on ChatOpenAI, checkpointed with AsyncSqliteSaver."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import SecretStr

from benchmarks.common import API_KEY, INSTRUCTIONS, MODEL, weather


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    return weather(city)


def build_graph(base_url: str, checkpointer: AsyncSqliteSaver) -> Any:
    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key=SecretStr(API_KEY), max_retries=0, timeout=120.0)
    model = llm.bind_tools([get_weather])
    system = SystemMessage(INSTRUCTIONS)

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke([system, *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer)


class LangGraphConversation:
    def __init__(self, app: Any, conversation_id: str) -> None:
        self._app = app
        self._config: dict[str, Any] = {"configurable": {"thread_id": conversation_id}}

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        converted: list[BaseMessage] = [
            HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"]) for m in messages
        ]
        await self._app.aupdate_state(self._config, {"messages": converted}, as_node="agent")

    async def turn(self, user_text: str, *, stream: bool) -> str:
        state_in = {"messages": [HumanMessage(user_text)]}
        if not stream:
            state = await self._app.ainvoke(state_in, self._config)
            return str(state["messages"][-1].content)
        text: list[str] = []
        async for chunk, meta in self._app.astream(state_in, self._config, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "agent":
                text.append(str(chunk.content))
        return "".join(text)


class LangGraph:
    supports_streaming = True

    def __init__(self, app: Any, stack: AsyncExitStack) -> None:
        self._app = app
        self._stack = stack

    async def conversation(self, conversation_id: str) -> LangGraphConversation:
        return LangGraphConversation(self._app, conversation_id)

    async def aclose(self) -> None:
        await self._stack.aclose()


async def create(base_url: str, workdir: Path) -> LangGraph:
    stack = AsyncExitStack()
    saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(workdir / "langgraph.sqlite")))
    return LangGraph(build_graph(base_url, saver), stack)
