"""``timestep chat`` in a real pseudo-terminal: what a person at a keyboard sees and does.

CliRunner cannot show these: the terminal path (rich output, the spinner, approvals read while the
run waits, Ctrl-C delivered as SIGINT by the terminal) only runs when stdin and stdout are a TTY.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from timestep import FileSession
from timestep.approvals import replay
from timestep.testing import Reply, TestServer, ToolCall

TIMESTEP = str(Path(sys.executable).parent / "timestep")
Spawn = Callable[..., Any]

AGENTS = '''
import asyncio
import time

from timestep import Agent, GuardrailInterrupt, InputGuardrail


def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def stuck_export() -> str:
    """Export everything (a sync tool that hangs)."""
    time.sleep(600)
    return "exported"


async def slow_report() -> str:
    """Build a report (slowly)."""
    await asyncio.sleep(60)
    return "report"


def confirm_deletes(tool_name, args):
    if tool_name == "delete_file":
        raise GuardrailInterrupt(f"Really delete {args['path']}?")


assistant = Agent(
    name="assistant",
    model="test-model",
    instructions="Be brief.",
    tools=[delete_file, slow_report, stuck_export],
    guardrails=[InputGuardrail(confirm_deletes)],
)
'''


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.py"
    path.write_text(AGENTS)
    return path


@pytest.fixture
def spawn(server: TestServer, agents_file: Path, tmp_path: Path) -> Iterator[Spawn]:
    children: list[Any] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TIMESTEP_"))}
    # The prompt history goes to this test's own data folder, never the user's.
    env.update(TERM="xterm", COLUMNS="160", LINES="40", XDG_DATA_HOME=str(tmp_path / "data"))

    def start(*extra: str, command: str = "chat") -> Any:
        args = [command, f"{agents_file}:assistant", "--base-url", server.base_url, "--api-key", "test"]
        child = pexpect.spawn(
            TIMESTEP,
            [*args, "--store", str(tmp_path / "store"), *extra],
            env=env,
            encoding="utf-8",
            timeout=60,  # generous: the machine may be busy
            dimensions=(40, 160),
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def wait_for_requests(server: TestServer, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(server.requests) < count:
        assert time.monotonic() < deadline, "the chat never called the model"
        time.sleep(0.02)


def test_chat_in_a_terminal(spawn: Spawn, server: TestServer, tmp_path: Path) -> None:
    child = spawn()
    child.expect(r"New conversation (\S+) with assistant")
    conversation = child.match.group(1)
    child.expect("you>")

    # A streamed reply.
    server.script(Reply.text("Hello there, streamed one word at a time."))
    child.sendline("hello")
    child.expect("assistant:")
    child.expect("Hello there, streamed one word at a time.")
    child.expect("you>")

    # An approval typed at the prompt while the run waits.
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "a.txt"})), Reply.text("Deleted a.txt."))
    child.sendline("delete a.txt")
    child.expect("Really delete a.txt?")
    child.expect(r"approve\? \[y/n\]")
    child.sendline("y")
    child.expect("approved")
    child.expect("deleted a.txt")
    child.expect("Deleted a.txt.")
    child.expect("you>")

    # Ctrl-C while waiting for the model's reply cancels that turn only.
    before = len(server.requests)
    server.script(Reply.text("This reply comes too late.", delay=5))
    child.sendline("take your time")
    wait_for_requests(server, before + 1)
    child.sendintr()
    child.expect("reply cancelled")
    child.expect("you>")
    server.script(Reply.text("Back again."))
    child.sendline("are you there?")
    child.expect("Back again.")
    child.expect("you>")
    sent = [m.get("content") for m in server.requests[-1].messages if m["role"] == "user"]
    assert sent[-2:] == ["take your time", "are you there?"]

    # Ctrl-C while a tool runs: the open call is answered, so the next turn is valid.
    before = len(server.requests)
    server.script(Reply.tool_calls(ToolCall("slow_report", {}, id="call_slow")))
    child.sendline("build the report")
    child.expect("slow_report")
    wait_for_requests(server, before + 1)
    child.sendintr()
    child.expect("1 unfinished tool call marked cancelled")
    child.expect("you>")
    server.script(Reply.text("Skipped the report."))
    child.sendline("never mind")
    child.expect("Skipped the report.")
    child.expect("you>")
    messages = server.requests[-1].messages
    answered = next(m for m in messages if m.get("tool_call_id") == "call_slow")
    assert "Cancelled by the person" in answered["content"]

    child.sendline("/exit")
    child.expect(f"--conversation {conversation}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    items = asyncio.run(FileSession("assistant", conversation, storage_dir=tmp_path / "store").get_items())
    assert replay(items).pending == []
    assert items[-1]["content"] == "Skipped the report."

    # A second invocation continues the same conversation.
    again = spawn("--conversation", conversation)
    again.expect(f"Continuing conversation {conversation} with assistant")
    again.expect("Last reply: Skipped the report.")
    again.expect("you>")
    server.script(Reply.text("I remember you said hello."))
    again.sendline("do you remember me?")
    again.expect("I remember you said hello.")
    again.expect("you>")
    assert [m.get("content") for m in server.requests[-1].messages][:2] == ["Be brief.", "hello"]
    again.sendeof()
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0


def test_ctrl_c_at_the_prompt_does_not_leave(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    child.sendintr()
    child.expect("/exit or Ctrl-D leaves")
    child.expect("you>")
    server.script(Reply.text("Still here."))
    child.sendline("hi")
    child.expect("Still here.")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_failed_turn_is_reported_and_the_chat_goes_on(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(Reply.text("First answer."))
    child.sendline("one")
    child.expect("First answer.")
    child.expect("you>")
    server.script(Reply.error(400, "this request is too long"))
    child.sendline("two")
    child.expect("error: HTTP 400")
    child.expect("this request is too long")
    child.expect("you>")
    server.script(Reply.text("Third answer."))
    child.sendline("three")
    child.expect("Third answer.")
    child.expect("you>")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_two_calls_needing_approval_are_asked_one_after_the_other(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(
        Reply.tool_calls(ToolCall("delete_file", {"path": "one.txt"}), ToolCall("delete_file", {"path": "two.txt"})),
        Reply.text("Kept two.txt."),
    )
    child.sendline("delete both")
    child.expect("Really delete one.txt?")
    child.expect(r"approve\? \[y/n\]")
    child.sendline("y")
    child.expect("Really delete two.txt?")
    child.expect(r"approve\? \[y/n\]")
    child.sendline("n keep this one")
    child.expect("Kept two.txt.")
    child.expect("you>")
    results = [m["content"] for m in server.requests[-1].messages if m["role"] == "tool"]
    assert results[0] == "deleted one.txt"
    assert "keep this one" in results[1]
    leave(child)


def leave(child: Any) -> None:
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def user_messages(server: TestServer) -> list[Any]:
    return [m["content"] for m in server.requests[-1].messages if m["role"] == "user"]


def test_a_paste_of_several_lines_is_one_message(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(Reply.text("One message received."))
    # What a terminal sends for a paste while bracketed paste is on, then Enter.
    child.send("\x1b[200~first line\nsecond line\nthird line\x1b[201~")
    child.send("\r")
    child.expect("One message received.")
    child.expect("you>")
    assert user_messages(server) == ["first line\nsecond line\nthird line"]
    assert len(server.requests) == 1

    server.script(Reply.text("Two lines typed."))
    child.send("typed one")
    child.send("\x1b\r")  # Alt-Enter (Esc, Enter): a new line, not the end of the message
    child.send("typed two\r")
    child.expect("Two lines typed.")
    assert user_messages(server)[-1] == "typed one\ntyped two"
    leave(child)


def test_a_reply_is_rendered_as_markdown(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(Reply.text("Two options:\n\n- **first** choice\n- second choice\n\nDone."))
    child.sendline("options?")
    child.expect("assistant:")
    child.expect("• ")  # the list's bullet, drawn by the markdown renderer
    child.expect("second choice")
    child.expect("Done.")
    child.expect("you>")
    shown = child.before
    assert "- second choice" not in shown  # the markdown source is not what is shown
    leave(child)


def test_prompt_history_is_kept_across_chats(spawn: Spawn, server: TestServer, tmp_path: Path) -> None:
    first = spawn()
    first.expect("you>")
    server.script(Reply.text("Noted."))
    first.sendline("remember the blue door")
    first.expect("Noted.")
    leave(first)
    assert "remember the blue door" in (tmp_path / "data" / "timestep" / "chat-history").read_text()

    second = spawn()
    second.expect("you>")
    server.script(Reply.text("Recalled."))
    second.send("\x1b[A")  # Up: the previous chat's message comes back
    second.send("\r")
    second.expect("Recalled.")
    assert user_messages(server) == ["remember the blue door"]
    leave(second)


def test_slash_model_and_continue_latest(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect(r"New conversation (\S+) with assistant")
    conversation = child.match.group(1)
    child.expect("you>")
    child.sendline("/model other-model")
    child.expect(r"Model: other-model \(for assistant\)\.")
    server.script(Reply.text("Answered by the other model."))
    child.sendline("hello")
    child.expect("Answered by the other model.")
    child.sendline("/nope")
    child.expect("error: unknown command /nope")
    leave(child)
    assert [r.body["model"] for r in server.requests] == ["other-model"]

    again = spawn("-c")
    again.expect(f"Continuing conversation {conversation} with assistant \\(3 messages\\)")
    again.expect("you>")
    server.script(Reply.text("Still here."))
    again.sendline("and again")
    again.expect("Still here.")
    assert user_messages(server) == ["hello", "and again"]
    leave(again)


def test_a_bad_request_first_goes_on_and_a_rejected_key_ends(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(Reply.error(400, "this request is too long"))
    child.sendline("a very long message")
    child.expect("error: HTTP 400")
    child.expect("so the conversation was not stored; your message is in the prompt history")
    child.expect("you>")
    server.script(Reply.text("Short is fine."))
    child.sendline("short")
    child.expect("Short is fine.")
    leave(child)

    rejected = spawn()
    rejected.expect("you>")
    server.script(Reply.error(401, "Incorrect API key provided"))
    rejected.sendline("hello")
    rejected.expect("error: HTTP 401")
    rejected.expect(pexpect.EOF)
    rejected.close()
    assert rejected.exitstatus == 1


def test_leaving_does_not_wait_for_a_cancelled_sync_tool(spawn: Spawn, server: TestServer) -> None:
    child = spawn()
    child.expect("you>")
    server.script(Reply.tool_calls(ToolCall("stuck_export", {})))
    child.sendline("export everything")
    child.expect("stuck_export")
    wait_for_requests(server, 1)
    child.sendintr()
    child.expect("1 unfinished tool call marked cancelled")
    child.expect("you>")
    child.sendline("/exit")
    child.expect("a cancelled tool is still running: leaving without waiting for it")
    child.expect(pexpect.EOF)  # the tool sleeps for ten minutes; this waits one at most
    child.close()
    assert child.exitstatus == 0


def test_run_asks_an_approval_on_the_terminal(spawn: Spawn, server: TestServer) -> None:
    server.script(Reply.tool_calls(ToolCall("delete_file", {"path": "a.txt"})), Reply.text("Deleted a.txt."))
    child = spawn("delete a.txt", command="run")
    child.expect("Really delete a.txt?")
    child.expect(r"approve\? \[y/n\]")
    child.sendline("y")
    child.expect("deleted a.txt")
    child.expect("Deleted a.txt.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert server.requests[-1].messages[-1] == {
        "role": "tool",
        "tool_call_id": server.requests[-1].messages[-2]["tool_calls"][0]["id"],
        "content": "deleted a.txt",
    }


def test_sessions_rm_asks_on_a_terminal(spawn: Spawn, server: TestServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    server.script(Reply.text("Stored."))
    made = spawn("hi", command="run")
    made.expect(pexpect.EOF)
    conversation = FileSession.list_conversations(store)[0].conversation_id

    def rm(answer: str) -> Any:
        child = pexpect.spawn(
            TIMESTEP, ["sessions", "rm", conversation, "--store", str(store)], encoding="utf-8", timeout=60
        )
        child.expect(r"Delete this conversation from folder .*\? \[y/N\]")
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
        return child

    kept = rm("n")
    assert "Nothing deleted." in kept.before and kept.exitstatus == 0
    assert FileSession.list_conversations(store)
    gone = rm("y")
    assert "Deleted 1 conversation." in gone.before and gone.exitstatus == 0
    assert FileSession.list_conversations(store) == []
