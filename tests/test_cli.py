"""The ``timestep`` command line, through click's CliRunner against the test server over real HTTP.

Chats are fed their messages (and approval answers) on stdin; the assertions look at what was
printed and at what was stored, because a chat that prints well but stores wrongly cannot be
continued.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from timestep import Agent, FileSession, ModelClient, run_agent
from timestep.cli.app import cli
from timestep.cli.chat import close_unfinished, pending_interruptions
from timestep.testing import Reply, TestServer, ToolCall

AGENTS = '''
from timestep import Agent, GuardrailInterrupt, GuardrailResult, InputGuardrail, OutputGuardrail


def get_weather(city: str) -> str:
    """The weather right now in a city."""
    return f"{city}: sunny, 21C"


def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def read_config() -> str:
    """Read the configuration."""
    return "token=sk-live-0123456789abcdef"


def confirm_deletes(tool_name, args):
    if tool_name == "delete_file":
        raise GuardrailInterrupt(f"Really delete {args['path']}?")


def no_secrets(tool_name, args, result):
    if "sk-live" in str(result):
        return GuardrailResult.block("contains a secret")


helper = Agent(name="helper", model="test-model", instructions="You help.", tools=[get_weather])
assistant = Agent(
    name="assistant",
    model="test-model",
    instructions="Be brief.",
    tools=[get_weather, delete_file, read_config],
    handoffs=[helper],
    guardrails=[InputGuardrail(confirm_deletes), OutputGuardrail(no_secrets)],
)
not_an_agent = 42
'''


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.py"
    path.write_text(AGENTS)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    # No key, no endpoint and no store from the environment: each test says what it uses.
    yield CliRunner(env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None, "TIMESTEP_STORE": None})


def chat(runner: CliRunner, server: TestServer, agents_file: Path, store: Path, stdin: str, *extra: str) -> Result:
    args = ["chat", f"{agents_file}:assistant", "--base-url", server.base_url, "--api-key", "test"]
    return runner.invoke(cli, [*args, "--store", str(store), *extra], input=stdin)


def conversation_id(output: str) -> str:
    match = re.search(r"(?:New|Continuing) conversation (\S+) with", output)
    assert match, output
    return match.group(1)


def items(store: Path, conversation: str, agent: str = "assistant") -> list[dict[str, Any]]:
    return asyncio.run(FileSession(agent, conversation, storage_dir=store).get_items())


def journal(store: Path, conversation: str, agent: str = "assistant") -> list[dict[str, Any]]:
    return asyncio.run(FileSession(agent, conversation, storage_dir=store).get_journal())


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


# -- chat ---------------------------------------------------------------------------------------------


def test_chat_streams_a_reply_shows_a_tool_call_and_stores_the_conversation(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Paris"})), Reply.text("It is sunny in Paris."))

    result = chat(runner, server, agents_file, store, "What's the weather in Paris?\n/exit\n")

    assert result.exit_code == 0, result.output
    assert "you> What's the weather in Paris?" in result.output
    assert '-> get_weather(city="Paris")' in result.output
    assert "<- Paris: sunny, 21C" in result.output
    assert "assistant: It is sunny in Paris." in result.output
    cid = conversation_id(result.output)
    assert f"--conversation {cid}" in result.output
    stored = items(store, cid)
    assert [i.get("role") for i in stored if "role" in i] == ["system", "user", "assistant", "tool", "assistant"]
    assert stored[-1]["content"] == "It is sunny in Paris."
    assert server.requests[0].stream  # the reply was asked for as a stream
    assert server.requests[0].headers["authorization"] == "Bearer test"


def test_chat_approval_answered_yes_runs_the_tool(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "notes.txt"})), Reply.text("Deleted it."))

    result = chat(runner, server, agents_file, store, "delete notes.txt\ny\n/exit\n")

    assert result.exit_code == 0, result.output
    assert 'approval needed: delete_file(path="notes.txt")' in result.output
    assert "Really delete notes.txt?" in result.output
    assert "+ approved" in result.output
    assert "<- deleted notes.txt" in result.output
    stored = items(store, conversation_id(result.output))
    decision = next(i for i in journal(store, conversation_id(result.output)) if i.get("journal") == "decision")
    assert decision["approve"] is True
    assert any(i.get("role") == "tool" and i["content"] == "deleted notes.txt" for i in stored)


def test_chat_approval_declined_with_a_reason_tells_the_model(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "a.txt"})), Reply.text("OK, kept it."))

    result = chat(runner, server, agents_file, store, "delete a.txt\nn\nI still need it\n/exit\n")

    assert result.exit_code == 0, result.output
    assert "x declined: I still need it" in result.output
    assert "assistant: OK, kept it." in result.output
    stored = items(store, conversation_id(result.output))
    decision = next(i for i in journal(store, conversation_id(result.output)) if i.get("journal") == "decision")
    assert (decision["approve"], decision["message"]) == (False, "I still need it")
    tool_message = next(i for i in stored if i.get("role") == "tool")
    assert "declined" in tool_message["content"] and "I still need it" in tool_message["content"]
    # The model read the refusal on the next request.
    assert "I still need it" in server.requests[-1].messages[-1]["content"]


def test_chat_decline_in_one_line(runner: CliRunner, server: TestServer, agents_file: Path, store: Path) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "b.txt"})), Reply.text("Fine."))

    result = chat(runner, server, agents_file, store, "delete b.txt\nno not today\n/exit\n")

    assert result.exit_code == 0, result.output
    assert "x declined: not today" in result.output
    assert "reason, for the model" not in result.output  # the reason came with the answer
    decision = next(i for i in journal(store, conversation_id(result.output)) if i.get("journal") == "decision")
    assert (decision["approve"], decision["message"]) == (False, "not today")


def test_chat_shows_a_handoff_and_who_speaks(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "weather in Rome?"})),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Rome"})),
        Reply.text("Rome is sunny."),
        Reply.text("The helper says Rome is sunny."),
    )

    result = chat(runner, server, agents_file, store, "ask the helper about Rome\n/exit\n")

    assert result.exit_code == 0, result.output
    out = result.output
    assert ">> assistant hands over to helper: weather in Rome?" in out
    assert '    -> get_weather(city="Rome")' in out  # indented: the delegate is working
    assert "  helper: Rome is sunny." in out
    assert "<< back to assistant" in out
    assert "assistant: The helper says Rome is sunny." in out
    assert "transfer_to_helper(" not in out  # shown as a handoff, not as a tool call
    cid = conversation_id(out)
    helper_items = items(store, f"{cid}~assistant", agent="helper")
    assert helper_items[-1]["content"] == "Rome is sunny."


def test_chat_shows_an_output_guardrail_block(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("read_config", {})), Reply.text("I cannot show that."))

    result = chat(runner, server, agents_file, store, "show the config\n/exit\n")

    assert result.exit_code == 0, result.output
    assert "!! result blocked by guardrail no_secrets: contains a secret" in result.output
    assert "sk-live" not in result.output
    assert "sk-live" not in json.dumps(items(store, conversation_id(result.output)))


def test_chat_continues_a_conversation_with_its_history(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("Nice to meet you, Ada."))
    first = chat(runner, server, agents_file, store, "my name is Ada\n")
    assert first.exit_code == 0, first.output  # end of input leaves like /exit
    cid = conversation_id(first.output)
    listed = runner.invoke(cli, ["sessions", "list", "--store", str(store), "--json"])
    assert [c["messages"] for c in json.loads(listed.output)] == [3]

    server.script(Reply.text("You are Ada."))
    second = chat(runner, server, agents_file, store, "who am I?\n/exit\n", "--conversation", cid)

    assert second.exit_code == 0, second.output
    # Counted as `sessions list` counts them: the system message, the question and the reply.
    assert f"Continuing conversation {cid} with assistant (3 messages)" in second.output
    assert "Last reply: Nice to meet you, Ada." in second.output
    sent = [m["content"] for m in server.requests[-1].messages]
    assert sent == ["Be brief.", "my name is Ada", "Nice to meet you, Ada.", "who am I?"]
    assert [i["content"] for i in items(store, cid)][-1] == "You are Ada."


def test_chat_model_override_applies_to_the_agent_and_its_delegates(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "hi"})),
        Reply.text("hello from the helper"),
        Reply.text("done"),
    )

    result = chat(runner, server, agents_file, store, "hi\n/exit\n", "--model", "other-model")

    assert result.exit_code == 0, result.output
    assert [r.body["model"] for r in server.requests] == ["other-model"] * 3


def test_chat_resumes_a_conversation_a_program_left_waiting_for_approval(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    assistant: Agent = runpy.run_path(str(agents_file))["assistant"]
    session = FileSession("assistant", "paused-1", assistant.instructions, store)
    client = ModelClient(base_url=server.base_url, api_key="test")
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "old.log"})))

    async def pause() -> dict[str, Any]:
        try:
            result: dict[str, Any] = await run_agent(
                assistant, [{"role": "user", "content": "delete old.log"}], session, client=client
            )
            return result
        finally:
            await client.aclose()

    paused = asyncio.run(pause())
    assert paused["status"] == "interrupted"
    assert [i.tool_name for i in asyncio.run(pending_interruptions(assistant, session))] == ["delete_file"]

    server.script(Reply.text("old.log is gone."))
    result = chat(runner, server, agents_file, store, "y\n/exit\n", "--conversation", "paused-1")

    assert result.exit_code == 0, result.output
    assert "It is waiting for 1 approval." in result.output
    assert "Really delete old.log?" in result.output
    assert "<- deleted old.log" in result.output
    assert "assistant: old.log is gone." in result.output
    assert asyncio.run(pending_interruptions(assistant, session)) == []


def test_chat_leaves_the_call_waiting_when_input_ends_at_the_approval_question(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "x"})))

    result = chat(runner, server, agents_file, store, "delete x\n")

    assert result.exit_code == 0, result.output
    assert "the call waits for approval" in result.output
    assistant: Agent = runpy.run_path(str(agents_file))["assistant"]
    session = FileSession("assistant", conversation_id(result.output), None, store)
    assert [i.args for i in asyncio.run(pending_interruptions(assistant, session))] == [{"path": "x"}]


def test_close_unfinished_answers_calls_a_cancelled_turn_left_open(agents_file: Path, store: Path) -> None:
    assistant: Agent = runpy.run_path(str(agents_file))["assistant"]
    session = FileSession("assistant", "cancelled", assistant.instructions, store)
    helper_session = FileSession("helper", "cancelled~assistant", "You help.", store)
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "c2", "type": "function", "function": {"name": "transfer_to_helper", "arguments": '{"message": "x"}'}},
    ]

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        await session.add_items(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"journal": "started", "call": "c1", "args": {"city": "Oslo"}},
                {"journal": "started", "call": "c2", "args": {"message": "x"}},
            ]
        )
        inner = {"id": "h1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        await helper_session.add_items(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [inner]}]
        )
        assert await close_unfinished(assistant, session) == 2
        return await session.get_items(), await helper_session.get_items()

    top, helper = asyncio.run(scenario())
    answers = {i["tool_call_id"]: i["content"] for i in top if i.get("role") == "tool"}
    assert set(answers) == {"c1", "c2"}
    assert "may or may not" in answers["c1"]
    assert helper[-1] == {"role": "tool", "tool_call_id": "h1", "content": helper[-1]["content"]}
    assert "Not run" in helper[-1]["content"]


# -- user errors: one line on stderr, non-zero exit, no traceback --------------------------------------


def test_chat_file_not_found(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["chat", f"{tmp_path}/missing.py:assistant", "--base-url", "http://x/v1"])
    assert_one_line_error(result, "no such file", "missing.py")


def test_chat_module_not_found(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["chat", "no_such_package.agents:bot", "--base-url", "http://x/v1"])
    assert_one_line_error(result, "no module named 'no_such_package.agents'")


def test_chat_name_that_is_not_an_agent(runner: CliRunner, agents_file: Path) -> None:
    result = runner.invoke(cli, ["chat", f"{agents_file}:not_an_agent", "--base-url", "http://x/v1"])
    assert_one_line_error(result, "'not_an_agent'", "is a int, not a timestep Agent")


def test_chat_missing_name_lists_the_agents_there(runner: CliRunner, agents_file: Path) -> None:
    result = runner.invoke(cli, ["chat", f"{agents_file}:assistent", "--base-url", "http://x/v1"])
    assert_one_line_error(result, "has no 'assistent'", "Agents there: helper, assistant")


def test_chat_file_without_a_name_takes_its_only_agent(
    runner: CliRunner, server: TestServer, tmp_path: Path, store: Path
) -> None:
    single = tmp_path / "single.py"
    single.write_text("from timestep import Agent\nbot = Agent(name='bot', model='m')\n")
    server.script(Reply.text("beep"))
    args = ["chat", str(single), "--base-url", server.base_url, "--store", str(store)]
    result = runner.invoke(cli, args, input="hi\n")
    assert result.exit_code == 0, result.output
    assert "bot: beep" in result.output


def test_chat_file_with_several_agents_needs_a_name(runner: CliRunner, agents_file: Path) -> None:
    result = runner.invoke(cli, ["chat", str(agents_file), "--base-url", "http://x/v1"])
    assert_one_line_error(result, "several Agents (helper, assistant)", f"{agents_file}:NAME")


def test_chat_file_with_an_error_inside(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(cli, ["chat", f"{broken}:agent", "--base-url", "http://x/v1"])
    assert_one_line_error(result, "cannot import", "RuntimeError: boom")


def test_debug_shows_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(cli, ["--debug", "chat", f"{broken}:agent", "--base-url", "http://x/v1"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot import")


def test_chat_missing_api_key(runner: CliRunner, agents_file: Path) -> None:
    result = runner.invoke(cli, ["chat", f"{agents_file}:assistant"])
    assert_one_line_error(result, "no API key", "OPENAI_API_KEY")


def test_chat_unreachable_endpoint(runner: CliRunner, agents_file: Path, store: Path) -> None:
    args = ["chat", f"{agents_file}:assistant", "--base-url", "http://127.0.0.1:9/v1", "--store", str(store)]
    result = runner.invoke(cli, args, input="hello\n")
    assert_one_line_error(result, "cannot reach http://127.0.0.1:9/v1")


def test_chat_rejected_api_key(runner: CliRunner, agents_file: Path, store: Path) -> None:
    with TestServer(api_key="right") as server:
        args = ["chat", f"{agents_file}:assistant", "--base-url", server.base_url, "--api-key", "wrong"]
        result = runner.invoke(cli, [*args, "--store", str(store)], input="hello\n")
    assert_one_line_error(result, "HTTP 401", "Incorrect API key")


def test_chat_conversation_names_a_new_one(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("Hello, project."))
    result = chat(runner, server, agents_file, store, "hi\n", "--conversation", "project-x")
    assert result.exit_code == 0, result.output
    assert "New conversation project-x with assistant" in result.output
    assert [i.get("content") for i in items(store, "project-x")][-1] == "Hello, project."


def test_chat_continue_latest_without_any_conversation(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    assert_one_line_error(
        chat(runner, server, agents_file, store, "", "-c"), "no conversation with assistant", "to continue"
    )
    both = chat(runner, server, agents_file, store, "", "-c", "--conversation", "x")
    assert_one_line_error(both, "-c", "--conversation", "not both")


def test_store_url_not_understood(runner: CliRunner, server: TestServer, agents_file: Path) -> None:
    result = chat(runner, server, agents_file, Path("x"), "", "--store", "mysql://db/chats")
    assert_one_line_error(result, "unknown store kind 'mysql'")
    assert_one_line_error(runner.invoke(cli, ["sessions", "list", "--store", "mysql://db"]), "mysql")


def test_usage_errors_are_one_line_too(runner: CliRunner) -> None:
    assert_one_line_error(runner.invoke(cli, ["chat"]), "Missing argument", "timestep chat --help")
    assert_one_line_error(runner.invoke(cli, ["sessions", "list", "--bogus"]), "No such option", "--bogus")
    assert_one_line_error(runner.invoke(cli, ["nope"]), "No such command 'nope'")


# -- sessions -----------------------------------------------------------------------------------------


@pytest.fixture
def stored(runner: CliRunner, server: TestServer, agents_file: Path, store: Path) -> str:
    """A conversation with a tool call, an approval and a handoff, made through the chat command."""
    server.script(
        Reply.tool_calls(ToolCall("delete_file", {"path": "a.txt"})),
        Reply.text("Deleted."),
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "hi helper"})),
        Reply.text("hello"),
        Reply.text("The helper says hello."),
    )
    result = chat(runner, server, agents_file, store, "delete a.txt\ny\nsay hi to the helper\n/exit\n")
    assert result.exit_code == 0, result.output
    return conversation_id(result.output)


def test_sessions_list(runner: CliRunner, store: Path, stored: str) -> None:
    result = runner.invoke(cli, ["sessions", "list", "--store", str(store)])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["AGENT", "CONVERSATION", "MESSAGES", "LAST", "UPDATE", "FIRST", "PROMPT"]
    rows = {tuple(line.split()[:3]): line for line in lines[1:]}
    assert rows[("assistant", stored, "9")].endswith("  delete a.txt")  # its first prompt
    assert rows[("helper", f"{stored}~assistant", "3")].endswith("  hi helper")
    assert "\x1b[" not in result.output  # no colour codes in a pipe

    only = runner.invoke(cli, ["sessions", "list", "--store", str(store), "--agent", "helper"])
    assert [line.split()[0] for line in only.output.splitlines()[1:]] == ["helper"]


def test_sessions_list_empty(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["sessions", "list", "--store", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert "No conversations in folder" in result.output


def test_sessions_show_transcript_and_json(runner: CliRunner, store: Path, stored: str) -> None:
    result = runner.invoke(cli, ["sessions", "show", stored, "--store", str(store)])

    assert result.exit_code == 0, result.output
    out = result.output
    assert f"-- assistant - {stored} - 9 messages --" in out  # plain marks in a pipe
    assert "system: Be brief." in out
    assert "you: delete a.txt" in out
    assert '-> delete_file(path="a.txt")' in out
    asked = out.index('|| approval asked for delete_file(path="a.txt"): Really delete a.txt?')
    assert out.index('-> delete_file(path="a.txt")') < asked < out.index("+ approved") < out.index("<- delete_file")
    assert "<- delete_file: deleted a.txt" in out
    assert "assistant: The helper says hello." in out

    raw = runner.invoke(cli, ["sessions", "show", stored, "--store", str(store), "--json"])
    assert raw.exit_code == 0
    assert json.loads(raw.output) == items(store, stored)


def test_sessions_show_an_id_under_several_agents(runner: CliRunner, store: Path) -> None:
    async def make() -> None:
        await FileSession("alpha", "shared", "A.", store).add_items([{"role": "user", "content": "to alpha"}])
        await FileSession("beta", "shared", "B.", store).add_items([{"role": "user", "content": "to beta"}])

    asyncio.run(make())

    both = runner.invoke(cli, ["sessions", "show", "shared", "--store", str(store)])
    assert both.exit_code == 0
    assert "you: to alpha" in both.output and "you: to beta" in both.output

    one = runner.invoke(cli, ["sessions", "show", "shared", "--store", str(store), "--agent", "beta"])
    assert "to beta" in one.output and "to alpha" not in one.output

    ambiguous = runner.invoke(cli, ["sessions", "show", "shared", "--store", str(store), "--json"])
    assert_one_line_error(ambiguous, "exists for agents", "--agent")


def test_sessions_show_unknown_id(runner: CliRunner, store: Path, stored: str) -> None:
    result = runner.invoke(cli, ["sessions", "show", "missing", "--store", str(store)])
    assert_one_line_error(result, "no conversation 'missing'", "timestep sessions list --store")


def test_sessions_rm_without_a_terminal_needs_yes(runner: CliRunner, store: Path, stored: str) -> None:
    kept = runner.invoke(cli, ["sessions", "rm", stored, "--store", str(store)], input="y\n")
    assert_one_line_error(kept, "without a terminal to confirm", "--yes")
    assert items(store, stored)
    assert items(store, f"{stored}~assistant", agent="helper")


def test_sessions_rm_yes_and_agent(runner: CliRunner, store: Path, stored: str) -> None:
    result = runner.invoke(cli, ["sessions", "rm", stored, "--agent", "assistant", "--yes", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "Deleted 2 conversations." in result.output
    assert_one_line_error(runner.invoke(cli, ["sessions", "rm", stored, "--yes", "--store", str(store)]), stored)


def test_sessions_work_with_sqlite(runner: CliRunner, server: TestServer, agents_file: Path, tmp_path: Path) -> None:
    spec = f"sqlite:///{tmp_path}/chats.db"
    server.script(Reply.text("stored in sqlite"))
    args = ["chat", f"{agents_file}:assistant", "--base-url", server.base_url, "--api-key", "t", "--store", spec]
    result = runner.invoke(cli, args, input="hi\n")
    assert result.exit_code == 0, result.output
    cid = conversation_id(result.output)

    listing = runner.invoke(cli, ["sessions", "list", "--store", spec])
    assert cid in listing.output
    shown = runner.invoke(cli, ["sessions", "show", cid, "--store", spec])
    assert "assistant: stored in sqlite" in shown.output


# -- help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["timestep chat agents.py:assistant", "timestep run", "timestep demo", "sessions", "--debug"]),
        (
            ["chat"],
            [
                *("FILE.py:NAME", "--conversation", "-c, --continue", "-m, --model", "-s, --system", "--no-stream"),
                *("--offline", "--store", "--base-url", "--api-key", "--debug", "Ctrl-C", "/model", "Alt-Enter"),
            ],
        ),
        (["run"], ["PROMPT", "stdout", "stderr", "status 3", "-c, --continue", "--offline", "git diff |"]),
        (["demo"], ["--offline", "--yes / --no", "scripted model", "--store", "--debug"]),
        (["sessions"], ["list", "show", "rm"]),
        (["sessions", "list"], ["--store", "--agent", "-n, --limit", "--json", "first prompt"]),
        (["sessions", "show"], ["--json", "--agent", "several agents"]),
        (["sessions", "rm"], ["--yes", "--agent", "no terminal"]),
    ],
)
def test_help(runner: CliRunner, args: list[str], expected: list[str]) -> None:
    result = runner.invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    missing = [text for text in expected if text not in result.output]
    assert missing == [], result.output
    assert "Examples:" in result.output


def test_console_script_help_runs_and_loads_no_terminal_ui() -> None:
    result = subprocess.run([Path(sys.executable).parent / "timestep", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: timestep" in result.stdout

    # rich and the HTTP client load only when a command runs, so --help stays quick.
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from timestep.cli.app import cli\n"
        "CliRunner().invoke(cli, ['--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'aiohttp', 'httpx2', 'pydantic'}))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_library_core_never_imports_click_or_rich() -> None:
    root = Path(__file__).resolve().parent.parent / "timestep"
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "cli" not in path.relative_to(root).parts
        and re.search(r"^\s*(?:import|from)\s+(?:click|rich)\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


# -- what a user of llm or clai reaches for ------------------------------------------------------------


def resume_args(output: str) -> list[str]:
    line = next(x for x in output.splitlines() if "Continue with: " in x)
    words = shlex.split(line.split("Continue with: ", 1)[1])
    assert words[:2] == ["timestep", "chat"], words
    return words[1:]


def test_the_continue_hint_works_as_printed(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("First."))
    args = ["chat", f"{agents_file}:assistant", "--base-url", server.base_url, "--store", str(store)]
    first = runner.invoke(cli, [*args, "--model", "other-model"], input="one\n")
    assert first.exit_code == 0, first.output

    hint = resume_args(first.output)
    assert ["--store", str(store)] == hint[hint.index("--store") : hint.index("--store") + 2]
    server.script(Reply.text("Second."))
    again = runner.invoke(cli, hint, input="two\n")

    assert again.exit_code == 0, again.output
    assert f"Continuing conversation {conversation_id(first.output)}" in again.output
    assert [r.body["model"] for r in server.requests] == ["other-model", "other-model"]
    assert "Last reply: First." in again.output


def test_slash_model_switches_and_unknown_commands_are_refused(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("from the first"), Reply.text("from the second"))

    result = chat(runner, server, agents_file, store, "/model\nhi\n/model gpt-9\nagain\n/bogus words\n/exit\n")

    assert result.exit_code == 0, result.output
    assert "Model: test-model (for assistant and its delegates)." in result.output
    assert "Model: gpt-9 (for assistant and its delegates)." in result.output
    assert [r.body["model"] for r in server.requests] == ["test-model", "gpt-9"]
    assert "error: unknown command /bogus (/help lists them" in result.stderr
    assert all("/bogus" not in json.dumps(r.messages) for r in server.requests)
    assert "--model gpt-9" in " ".join(resume_args(result.output))


def test_a_leading_double_slash_sends_a_slash(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("A path."))
    result = chat(runner, server, agents_file, store, "//etc/hosts is a file\n")
    assert result.exit_code == 0, result.output
    assert server.requests[0].messages[-1]["content"] == "/etc/hosts is a file"


def test_a_block_between_triple_quotes_is_one_message_in_a_pipe(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("Got one line."), Reply.text("Got three lines."))

    result = chat(runner, server, agents_file, store, 'one\n"""\nfirst line\n\nthird line\n"""\n')

    assert result.exit_code == 0, result.output
    users = [m["content"] for m in server.requests[-1].messages if m["role"] == "user"]
    assert users == ["one", "first line\n\nthird line"]
    assert len(server.requests) == 2


def test_usage_clear_and_copy(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path, tmp_path: Path
) -> None:
    # A clipboard program of our own, first on PATH: /copy must hand it the reply.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    clip = bin_dir / "xclip"
    clip.write_text(f"#!/bin/sh\ncat > {tmp_path / 'clipboard'}\n")
    clip.chmod(0o755)
    runner.env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    server.script(Reply.text("The **answer** is 42."), Reply.text("A new start."))

    result = chat(runner, server, agents_file, store, "question\n/usage\n/cp\n/clear\nhello\n")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "clipboard").read_text() == "The **answer** is 42."
    assert "Copied the last reply (21 characters) with xclip." in result.output
    used = re.search(r"Tokens in this chat: (\d+) in, (\d+) out, (\d+) in all\.", result.output)
    assert used, result.output
    assert int(used[1]) > 0 and int(used[3]) == int(used[1]) + int(used[2])
    ids = re.findall(r"New conversation (\S+) with assistant", result.output)
    assert len(ids) == 2 and ids[0] != ids[1]
    assert items(store, ids[0])[-1]["content"] == "The **answer** is 42."
    assert items(store, ids[1])[-1]["content"] == "A new start."
    assert len([m for m in server.requests[-1].messages if m["role"] == "user"]) == 1  # /clear forgot the first


def test_continue_latest_system_override_and_no_stream(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.text("old one"), Reply.text("new one"), Reply.text("continued"))
    older = chat(runner, server, agents_file, store, "first conversation\n")
    newer = chat(runner, server, agents_file, store, "second conversation\n", "-s", "Answer in French.")
    assert older.exit_code == newer.exit_code == 0
    assert server.requests[1].messages[0] == {"role": "system", "content": "Answer in French."}

    result = chat(runner, server, agents_file, store, "and now?\n", "-c", "--no-stream")

    assert result.exit_code == 0, result.output
    assert f"Continuing conversation {conversation_id(newer.output)}" in result.output
    assert "assistant: continued" in result.output
    assert server.requests[-1].stream is False
    sent = [m["content"] for m in server.requests[-1].messages if m["role"] == "user"]
    assert sent == ["second conversation", "and now?"]


def test_a_first_message_that_fails_leaves_no_conversation(runner: CliRunner, agents_file: Path, store: Path) -> None:
    with TestServer(api_key="right") as server:
        args = ["chat", f"{agents_file}:assistant", "--base-url", server.base_url, "--api-key", "wrong"]
        result = runner.invoke(cli, [*args, "--store", str(store)], input="hello\n")

    assert_one_line_error(result, "HTTP 401", "so the conversation was not stored")
    listing = runner.invoke(cli, ["sessions", "list", "--store", str(store), "--json"])
    assert json.loads(listing.output) == []


def test_a_server_message_with_newlines_stays_one_error_line(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.error(400, "bad request:\n  messages[1] is too long\n  (limit 10)"))
    result = chat(runner, server, agents_file, store, "x\n")
    assert_one_line_error(result, "HTTP 400", "bad request: messages[1] is too long (limit 10)")


def test_debug_after_the_subcommand(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(cli, ["chat", f"{broken}:agent", "--debug", "--base-url", "http://x/v1"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot import")
    listing = runner.invoke(cli, ["sessions", "list", "--store", "mysql://db", "--debug"])
    assert "Traceback" in listing.stderr and "unknown store kind" in listing.stderr


def test_an_unknown_store_is_reported_before_the_missing_key(runner: CliRunner, agents_file: Path) -> None:
    result = runner.invoke(cli, ["chat", f"{agents_file}:assistant", "--store", "mysql://db/chats"])
    assert_one_line_error(result, "unknown store kind 'mysql'")
    result = runner.invoke(cli, ["run", f"{agents_file}:assistant", "hi", "--store", "mysql://db/chats"])
    assert_one_line_error(result, "unknown store kind 'mysql'")


def test_sessions_list_json_and_limit(runner: CliRunner, server: TestServer, agents_file: Path, store: Path) -> None:
    server.responder = lambda body: Reply.text("ok")
    for n in range(3):
        assert chat(runner, server, agents_file, store, f"question {n}\n").exit_code == 0
        os.utime(next((store / "assistant").glob("*.jsonl")), None)  # keep mtimes apart on coarse clocks

    listed = runner.invoke(cli, ["sessions", "list", "--store", str(store), "--json", "--limit", "0"])
    rows = json.loads(listed.output)
    assert sorted(r["first_prompt"] for r in rows) == ["question 0", "question 1", "question 2"]
    assert {r["agent"] for r in rows} == {"assistant"} and {r["messages"] for r in rows} == {3}

    limited = runner.invoke(cli, ["sessions", "list", "--store", str(store), "--limit", "2"])
    assert limited.exit_code == 0
    assert len(limited.stdout.splitlines()) == 3  # the header and two rows
    assert "1 older not shown (--limit 0 lists all)" in limited.stderr


# -- timestep run ---------------------------------------------------------------------------------------


def run(runner: CliRunner, server: TestServer, agents_file: Path, store: Path, *args: str, stdin: str = "") -> Result:
    base = ["run", f"{agents_file}:assistant", "--base-url", server.base_url, "--store", str(store)]
    return runner.invoke(cli, [*base, *args], input=stdin)


def test_run_prints_the_reply_alone_on_stdout(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Lima"})), Reply.text("Sunny in Lima."))

    result = run(runner, server, agents_file, store, "Summarise:", stdin="a long text\nover two lines\n")

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Sunny in Lima.\n"
    assert '-> get_weather(city="Lima")' in result.stderr
    assert server.requests[0].messages[-1]["content"] == "Summarise:\n\na long text\nover two lines"


def test_run_continues_with_c(runner: CliRunner, server: TestServer, agents_file: Path, store: Path) -> None:
    server.script(Reply.text("I will remember 7."), Reply.text("It was 7."))
    assert run(runner, server, agents_file, store, "remember 7").exit_code == 0
    result = run(runner, server, agents_file, store, "-c", stdin="what was it?\n")
    assert result.stdout == "It was 7.\n"
    assert [m["content"] for m in server.requests[-1].messages if m["role"] == "user"] == ["remember 7", "what was it?"]


def test_run_without_a_terminal_pauses_and_says_how_to_resume(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "a.txt"})))

    paused = run(runner, server, agents_file, store, stdin="delete a.txt\n")

    assert paused.exit_code == 3, paused.stderr
    assert paused.stdout == ""
    assert '|| delete_file(path="a.txt") waits for approval' in paused.stderr
    assert paused.stderr.count("waits for approval") == 1, paused.stderr  # the library's note for programs stays out
    assert "run_agent(" not in paused.stderr
    hint = paused.stderr.split("Decide with: ", 1)[1].strip()
    server.script(Reply.text("Deleted."))
    resumed = runner.invoke(cli, shlex.split(hint)[1:], input="y\n")
    assert resumed.exit_code == 0, resumed.output
    assert "Really delete a.txt?" in resumed.output and "<- deleted a.txt" in resumed.output


def test_run_failure_is_one_error_line_and_leaves_no_conversation(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    server.script(Reply.error(400, "no such model"))
    result = run(runner, server, agents_file, store, "hi")
    assert_one_line_error(result, "HTTP 400", "no such model", "not stored")
    assert result.stdout == ""
    assert json.loads(runner.invoke(cli, ["sessions", "list", "--store", str(store), "--json"]).output) == []
    assert_one_line_error(run(runner, server, agents_file, store), "no prompt")


# -- offline ------------------------------------------------------------------------------------------


def test_chat_offline_needs_no_key_and_calls_a_named_tool(runner: CliRunner, agents_file: Path, store: Path) -> None:
    args = ["chat", f"{agents_file}:assistant", "--offline", "--store", str(store)]
    result = runner.invoke(cli, args, input="hello there\nplease get_weather for Oslo\n")

    assert result.exit_code == 0, result.output
    assert "built-in offline model" in result.output
    assert "You said: hello there" in result.output
    assert '-> get_weather(city="Oslo")' in result.output
    assert "The tool answered: Oslo: sunny, 21C" in result.output
    assert "--offline" in resume_args(result.output)


def test_the_offline_server_answers_without_a_responder(agents_file: Path, store: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "timestep.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split("listening on ", 1)[1].strip()
        result = CliRunner().invoke(
            cli, ["chat", f"{agents_file}:assistant", "--base-url", url, "--store", str(store)], input="hi\n"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    assert result.exit_code == 0, result.output
    assert "assistant: *This is the built-in offline model" in result.output
    assert "You said: hi" in result.output


# -- the README ------------------------------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
PROMPTS = ("you> ", "    approve? [y/n] ", "    reason, for the model (Enter to skip): ")


def test_the_readme_transcript_matches_a_real_run(server: TestServer, tmp_path: Path) -> None:
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    agents = re.search(r"```python\n# file: agents.py\n(.*?)```", section, re.S)
    transcript = re.search(r"```text\n(.*?)```", section, re.S)
    assert agents and transcript
    (tmp_path / "agents.py").write_text(agents[1])
    chat_part, list_part = transcript[1].split("\n$ timestep sessions list\n")
    command, *shown = chat_part.strip().splitlines()
    # The person's side is what follows each prompt; the model's is each call and each reply shown.
    typed = [line[len(p) :] for line in shown for p in PROMPTS if line.startswith(p)]
    for line in shown:
        if call := re.fullmatch(r"  -> (\w+)\((\w+)=(\".*\")\)", line):
            server.script(Reply.tool_calls(ToolCall(call[1], {call[2]: json.loads(call[3])})))
        elif line.startswith("Assistant: "):
            server.script(Reply.text(line.removeprefix("Assistant: ")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TIMESTEP_"))}
    env.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-readme")

    def normal(text: str) -> list[str]:
        """Conversation ids and dates differ from run to run: everything else must match."""
        text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{4}", "ID", text)
        return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "DATE", text).splitlines()

    def timestep(words: str, stdin: str = "") -> list[str]:
        exe = Path(sys.executable).parent / "timestep"
        done = subprocess.run(
            [exe, *shlex.split(words)], input=stdin, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return normal(done.stdout)

    assert len(typed) == 5 and len(server.requests) == 0
    session = "\n".join(typed) + "\n"
    assert timestep(command.removeprefix("$ timestep "), session) == normal("\n".join(shown))
    assert timestep("sessions list") == normal(list_part.strip())


def test_the_readme_agents_chat_offline_as_the_transcript_shows(tmp_path: Path, store: Path) -> None:
    """No key, no server: the built-in offline model calls the tool for both questions of the transcript."""
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    agents = re.search(r"```python\n# file: agents.py\n(.*?)```", section, re.S)
    assert agents
    (tmp_path / "agents.py").write_text(agents[1])
    args = ["chat", f"{tmp_path / 'agents.py'}:assistant", "--offline", "--store", str(store)]
    result = CliRunner().invoke(cli, args, input="Weather in Lima?\nAnd in Oslo?\nn\nnot needed after all\n")
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.output.splitlines()]
    assert '  -> get_weather(city="Lima")' in lines and "    <- Sunny in Lima" in lines
    assert '    || approval needed: get_weather(city="Oslo") (Assistant)' in lines
    assert "    x declined: not needed after all" in lines
    assert "Sunny in Oslo" not in result.output


def test_run_gives_the_agent_an_mcp_servers_tools(
    runner: CliRunner, server: TestServer, agents_file: Path, store: Path
) -> None:
    notes = Path(__file__).resolve().parent / "mcp_notes_server.py"
    spec = shlex.join([sys.executable, str(notes)])
    server.script(Reply.tool_calls(ToolCall("add", {"a": 2, "b": 3})), Reply.text("2 + 3 = 5"))

    result = run(runner, server, agents_file, store, "add 2 and 3", "--mcp", spec)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "2 + 3 = 5\n"
    assert "add" in [t["function"]["name"] for t in server.requests[0].body["tools"]]
    assert server.requests[1].messages[-1]["content"] == "5"  # the server's own answer reached the model


def test_run_blocked_by_an_answer_guardrail_exits_4_with_the_refusal(
    runner: CliRunner, server: TestServer, tmp_path: Path, store: Path
) -> None:
    agents = tmp_path / "guarded_agents.py"
    agents.write_text(
        "from timestep import Agent, AnswerGuardrail, GuardrailResult\n"
        "def no_codes(text):\n"
        "    return GuardrailResult.block('it has a code') if 'code' in text else None\n"
        "bot = Agent(name='bot', model='m', guardrails=[AnswerGuardrail(no_codes)])\n"
    )
    server.script(Reply.text("The code is 1234."))
    args = ["run", f"{agents}:bot", "hi", "--base-url", server.base_url, "--store", str(store)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 4, result.stderr
    assert result.stdout == "I can't give that answer: it has a code.\n"
    assert "answer blocked by guardrail no_codes: it has a code" in result.stderr
    assert "1234" not in result.stdout + result.stderr
