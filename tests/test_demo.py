"""``timestep demo`` as a new user runs it: a separate process, no API key, no endpoint, no terminal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from timestep import FileSession
from timestep.cli.app import cli
from timestep.cli.demo import concierge, forecaster, scripted_model
from timestep.testing import TestServer

TIMESTEP = str(Path(sys.executable).parent / "timestep")


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TIMESTEP_STORE")}
    return subprocess.run(
        [TIMESTEP, "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def assert_the_tour(out: str) -> None:
    assert "built-in scripted model" in out
    # a question answered with a tool
    assert '-> get_weather(city="Lisbon")' in out
    assert "<- Lisbon: sunny, 24°C" in out
    assert "concierge: Right now in Lisbon: sunny, 24°C" in out
    # a handoff
    assert ">> concierge hands over to forecaster" in out
    assert '    -> get_forecast(city="Oslo")' in out
    assert "  forecaster: Oslo: rain" in out
    assert "<< back to concierge" in out
    # an approval
    assert 'approval needed: get_weather(city="McMurdo Station")' in out
    assert "paid research-station feed" in out
    # the output guardrail
    assert "!! result blocked by guardrail no_secrets" in out
    assert "sk-demo" not in out


def test_demo_no_declines_the_approval(tmp_path: Path) -> None:
    result = run_demo("--no", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_the_tour(result.stdout)
    assert "approve? [y/n] n  (--no)" in result.stdout
    assert "x declined" in result.stdout
    assert "nothing was charged" in result.stdout
    assert "blowing snow" not in result.stdout
    assert not (tmp_path / "conversations").exists()  # a temporary folder, not the user's


def test_demo_yes_approves(tmp_path: Path) -> None:
    result = run_demo("--yes", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert_the_tour(result.stdout)
    assert "approve? [y/n] y  (--yes)" in result.stdout
    assert "+ approved" in result.stdout
    assert "<- McMurdo Station: blowing snow" in result.stdout


def test_demo_without_a_terminal_or_an_answer_approves_and_says_so(tmp_path: Path) -> None:
    result = run_demo(cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "no terminal to ask and no --yes/--no: approving" in result.stdout
    assert "+ approved" in result.stdout


def test_demo_keeps_its_conversation_with_store(tmp_path: Path) -> None:
    store = tmp_path / "kept"
    result = run_demo("--yes", "--store", str(store), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "timestep sessions show" in x)
    conversation = line.split()[3]
    items = asyncio.run(FileSession("concierge", conversation, storage_dir=store).get_items())
    assert sum(1 for i in items if i.get("role") == "user") == 4
    assert asyncio.run(FileSession("forecaster", f"{conversation}~concierge", storage_dir=store).get_items())


@pytest.mark.parametrize(
    ("text", "tool"),
    [
        ("What's the weather in Paris?", "get_weather"),
        ("will it rain in Tokyo this weekend?", "transfer_to_forecaster"),
        ("is the weather service up?", "weather_service_status"),
    ],
)
def test_the_scripted_model_picks_the_tool(text: str, tool: str) -> None:
    body = {
        "messages": [{"role": "system", "content": concierge.instructions}, {"role": "user", "content": text}],
        "tools": concierge.tool_specs,
    }
    assert [c.name for c in scripted_model(body).tool_call_list] == [tool]


def test_chat_with_the_demo_concierge(tmp_path: Path) -> None:
    """The demo agents are importable, and their scripted model serves ``timestep chat`` as documented."""
    assert forecaster in concierge.handoffs
    with TestServer(responder=scripted_model) as server:
        args = ["chat", "timestep.cli.demo:concierge", "--base-url", server.base_url, "--store", str(tmp_path)]
        result = CliRunner().invoke(cli, args, input="How is Paris right now?\nWill it rain in Tokyo tomorrow?\n")
    assert result.exit_code == 0, result.output
    assert "concierge: Right now in Paris: light rain, 14°C." in result.output
    assert "  forecaster: Tokyo: clear tomorrow" in result.output


def test_demo_uses_a_real_endpoint_when_given_one(tmp_path: Path) -> None:
    with TestServer(responder=scripted_model) as server:
        args = ["demo", "--base-url", server.base_url, "--model", "my-model", "--no"]
        result = CliRunner(env={"OPENAI_API_KEY": None}).invoke(cli, args)
        models = {r.body["model"] for r in server.requests}
        url = server.base_url
    assert result.exit_code == 0, result.output
    assert f"Using the model my-model at {url}" in result.output
    assert "scripted model" not in result.output
    assert models == {"my-model"}


def test_demo_offline_ignores_the_environment() -> None:
    runner = CliRunner(env={"OPENAI_API_KEY": "sk-not-used", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    result = runner.invoke(cli, ["demo", "--offline", "--yes"])
    assert result.exit_code == 0, result.output
    assert "built-in scripted model" in result.output


def test_demo_reports_a_rejected_key_in_one_line() -> None:
    with TestServer(api_key="right") as server:
        result = CliRunner().invoke(cli, ["demo", "--base-url", server.base_url, "--api-key", "wrong", "--yes"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: HTTP 401")
    assert "Traceback" not in result.output
