"""A session holds the conversation's messages, and only those come back from ``get_items()``.

Timestep's journal (started calls, questions, decisions) lives in the same store, written with the
messages it belongs to, and is read with ``get_journal()``. Whatever a run went through, every store's
``get_items()`` is a list the ``openai`` package's message types accept as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import agents  # the OpenAI Agents SDK, imported at collection: CLI tests put folders with an agents.py on sys.path
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

from tests import stores_fixtures as fixtures
from tests.stores_fixtures import unique
from timestep import (
    Agent,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    ModelClient,
    pending_interruptions,
    run_agent,
)
from timestep.sessions import Session, Store
from timestep.testing import Reply, TestServer, ToolCall

store_and_spec = fixtures.store_and_spec
pg_prefix = fixtures.pg_prefix

MESSAGE = TypeAdapter(ChatCompletionMessageParam)


def lookup(city: str) -> str:
    """Look a city up."""
    return f"found {city}"


def guard(tool_name: str, args: dict[str, Any]) -> GuardrailResult | None:
    if args.get("city") == "Secret":
        return GuardrailResult.block("not that one")
    if args.get("city") == "Oslo":
        raise GuardrailInterrupt("Look up Oslo?", tool_name, args)
    return None


helper = Agent(name="Helper", model="m", instructions="You help.", tools=[lookup])
agent = Agent(
    name="Main",
    model="m",
    instructions="You answer.",
    tools=[lookup],
    handoffs=[helper],
    guardrails=[InputGuardrail(guard)],
)

Scenario = Callable[[TestServer, ModelClient, Session], Awaitable[None]]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def completed(server: TestServer, client: ModelClient, session: Session) -> None:
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})), Reply.text("Lima found"))
    assert (await run_agent(agent, ask("Lima?"), session, client=client))["status"] == "completed"


async def paused(server: TestServer, client: ModelClient, session: Session) -> None:
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Oslo"})))
    assert (await run_agent(agent, ask("Oslo?"), session, client=client))["status"] == "interrupted"


def resumed(decision: Any) -> Scenario:
    async def scenario(server: TestServer, client: ModelClient, session: Session) -> None:
        await paused(server, client, session)
        (waiting,) = await pending_interruptions(agent, session)
        server.script(Reply.text("as you decided"))
        done = await run_agent(agent, [], session, client=client, approvals={waiting.tool_call_id: decision})
        assert done["status"] == "completed"

    return scenario


async def blocked(server: TestServer, client: ModelClient, session: Session) -> None:
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Secret"})), Reply.text("cannot"))
    result = await run_agent(agent, ask("Secret?"), session, client=client)
    assert result["tool_calls"][0]["error"].startswith("blocked by guard")


async def handed_off(server: TestServer, client: ModelClient, session: Session) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "Lima please"})),
        Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})),
        Reply.text("helper: Lima found"),
        Reply.text("Lima found, says the helper"),
    )
    assert (await run_agent(agent, ask("Ask the helper"), session, client=client))["status"] == "completed"


async def parallel(server: TestServer, client: ModelClient, session: Session) -> None:
    server.script(
        Reply.tool_calls(ToolCall("lookup", {"city": "Lima"}), ToolCall("lookup", {"city": "Oslo"})),
    )
    first = await run_agent(agent, ask("Both?"), session, client=client)
    assert first["status"] == "interrupted"
    server.script(Reply.text("both found"))
    call = first["interruptions"][0]["tool_call_id"]
    assert (await run_agent(agent, [], session, client=client, approvals={call: True}))["status"] == "completed"


SCENARIOS: dict[str, Scenario] = {
    "completed": completed,
    "paused": paused,
    "approved": resumed(True),
    "declined": resumed({"approve": False, "message": "no"}),
    "edited": resumed({"approve": True, "args": {"city": "Bergen"}}),
    "blocked": blocked,
    "handed-off": handed_off,
    "parallel-calls": parallel,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_get_items_is_what_the_openai_types_accept(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str], name: str
) -> None:
    store, _ = store_and_spec
    session = store.session(agent.name, unique(name), agent.instructions)
    await SCENARIOS[name](server, client, session)
    sessions = [session]
    if name == "handed-off":
        sessions.append(session.derive(helper.name, f"{session.conversation_id}~main", helper.instructions))
    for s in sessions:
        items = await s.get_items()
        assert items and items[0] == {"role": "system", "content": s.agent_instructions}
        for item in items:
            assert "journal" not in item
            MESSAGE.validate_python(item)
        journal = await s.get_journal()
        assert (journal or name == "blocked") and all("journal" in r and "role" not in r for r in journal)
    # The model was last sent exactly what the session holds, but for the reply it gave.
    assert server.requests[-1].messages == (await session.get_items())[:-1]


async def test_pop_item_takes_the_latest_message_with_its_journal(
    server: TestServer, client: ModelClient, store_and_spec: tuple[Store, str]
) -> None:
    store, _ = store_and_spec
    session = store.session(agent.name, unique(), agent.instructions)
    await paused(server, client, session)
    assert await pending_interruptions(agent, session)
    before = await session.get_items()
    popped = await session.pop_item()
    assert popped == before[-1] and popped is not None and popped.get("tool_calls")
    assert await session.get_items() == before[:-1]
    assert await session.get_journal() == []  # the question about the popped call went with it
    assert await pending_interruptions(agent, session) == []


async def test_a_store_refuses_items_it_could_not_give_back(store_and_spec: tuple[Store, str]) -> None:
    from timestep import SessionCorruptError

    store, _ = store_and_spec
    session = store.session("A", unique(), None)
    sdk_item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    with pytest.raises(SessionCorruptError, match="neither 'role' nor 'journal'"):
        await session.add_items([{"role": "user", "content": "hi"}, sdk_item])
    assert await session.get_items() == []  # all or nothing


async def test_the_agents_sdk_runs_on_a_timestep_session(server: TestServer, store_and_spec: tuple[Store, str]) -> None:
    store, _ = store_and_spec
    agents.set_tracing_disabled(True)
    openai_client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    model = agents.OpenAIChatCompletionsModel(model="m", openai_client=openai_client)
    sdk_agent = agents.Agent(name="SDK", instructions="Be brief.", model=model)
    session = store.session("SDK", unique("sdk"), None)
    assert session.session_id == session.conversation_id
    server.script(Reply.text("Hello, Ada."), Reply.text("Your name is Ada."))
    first = await agents.Runner.run(sdk_agent, "My name is Ada.", session=session)  # type: ignore[arg-type]
    second = await agents.Runner.run(sdk_agent, "What is my name?", session=session)  # type: ignore[arg-type]
    assert (first.final_output, second.final_output) == ("Hello, Ada.", "Your name is Ada.")
    sent = [(m["role"], m["content"]) for m in server.requests[-1].messages]
    assert sent[1:] == [("user", "My name is Ada."), ("assistant", "Hello, Ada."), ("user", "What is my name?")]
    assert [i["role"] for i in await session.get_items()] == ["user", "assistant", "user", "assistant"]
    await session.close()
    await openai_client.close()


def test_the_readme_store_of_your_own_runs(server: TestServer, tmp_path: Any) -> None:
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "class MemorySession" in b)
    server.script(Reply.text("Hi!"))
    (tmp_path / "own_store.py").write_text(block)
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-x"}
    proc = subprocess.run(
        [sys.executable, "own_store.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['system', 'user', 'assistant']"
    assert server.requests[0].messages[-1] == {"role": "user", "content": "Hello!"}
