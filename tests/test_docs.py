"""Every Python snippet in the README runs, unchanged, against the test server (one process each)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timestep.testing import Reply, TestServer, ToolCall

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def arguments_for(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Plausible arguments read off the user's words: a city after 'in', numbers, a name after 'to'."""
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    city = re.findall(r"in (\w+)", text)
    to = re.findall(r"to (\w+)", text)
    args: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name == "city":
            args[name] = city[-1] if city else "Oslo"
        elif name == "to":
            args[name] = to[-1] if to else "someone"
        elif prop.get("type") == "integer":
            args[name] = numbers.pop(0) if numbers else 1
        elif name in schema.get("required", []) or (prop.get("type") == "string" and "default" not in prop):
            args[name] = text
    return args


def readme_model(body: dict[str, Any]) -> Reply:
    last = body["messages"][-1]
    if last["role"] == "tool":
        return Reply.text(f"Done: {last['content']}")
    tools = body.get("tools") or []
    if not tools:
        return Reply.text(f"You said: {last['content']}")
    fn = tools[0]["function"]
    return Reply.tool_calls(ToolCall(fn["name"], arguments_for(fn["parameters"], str(last["content"]))))


def test_every_readme_block_is_checked() -> None:
    """No code sample can slip past the runner: every fence is python (run), bash or text (shown)."""
    fences = re.findall(r"^```(.*)$", README.read_text(), flags=re.M)
    openings = fences[::2]
    assert len(fences) % 2 == 0 and all(f == "" for f in fences[1::2]), "an unclosed or odd code fence"
    assert set(openings) <= {"python", "bash", "text"}, f"unexpected fence languages: {set(openings)}"
    assert openings.count("python") == len(BLOCKS) >= 8
    for n, block in enumerate(BLOCKS):
        compile(block, f"README block {n}", "exec")  # a syntax error names its block
    names = [m.group(1) for b in BLOCKS if (m := re.match(r"# file: (\S+)\n", b))]
    assert len(names) == len(set(names)), "two README blocks write the same file"


def test_readme_snippets_run_unchanged(server: TestServer, tmp_path: Path) -> None:
    server.responder = readme_model
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-readme"}
    outputs = {}
    for n, block in enumerate(BLOCKS):
        named = re.match(r"# file: (\S+)\n", block)
        path = tmp_path / (named.group(1) if named else f"snippet_{n}.py")
        path.write_text(block)
        proc = subprocess.run(
            [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, f"README block {n} ({path.name}) failed:\n{block}\n{proc.stderr}"
        outputs[path.name] = proc.stdout
    assert "You said: Hello!" in outputs["snippet_0.py"]
    assert outputs["hitl_start.py"].startswith("interrupted\n")
    assert outputs["hitl_resume.py"].startswith("completed Done: sent 300 to Ada")
    assert any("get_weather {'city': 'Oslo'} -> Sunny and 21°C in Oslo" in out for out in outputs.values())
    handoff = next(out for out in outputs.values() if "Sunny in Lima" in out).splitlines()
    assert handoff[0].startswith("completed") and handoff[1] == "interrupted" and "Sunny in Oslo" in handoff[2]


@pytest.mark.parametrize("question", ["What's the weather in Oslo?"])
def test_arguments_helper_reads_the_city(question: str) -> None:
    assert arguments_for({"properties": {"city": {"type": "string"}}}, question) == {"city": "Oslo"}
