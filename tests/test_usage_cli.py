"""Usage where people look: ``timestep sessions show`` totals and the chat's ``/usage``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from click.testing import CliRunner

from timestep import FileSession
from timestep.cli.app import cli
from timestep.testing import Reply, TestServer, ToolCall
from timestep.usage import totals

from .test_cli import agents_file, chat, conversation_id, runner, store, stored

__all__ = ["agents_file", "runner", "store", "stored"]  # fixtures, used by name


def recorded(store: Path, conversation: str) -> dict[str, int]:
    """What the sessions' own usage records add up to, read with the library."""

    async def read() -> list[dict[str, object]]:
        top = await FileSession("assistant", conversation, storage_dir=store).get_journal()
        below = await FileSession("helper", f"{conversation}~assistant", storage_dir=store).get_journal()
        return [*top, *below]

    return totals(asyncio.run(read()))


def test_sessions_show_prints_the_totals_delegates_included(runner: CliRunner, store: Path, stored: str) -> None:
    result = runner.invoke(cli, ["sessions", "show", stored, "--store", str(store)])
    assert result.exit_code == 0, result.output
    want = recorded(store, stored)
    assert want["model_calls"] == 5 and want["by_agent"]["helper"]["model_calls"] == 1
    line = re.search(r"usage: (\d+) model calls, (\d+) tokens in, (\d+) out, (\d+) in all", result.output)
    assert line, result.output
    assert [int(n) for n in line.groups()] == [
        want["model_calls"],
        want["prompt_tokens"],
        want["completion_tokens"],
        want["total_tokens"],
    ]
    helper = want["by_agent"]["helper"]
    assert f"helper: 1 model call, {helper['prompt_tokens']} tokens in" in result.output


def test_chat_usage_shows_the_conversation_per_agent(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "hi helper"})),
        Reply.text("hello"),
        Reply.text("The helper says hello."),
    )
    result = chat(runner, server, agents_file, store, "say hi to the helper\n/usage\n/exit\n")
    assert result.exit_code == 0, result.output
    want = recorded(store, conversation_id(result.output))
    assert f"This conversation's usage: 3 model calls, {want['prompt_tokens']} tokens in" in result.output
    assert f"assistant: 2 model calls, {want['by_agent']['assistant']['prompt_tokens']} tokens in" in result.output
    assert "helper: 1 model call," in result.output
