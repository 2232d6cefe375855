"""The original Timestep's promises: its complete example, its event shapes and its ways of running.

A user coming from the original project runs its root README's Quick start first. Here it runs
verbatim (it is in our README too), as a separate process, against the test server answering the
way a model would, and so does a consumer written for the original event shapes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from timestep import (
    Agent,
    FileSession,
    GuardrailResult,
    ModelClient,
    OutputGuardrail,
    pending_interruptions,
    run_agent,
)
from timestep import events as events_module
from timestep.testing import Reply, TestServer, ToolCall

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# The original project's README: beside this checkout when there is one, else the copy kept with the tests.
SEED = (
    next(
        (
            p
            for p in (ROOT.parent / "shared" / "seed", ROOT / "tests" / "seed")
            if (p / "timestep-root-README.md").exists()
        ),
        ROOT / "tests" / "seed",
    )
    / "timestep-root-README.md"
)
QUICK_START = next(b for b in BLOCKS if "city_approval_guardrail" in b)
ORIGINAL_EVENTS = next(b for b in BLOCKS if "original-events" in b)


def seed_model(body: dict[str, Any]) -> Reply:
    """Answers as a model following the example's instructions would: transfer, look up, report."""
    last = body["messages"][-1]
    names = [t["function"]["name"] for t in body.get("tools") or []]
    if last["role"] == "tool":
        return Reply.text(f"Here is what I found: {last['content']}")
    text = str(last["content"])
    cities = re.findall(r"in ([A-Z][\w ]*?)\?", text)
    if "transfer_to_weather_assistant" in names:
        return Reply.tool_calls(ToolCall("transfer_to_weather_assistant", {"message": text}))
    if "get_weather" in names:
        return Reply.tool_calls(ToolCall("get_weather", {"city": cities[-1] if cities else "Oslo"}))
    return Reply.text("I only know about the weather.")


def run_script(
    source: str, folder: Path, server: TestServer, name: str = "main.py"
) -> subprocess.CompletedProcess[str]:
    script = folder / name
    script.write_text(source)
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-seed"}
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_readme_holds_the_original_example_verbatim() -> None:
    if not SEED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the original README is expected at {SEED} on CI")
        pytest.skip(f"the original README is not beside this checkout ({SEED})")
    original = re.findall(r"```python\n(.*?)```", SEED.read_text(), flags=re.S)[0]
    assert original == QUICK_START


def test_quick_start_berkeley_pauses_says_how_to_resume_and_resumes(server: TestServer, tmp_path: Path) -> None:
    server.responder = seed_model
    proc = run_script(QUICK_START, tmp_path, server, "quick_start.py")
    assert proc.returncode == 0, proc.stderr
    assert "Messages:" in proc.stdout and "Tool calls:" in proc.stdout
    # The person is told, on stderr, which call waits, for which agent, its prompt, and how to answer.
    found = re.search(r"resume with: run_agent\(agent, \[\], session, approvals=\{'(call_\w+)': True\}\)", proc.stderr)
    assert found, proc.stderr
    assert "Weather Assistant's call get_weather" in proc.stderr and '"city": "Berkeley"' in proc.stderr
    assert "Approval required to get weather for berkeley. Approve? (y/n):" in proc.stderr
    call_id = found.group(1)

    resume = (
        "import asyncio\n"
        "from quick_start import FileSession, assistant, run_agent\n"
        "async def main():\n"
        "    session = FileSession(assistant.name, 'test-conversation', assistant.instructions)\n"
        f"    result = await run_agent(assistant, [], session, approvals={{{call_id!r}: True}})\n"
        "    print(result['status'])\n"
        "    print(result['final_output'])\n"
        "asyncio.run(main())\n"
    )
    done = run_script(resume, tmp_path, server, "resume.py")
    assert done.returncode == 0, done.stderr
    status, final = done.stdout.splitlines()[:2]
    assert status == "completed"
    assert "The weather in Berkeley is sunny and 72°F" in final
    assert "resume with" not in done.stderr


PYTHON_SEED = SEED.with_name("timestep-python-README.md")


def _python_seed_block(heading: str) -> str:
    text = PYTHON_SEED.read_text().split(f"\n## {heading}\n", 1)[-1].split("\n### Guardrails\n", 1)
    source = text[0] if heading != "API Reference" else text[1]
    block = re.search(r"```python\n(.*?)```", source, flags=re.S)
    assert block, heading
    return block[1]


def test_the_python_seed_quick_start_runs_verbatim(server: TestServer, tmp_path: Path) -> None:
    server.script(Reply.text("Hello! How can I help?"))
    proc = run_script(_python_seed_block("Quick start"), tmp_path, server, "hello.py")
    assert proc.returncode == 0, proc.stderr
    assert "{'role': 'user', 'content': 'Hello!'}" in proc.stdout
    assert "{'role': 'assistant', 'content': 'Hello! How can I help?'}" in proc.stdout
    assert (tmp_path / "conversations" / "Assistant" / "my-conversation.jsonl").exists()


def test_the_python_seed_guardrails_block_runs_verbatim(server: TestServer, tmp_path: Path) -> None:
    """The seed's guardrail signatures, as written there, build guardrails that a run then calls."""
    block = _python_seed_block("API Reference")
    assert 'GuardrailInterrupt("Need approval", tool_name, args)' in block
    program = (
        "import asyncio\n" + block + "\nsome_condition = True\n"
        "from timestep import Agent, FileSession, run_agent\n"
        "def lookup(args: dict) -> dict:\n"
        "    return {'result': args.get('city')}\n"
        "agent = Agent(name='A', model='m', instructions='i', tools=[lookup],\n"
        "              guardrails=[input_guardrail, output_guardrail])\n"
        "async def main():\n"
        "    result = await run_agent(agent, [{'role': 'user', 'content': 'q'}], FileSession('A', 'g'))\n"
        "    print(result['status'], result['interruptions'][0]['prompt'])\n"
        "asyncio.run(main())\n"
    )
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})))
    proc = run_script(program, tmp_path, server, "guardrails.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted Need approval"


def test_quick_start_lima_completes_with_the_weather(server: TestServer, tmp_path: Path) -> None:
    server.responder = seed_model
    proc = run_script(QUICK_START.replace("Berkeley?", "Lima?"), tmp_path, server)
    assert proc.returncode == 0, proc.stderr
    assert "resume with" not in proc.stderr
    assert "Blocked by guardrail" not in proc.stdout
    messages_line = next(line for line in proc.stdout.splitlines() if line.startswith("Messages:"))
    assert "'role': 'assistant', 'content': 'Here is what I found:" in messages_line
    assert messages_line.rstrip("]}").endswith("The weather in Lima is sunny and 72°F\"}'")


async def test_output_guardrails_get_what_the_tool_returned(
    server: TestServer, client: ModelClient, store: Path
) -> None:
    seen: list[tuple[str, Any]] = []

    def record(tool_name: str, args: dict[str, Any], result: Any) -> GuardrailResult:
        seen.append((tool_name, result))
        return GuardrailResult.proceed()

    async def as_dict(args: dict[str, Any]) -> dict[str, Any]:
        return {"result": "a dict"}

    async def as_text(city: str) -> str:
        return f"text for {city}"

    helper = Agent(name="Helper", model="m", tools=[as_dict, as_text])
    boss = Agent(name="Boss", model="m", handoffs=[helper], guardrails=[OutputGuardrail(record)])
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "go"})),
        Reply.tool_calls(ToolCall("as_dict", {}), ToolCall("as_text", {"city": "Oslo"})),
        Reply.text("helper's answer"),
        Reply.text("boss's answer"),
    )
    result = await run_agent(
        boss, [{"role": "user", "content": "hi"}], FileSession("Boss", "c", storage_dir=store), client=client
    )
    assert result["final_output"] == "boss's answer"
    assert seen == [
        ("as_dict", {"result": "a dict"}),
        ("as_text", "text for Oslo"),
        ("transfer_to_helper", {"result": "helper's answer"}),
    ]
    # The models still read text: JSON for the dict, the delegate's answer as it is.
    sent = [r.messages[-1] for r in server.requests if r.messages[-1]["role"] == "tool"]
    assert sent[-1]["content"] == "helper's answer"
    assert any(
        m["content"] == '{"result": "a dict"}' for r in server.requests for m in r.messages if m["role"] == "tool"
    )


def test_a_consumer_of_the_original_event_shapes_runs(server: TestServer, tmp_path: Path) -> None:
    server.responder = seed_model
    proc = run_script(ORIGINAL_EVENTS, tmp_path, server)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[calling get_weather with {'city': 'Lima'}]" in out
    assert '[get_weather returned {"result": "Sunny in Lima"}]' in out
    assert 'final: Here is what I found: {"result": "Sunny in Lima"}' in out
    # The streamed pieces printed through ``content`` add up to the final answer.
    streamed = out.split("]\n", 2)[-1].split("\nfinal:")[0]
    assert streamed == 'Here is what I found: {"result": "Sunny in Lima"}'


async def test_old_and_new_field_names_agree(server: TestServer, client: ModelClient, store: Path) -> None:
    async def boom(city: str) -> str:
        raise RuntimeError("no")

    async def fine(city: str) -> str:
        return "ok"

    agent = Agent(name="A", model="m", tools=[boom, fine])
    server.script(
        Reply.tool_calls(ToolCall("boom", {"city": "X"}), ToolCall("fine", {"city": "Y"})), Reply.text("the end")
    )
    events = [
        e
        async for e in run_agent(
            agent,
            [{"role": "user", "content": "q"}],
            FileSession("A", "c", storage_dir=store),
            True,
            None,
            client=client,
        )
    ]
    tool_events = [e for e in events if e["type"] in ("tool_call", "tool_result", "tool_error")]
    assert {e["type"] for e in tool_events} == {"tool_call", "tool_result", "tool_error"}
    for e in tool_events:
        assert e["tool"] == e["name"] and e["args"] == e["arguments"]
    for e in events:
        if e["type"] == "content_delta":
            assert e["content"] == e["delta"]
        if e["type"] == "message":
            assert e["content"] == e["message"].get("content")
    assert "".join(e["content"] for e in events if e["type"] == "content_delta") == "the end"


def test_asyncio_run_accepts_run_agent_directly(tmp_path: Path) -> None:
    agent = Agent(name="A", model="m")
    with TestServer() as server:
        server.script(Reply.text("first"), Reply.text("second"))
        client = ModelClient(base_url=server.base_url, api_key="k")
        result = asyncio.run(
            run_agent(
                agent, [{"role": "user", "content": "x"}], FileSession("A", "c", storage_dir=tmp_path), client=client
            )
        )
        assert result["status"] == "completed" and result["final_output"] == "first"

        async def as_task() -> Any:
            session = FileSession("A", "d", storage_dir=tmp_path)
            return await asyncio.create_task(
                run_agent(agent, [{"role": "user", "content": "y"}], session, client=client)
            )

        assert asyncio.run(as_task())["final_output"] == "second"


async def test_a_handle_is_used_once_whichever_way(server: TestServer, client: ModelClient, store: Path) -> None:
    server.script(Reply.text("one"))
    handle = run_agent(
        Agent(name="A", model="m"),
        [{"role": "user", "content": "x"}],
        FileSession("A", "c", storage_dir=store),
        client=client,
    )
    assert (await handle)["final_output"] == "one"
    with pytest.raises(RuntimeError, match="consumed once"):
        [e async for e in handle]
    assert len(server.requests) == 1


def test_the_readme_event_table_is_the_events_module() -> None:
    section = README[README.index("## Events") : README.index("## Result")]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", section, flags=re.M)
    table = {kind: set(re.findall(r"`(\w+)`", fields)) for kind, fields in rows}
    declared = {}
    for cls in typing.get_args(events_module.Event):
        hints = typing.get_type_hints(cls)
        (kind,) = typing.get_args(hints["type"])
        declared[kind] = set(hints) - {"type", "agent", "depth"}
    assert table == declared


# -- the terminal approval handler, on a real stdin ---------------------------------------------------

HANDLER_APP = """
import asyncio, json, sys
from timestep import Agent, FileSession, GuardrailInterrupt, InputGuardrail, ModelClient, run_agent
from timestep import terminal_approval_handler

async def transfer(amount: int) -> str:
    return f"sent {amount}"

def ask(tool_name, args):
    raise GuardrailInterrupt(f"Send {args['amount']}? (y/n): ", tool_name, args)

agent = Agent(name="Bank", model="m", tools=[transfer], guardrails=[InputGuardrail(ask)])

async def main():
    client = ModelClient(base_url=sys.argv[1], api_key="k")
    result = await run_agent(agent, [{"role": "user", "content": "send"}], FileSession("Bank", "c"),
                             client=client, approval_handler=terminal_approval_handler)
    call = result["tool_calls"][0]
    print(json.dumps({"status": result["status"], "result": call["result"], "error": call["error"],
                      "arguments": call["arguments"]}))

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("typed", "outcome"),
    [
        ("y\n", {"result": "sent 500", "arguments": {"amount": 500}}),
        ("maybe\nyes\n", {"result": "sent 500", "arguments": {"amount": 500}}),
        ("n\nnot today\n", {"error": "declined by a person", "told": "A person declined this tool call: not today"}),
        ("n: too much\n", {"error": "declined by a person", "told": "A person declined this tool call: too much"}),
        ("n\n\n", {"error": "declined by a person", "told": "A person declined this tool call."}),
        ('e\n{"amount": 50}\n', {"result": "sent 50", "arguments": {"amount": 50}}),
        ("", {"error": "declined by a person", "told": "no one was there to approve it"}),
    ],
)
def test_terminal_approval_handler(server: TestServer, tmp_path: Path, typed: str, outcome: dict[str, Any]) -> None:
    import json

    server.script(Reply.tool_calls(ToolCall("transfer", {"amount": 500})), Reply.text("done"))
    (tmp_path / "app.py").write_text(HANDLER_APP)
    proc = subprocess.run(
        [sys.executable, "app.py", server.base_url],
        cwd=tmp_path,
        input=typed,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'Bank wants to call transfer({"amount": 500})' in proc.stderr
    assert "Send 500? (y/n): " in proc.stderr
    got = json.loads(proc.stdout)
    assert got["status"] == "completed"
    if "result" in outcome:
        assert got["result"] == outcome["result"] and got["arguments"] == outcome["arguments"]
    else:
        assert got["error"] == outcome["error"]
        told = server.requests[-1].messages[-1]
        assert told["role"] == "tool" and outcome["told"] in told["content"]


async def test_pending_interruptions_match_the_logged_call(
    server: TestServer, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from timestep import GuardrailInterrupt, InputGuardrail

    async def lookup(city: str) -> str:
        return city

    def ask(tool_name: str, args: dict[str, Any]) -> None:
        raise GuardrailInterrupt("Look it up?", tool_name, args)

    agent = Agent(name="A", model="m", tools=[lookup], guardrails=[InputGuardrail(ask)])
    server.script(Reply.tool_calls(ToolCall("lookup", {"city": "Oslo"})))
    session = FileSession("A", "c", storage_dir=store)
    client = ModelClient(base_url=server.base_url, api_key="k")
    with caplog.at_level("WARNING", logger="timestep"):
        result = await run_agent(agent, [{"role": "user", "content": "q"}], session, client=client)
    assert result["status"] == "interrupted"
    (pending,) = await pending_interruptions(agent, session)
    (record,) = [r for r in caplog.records if r.name == "timestep.approvals"]
    assert f"approvals={{{pending.tool_call_id!r}: True}}" in record.getMessage()
