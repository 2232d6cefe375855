"""OpenTelemetry spans of a run, read back with the SDK's in-memory exporter.

Attribute names come from the semantic-conventions package, so a name typed wrong here or in
``timestep.tracing`` fails against the standard, not against itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode

from timestep import (
    Agent,
    FileSession,
    GuardrailInterrupt,
    GuardrailResult,
    InputGuardrail,
    MessageGuardrail,
    ModelClient,
    RunConfig,
    run_agent,
)
from timestep.approvals import fingerprint
from timestep.testing import Reply, TestServer, ToolCall
from timestep.tracing import Tracing


async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


async def read_secret(name: str) -> str:
    """A secret."""
    return "hunter2"


def guard(tool_name: str, args: dict[str, Any]) -> GuardrailResult:
    if tool_name == "read_secret":
        return GuardrailResult.block("no secrets")
    if args.get("city") == "Oslo":
        raise GuardrailInterrupt(f"Look up {args['city']}?", tool_name, args)
    if args.get("city") == "lima":
        return GuardrailResult.modify_args({"city": "Lima"})
    return GuardrailResult.proceed()


forecaster = Agent(name="Forecaster", model="small", tools=[get_weather])
desk = Agent(
    name="Desk",
    model="big",
    tools=[get_weather, read_secret],
    handoffs=[forecaster],
    guardrails=[InputGuardrail(guard)],
)
ASK = [{"role": "user", "content": "Weather?"}]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def config(provider: TracerProvider, **options: Any) -> RunConfig:
    return RunConfig(tracing=Tracing(tracer_provider=provider, **options))


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(spans: tuple[ReadableSpan, ...], span: ReadableSpan) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next(s for s in spans if s.context is not None and s.context.span_id == span.parent.span_id)


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (found,) = named(spans, name)
    return found


async def test_the_span_tree_of_tools_a_handoff_and_a_blocked_call(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script(
        Reply.tool_calls(
            ToolCall("get_weather", {"city": "lima"}, id="w1"), ToolCall("read_secret", {"name": "x"}, id="s1")
        ),
        Reply.tool_calls(ToolCall("transfer_to_forecaster", {"message": "Paris?"}, id="t1")),
        Reply.tool_calls(ToolCall("get_weather", {"city": "Paris"}, id="w2")),
        Reply.text("Sunny in Paris."),
        Reply.text("Sunny in Lima and Paris."),
    )
    session = FileSession(desk.name, "tree", None, store)
    result = await run_agent(desk, ASK, session, client=client, config=config(provider))
    assert result["status"] == "completed"
    spans = exporter.get_finished_spans()

    root = one(spans, "invoke_agent Desk")
    assert root.parent is None and root.kind == SpanKind.INTERNAL
    attrs = root.attributes or {}
    assert attrs[gen_ai.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert attrs[gen_ai.GEN_AI_AGENT_NAME] == "Desk" and attrs[gen_ai.GEN_AI_CONVERSATION_ID] == "tree"
    assert attrs[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == result["usage"]["by_agent"]["Desk"]["prompt_tokens"]

    chats = named(spans, "chat big")
    assert len(chats) == 3 and all(parent_of(spans, c) is root and c.kind == SpanKind.CLIENT for c in chats)
    first = chats[0].attributes or {}
    assert first[gen_ai.GEN_AI_OPERATION_NAME] == "chat" and first[gen_ai.GEN_AI_PROVIDER_NAME] == "openai"
    assert first[gen_ai.GEN_AI_REQUEST_MODEL] == "big" and first[gen_ai.GEN_AI_RESPONSE_MODEL] == "big"
    assert tuple(first[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS]) == ("tool_calls",)
    assert first[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] > 0 and first[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    assert (
        first[server_attributes.SERVER_ADDRESS] == "127.0.0.1" and first[server_attributes.SERVER_PORT] == server.port
    )
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in first  # no contents unless asked for

    tools = {(s.attributes or {})[gen_ai.GEN_AI_TOOL_CALL_ID]: s for s in spans if s.name.startswith("execute_tool")}
    assert set(tools) == {"w1", "s1", "t1", "w2"}
    for call_id in ("w1", "s1", "t1"):
        assert parent_of(spans, tools[call_id]) is root
    lima = tools["w1"].attributes or {}
    assert lima[gen_ai.GEN_AI_TOOL_NAME] == "get_weather" and lima[gen_ai.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert lima["timestep.tool.outcome"] == "completed"
    assert [e.name for e in tools["w1"].events] == ["timestep.guardrail.modified"]
    assert gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS not in lima

    blocked = tools["s1"]
    assert (blocked.attributes or {})["timestep.tool.outcome"] == "blocked"
    (event,) = blocked.events
    assert event.name == "timestep.guardrail.blocked"
    assert dict(event.attributes or {}) == {
        "timestep.guardrail.name": "guard",
        "timestep.guardrail.stage": "input",
        "timestep.guardrail.reason": "no secrets",
    }

    delegate = one(spans, "invoke_agent Forecaster")
    assert parent_of(spans, delegate) is tools["t1"]  # nested under the transfer that started it
    assert (delegate.attributes or {})[gen_ai.GEN_AI_CONVERSATION_ID] != "tree"
    assert all(parent_of(spans, c) is delegate for c in named(spans, "chat small"))
    assert parent_of(spans, tools["w2"]) is delegate
    assert {s.context.trace_id for s in spans if s.context is not None} == {root.context.trace_id}


async def test_a_pause_and_its_approval_are_two_runs_of_one_conversation(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="o1")))
    session = FileSession(desk.name, "paused", None, store)
    first = await run_agent(desk, ASK, session, client=client, config=config(provider))
    assert first["status"] == "interrupted"
    paused = exporter.get_finished_spans()
    exporter.clear()

    server.script(Reply.text("Sunny in Bergen."))
    approvals = {"o1": {"approve": True, "args": {"city": "Bergen"}}}
    second = await run_agent(desk, [], session, client=client, config=config(provider), approvals=approvals)
    assert second["status"] == "completed"
    resumed = exporter.get_finished_spans()

    asked, answered = one(paused, "execute_tool get_weather"), one(resumed, "execute_tool get_weather")
    assert asked.context.trace_id != answered.context.trace_id
    for spans, span in ((paused, asked), (resumed, answered)):
        assert (span.attributes or {})[gen_ai.GEN_AI_TOOL_CALL_ID] == "o1"
        agent_span = parent_of(spans, span)
        assert agent_span is not None and (agent_span.attributes or {})[gen_ai.GEN_AI_CONVERSATION_ID] == "paused"
    assert (asked.attributes or {})["timestep.tool.outcome"] == "paused"
    (request,) = asked.events
    assert request.name == "timestep.approval.requested"
    original = fingerprint("get_weather", {"city": "Oslo"})
    assert (request.attributes or {})["timestep.tool.args_fingerprint"] == original
    decision = answered.events[0]
    assert decision.name == "timestep.approval.decision"
    assert dict(decision.attributes or {}) == {
        "timestep.approval.approved": True,
        "timestep.approval.decision": "edited",
        "timestep.tool.args_fingerprint": original,
        "timestep.tool.edited_args_fingerprint": fingerprint("get_weather", {"city": "Bergen"}),
    }
    assert (answered.attributes or {})["timestep.tool.outcome"] == "completed"


async def test_contents_are_recorded_only_when_asked(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Paris"}, id="p1")), Reply.text("Sunny."))
    session = FileSession(desk.name, "content", None, store)
    await run_agent(desk, ASK, session, client=client, config=config(provider, capture_content=True))
    spans = exporter.get_finished_spans()
    first, second = (s.attributes or {} for s in named(spans, "chat big"))
    assert json.loads(str(first[gen_ai.GEN_AI_INPUT_MESSAGES])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]}
    ]
    assert json.loads(str(first[gen_ai.GEN_AI_OUTPUT_MESSAGES])) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "p1", "name": "get_weather", "arguments": {"city": "Paris"}}],
            "finish_reason": "tool_calls",
        }
    ]
    assert json.loads(str(second[gen_ai.GEN_AI_INPUT_MESSAGES]))[-1] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": "p1", "response": "Sunny in Paris"}],
    }
    tool = one(spans, "execute_tool get_weather").attributes or {}
    assert "Paris" in str(tool[gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS])
    assert tool[gen_ai.GEN_AI_TOOL_CALL_RESULT] == "Sunny in Paris"


async def test_a_failed_model_call_and_a_declined_call(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="o1")), Reply.error(400, "bad"))
    session = FileSession(desk.name, "failed", None, store)
    result = await run_agent(
        desk, ASK, session, client=client, config=config(provider), approval_handler=lambda _: "not now"
    )
    assert result["status"] == "error"
    spans = exporter.get_finished_spans()
    failed = named(spans, "chat big")[1]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})[error_attributes.ERROR_TYPE] == "ModelHTTPError"
    root = one(spans, "invoke_agent Desk")
    assert root.status.status_code == StatusCode.ERROR
    assert (root.attributes or {})[error_attributes.ERROR_TYPE] == "ModelHTTPError"
    tool = one(spans, "execute_tool get_weather")
    (decision,) = tool.events  # asked inline: no pause, only the decision
    assert decision.name == "timestep.approval.decision"
    assert (decision.attributes or {})["timestep.approval.decision"] == "declined"
    assert (tool.attributes or {})["timestep.tool.outcome"] == "declined"


def test_tracing_off_never_imports_opentelemetry(server: TestServer, tmp_path: Path) -> None:
    program = f"""
import asyncio, sys
from timestep import Agent, FileSession, ModelClient, run_agent
from timestep.testing import Reply
agent = Agent(name="A", model="m")
client = ModelClient(base_url={server.base_url!r}, api_key="k")
result = asyncio.run(run_agent(agent, [{{"role": "user", "content": "hi"}}], FileSession("A", "c"), client=client))
assert result["status"] == "completed", result
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    server.script(Reply.text("hello"))
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


class LosesToolResults(FileSession):
    """A store that fails to write a tool's result once: the call's outcome is then unknown."""

    failing = True

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        if self.failing and any(i.get("role") == "tool" for i in items):
            self.failing = False
            raise OSError("disk full")
        await super().add_items(items)


async def test_an_unknown_outcome_after_a_crash_is_a_span_event(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Paris"}, id="u1")))
    session = LosesToolResults(desk.name, "crashed", None, store)
    with pytest.raises(OSError, match="disk full"):
        await run_agent(desk, ASK, session, client=client, config=config(provider))
    exporter.clear()
    second = await run_agent(desk, [], session, client=client, config=config(provider))
    assert second["status"] == "interrupted" and second["interruptions"][0]["kind"] == "unknown_outcome"
    tool = one(exporter.get_finished_spans(), "execute_tool get_weather")
    (event,) = tool.events
    assert event.name == "timestep.tool.unknown_outcome"
    assert (event.attributes or {})["timestep.tool.args_fingerprint"] == fingerprint("get_weather", {"city": "Paris"})
    assert (tool.attributes or {})["timestep.tool.outcome"] == "paused"


def test_tracing_without_the_extra_says_which_to_install(tmp_path: Path) -> None:
    program = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from timestep import Agent, ConfigurationError, FileSession, RunConfig, run_agent
try:
    run_agent(Agent(name="A", model="m"), [], FileSession("A", "c"), config=RunConfig(tracing=True))
except ConfigurationError as exc:
    print(exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install -e '.[otel]' in a Timestep checkout" in proc.stdout


def test_the_tracing_benchmark_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tracing", "--calls", "2", "--repeats", "1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for mode in ("off", "on, no-op provider", "on, SDK in memory"):
        assert f"tracing {mode}: " in proc.stdout


def no_passwords(text: str) -> GuardrailResult | None:
    if "password" in text.lower():
        return GuardrailResult.block("no passwords")
    if "transfer" in text.lower():
        raise GuardrailInterrupt("Send this message?")
    return None


async def test_message_guardrails_are_events_on_the_agent_span(
    server: TestServer, client: ModelClient, store: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guarded = Agent(name="Guarded", model="m", guardrails=[MessageGuardrail(no_passwords)])
    blocked = await run_agent(
        guarded,
        [{"role": "user", "content": "my password is x"}],
        FileSession("Guarded", "b", None, store),
        client=client,
        config=config(provider),
    )
    assert blocked["status"] == "blocked"
    (span,) = exporter.get_finished_spans()  # no model call, no tool call
    (event,) = span.events
    assert event.name == "timestep.guardrail.blocked"
    assert dict(event.attributes or {}) == {
        "timestep.guardrail.name": "no_passwords",
        "timestep.guardrail.stage": "message",
        "timestep.guardrail.reason": "no passwords",
    }
    exporter.clear()

    paused = await run_agent(
        guarded,
        [{"role": "user", "content": "transfer 5"}],
        FileSession("Guarded", "p", None, store),
        client=client,
        config=config(provider),
    )
    assert paused["status"] == "interrupted"
    (span,) = exporter.get_finished_spans()
    assert span.name == "invoke_agent Guarded"
    assert [e.name for e in span.events] == ["timestep.approval.requested"]
    assert (span.events[0].attributes or {})["timestep.approval.kind"] == "message"
