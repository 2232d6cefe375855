"""A program that uses an MCP server's tools, run as a separate process by tests/test_mcp.py.

``python tests/mcp_app.py BASE_URL STORE NOTES_FILE start|look|approve|edit`` starts a
conversation, goes on with it without deciding anything, or decides what it left pending: each run
starts the notes server afresh, as a new process would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from timestep import Agent, FileSession, ModelClient, pending_interruptions, run_agent
from timestep.mcp import MCPServerStdio

SERVER = Path(__file__).with_name("mcp_notes_server.py")


async def main(base_url: str, store: str, notes_file: str, mode: str) -> None:
    notes = MCPServerStdio(sys.executable, [str(SERVER)], env={"NOTES_FILE": notes_file}, name="notes")
    agent = Agent(name="Notes", model="any", tools=[notes])
    session = FileSession(agent.name, "conv", storage_dir=store)
    client = ModelClient(base_url=base_url, api_key="test", max_retries=0)
    if mode == "start":
        result = await run_agent(agent, [{"role": "user", "content": "go"}], session, client=client)
    elif mode == "look":
        result = await run_agent(agent, [], session, client=client)
    else:
        pending = [p.tool_call_id for p in await pending_interruptions(agent, session)]
        decision = {"approve": True, "args": {"title": "edited"}} if mode == "edit" else True
        result = await run_agent(agent, [], session, client=client, approvals=dict.fromkeys(pending, decision))
    print(json.dumps({k: result.get(k) for k in ("status", "tool_calls", "interruptions")}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
