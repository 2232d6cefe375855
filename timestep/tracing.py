"""OpenTelemetry spans for runs, model calls and tool calls, following the GenAI semantic conventions.

Turned on with ``RunConfig(tracing=True)`` (or ``tracing=Tracing(...)``), and only then imported: a run
without it never loads OpenTelemetry, and pays one ``is None`` check per model call.

Design
------
* **Spans from what the run already says.** The run's events (``run_start``, ``tool_call``,
  ``guardrail_blocked``, ``approval``...) are the record of what happened, so the :class:`Observer`
  wraps the run's ``emit`` and turns events into spans and span events, instead of adding calls
  all over the loop. Only the model call, which has no event around it, is wrapped directly.
* **The tree**: ``invoke_agent {agent}`` for each agent's part of a run, ``chat {model}`` for each
  model call and ``execute_tool {tool}`` for each tool call under it; a delegate's ``invoke_agent``
  sits under the ``execute_tool`` span of the transfer that started it. Parents are given
  explicitly, not through the ambient context, because concurrent tool calls share one task tree.
  The run's top span is a child of whatever span is current where the run started.
* **Guardrails and people as span events** on the tool call's span: ``timestep.guardrail.blocked``,
  ``timestep.guardrail.modified``, ``timestep.approval.requested`` (or ``timestep.tool.unknown_outcome``
  after a crash) and ``timestep.approval.decision`` with the fingerprints of the arguments asked
  about and of those a person edited in. A call paused in one process and approved in another is
  two traces; both ``execute_tool`` spans carry the same ``gen_ai.tool.call.id``, and both
  ``invoke_agent`` spans the same ``gen_ai.conversation.id``.
* **Contents only on request.** Messages, tool arguments and results are recorded only with
  ``capture_content=True`` (default: ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``), as
  the conventions ask; fingerprints, names, ids, counts and outcomes always are.
* **No global setup.** Spans go to the tracer provider given, else to the global one the application
  configured (OpenTelemetry's own no-op provider if none): Timestep never installs one itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .approvals import fingerprint
from .conversation import MESSAGE_TOOL

if TYPE_CHECKING:
    from .model import ModelClient

Event = dict[str, Any]
Fetched = tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]

PROVIDER = "openai"  # the API every endpoint Timestep talks to speaks
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


@dataclass(frozen=True)
class Tracing:
    """How a run is traced: which tracer provider (default: the global one), and whether message
    contents, tool arguments and results are recorded (default: the environment variable
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``)."""

    tracer_provider: trace.TracerProvider | None = None
    capture_content: bool | None = None

    def captures(self) -> bool:
        if self.capture_content is not None:
            return self.capture_content
        return os.environ.get(CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")


class Observer:
    """One run's spans, kept from the events it emits; shared by every level of the run."""

    def __init__(self, tracing: Tracing, client: ModelClient) -> None:
        self._tracer = trace.get_tracer("timestep", tracer_provider=tracing.tracer_provider)
        self._content = tracing.captures()
        where = urlsplit(client.base_url)
        self._server: dict[str, Any] = {server_attributes.SERVER_ADDRESS: where.hostname or ""}
        if where.port is not None:
            self._server[server_attributes.SERVER_PORT] = where.port
        self._agents: dict[tuple[int, str], Span] = {}
        self._errors: dict[tuple[int, str], str] = {}
        self._tools: dict[tuple[int, str, str], Span] = {}
        self._handoffs: dict[tuple[int, str], Span] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            "run_start": self._run_start,
            "run_end": self._run_end,
            "error": self._error,
            "tool_call": self._tool_call,
            "tool_result": self._tool_result,
            "tool_error": self._tool_error,
            "guardrail_blocked": self._blocked,
            "guardrail_modified": self._modified,
            "interrupt": self._interrupt,
            "approval": self._approval,
            "handoff_start": self._handoff_start,
            "guardrail": self._conversation_guardrail,
        }

    def watch(self, emit: Callable[[Event], None]) -> Callable[[Event], None]:
        """``emit``, with every event seen here first."""
        handlers = self._handlers

        def watched(event: Event) -> None:
            handler = handlers.get(event["type"])
            if handler is not None:
                handler(event)
            emit(event)

        return watched

    # -- model calls ----------------------------------------------------------------------------

    async def model_call(self, head: Event, body: dict[str, Any], fetch: Awaitable[Fetched]) -> Fetched:
        """Run one model call inside its ``chat`` span."""
        model = str(body.get("model"))
        attributes: dict[str, Any] = {
            gen_ai.GEN_AI_OPERATION_NAME: "chat",
            gen_ai.GEN_AI_PROVIDER_NAME: PROVIDER,
            gen_ai.GEN_AI_REQUEST_MODEL: model,
            gen_ai.GEN_AI_AGENT_NAME: head["agent"],
            **self._server,
        }
        for key, name in (
            ("temperature", gen_ai.GEN_AI_REQUEST_TEMPERATURE),
            ("max_tokens", gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
            ("top_p", gen_ai.GEN_AI_REQUEST_TOP_P),
            ("seed", gen_ai.GEN_AI_REQUEST_SEED),
        ):
            if isinstance(body.get(key), int | float):
                attributes[name] = body[key]
        if self._content:
            messages = body.get("messages") or []
            system = [{"type": "text", "content": m.get("content")} for m in messages if m.get("role") == "system"]
            if system:
                attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS] = _dumps(system)
            attributes[gen_ai.GEN_AI_INPUT_MESSAGES] = _dumps(
                [_message(m) for m in messages if m.get("role") != "system"]
            )
        parent = self._agents.get((head["depth"], head["agent"]))
        span = self._start(f"chat {model}", parent, attributes, SpanKind.CLIENT)
        try:
            fetched = await fetch
        except BaseException as exc:
            span.set_attribute(error_attributes.ERROR_TYPE, type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.end()
            raise
        message, used, last = fetched
        chunk, choice = last.get("chunk") or {}, last.get("choice") or {}
        if chunk.get("model"):
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, str(chunk["model"]))
        if chunk.get("id"):
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_ID, str(chunk["id"]))
        if choice.get("finish_reason"):
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [str(choice["finish_reason"])])
        _set_tokens(span, used)
        if self._content:
            output = {**_message({"role": "assistant", **message}), "finish_reason": choice.get("finish_reason")}
            span.set_attribute(gen_ai.GEN_AI_OUTPUT_MESSAGES, _dumps([output]))
        span.end()
        return fetched

    # -- levels ---------------------------------------------------------------------------------

    def _run_start(self, event: Event) -> None:
        key = (event["depth"], event["agent"])
        attributes = {
            gen_ai.GEN_AI_OPERATION_NAME: "invoke_agent",
            gen_ai.GEN_AI_PROVIDER_NAME: PROVIDER,
            gen_ai.GEN_AI_AGENT_NAME: event["agent"],
            gen_ai.GEN_AI_CONVERSATION_ID: event["conversation_id"],
        }
        parent = self._handoffs.pop(key, None)
        self._agents[key] = self._start(f"invoke_agent {event['agent']}", parent, attributes)

    def _error(self, event: Event) -> None:
        self._errors[(event["depth"], event["agent"])] = str(event.get("error_type") or "error")
        span = self._agents.get((event["depth"], event["agent"]))
        if span is not None:
            span.add_event("timestep.run.error", {error_attributes.ERROR_TYPE: str(event.get("error_type"))})

    def _run_end(self, event: Event) -> None:
        depth, agent = event["depth"], event["agent"]
        for key in [k for k in self._tools if k[0] == depth and k[1] == agent]:
            self._tools.pop(key).end()  # a call the run stopped in the middle of (a limit, an error)
        span = self._agents.pop((depth, agent), None)
        if span is None:
            return
        span.set_attribute("timestep.run.status", str(event["status"]))
        _set_tokens(span, event.get("usage"))
        error = self._errors.pop((depth, agent), None)
        if event["status"] == "error":
            span.set_attribute(error_attributes.ERROR_TYPE, error or "error")
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _handoff_start(self, event: Event) -> None:
        span = self._tools.get((event["depth"], event["agent"], event["tool_call_id"]))
        if span is not None:  # the delegate's run_start follows at once, with nothing between
            self._handoffs[(event["depth"] + 1, event["target"])] = span
            span.set_attribute("timestep.handoff.target", str(event["target"]))

    # -- tool calls -----------------------------------------------------------------------------

    def _tool(self, event: Event) -> Span:
        """The call's span, started on first sight (a resumed call's first event is its decision)."""
        key = (event["depth"], event["agent"], event["tool_call_id"])
        span = self._tools.get(key)
        if span is None:
            attributes: dict[str, Any] = {
                gen_ai.GEN_AI_OPERATION_NAME: "execute_tool",
                gen_ai.GEN_AI_PROVIDER_NAME: PROVIDER,
                gen_ai.GEN_AI_TOOL_NAME: event["name"],
                gen_ai.GEN_AI_TOOL_CALL_ID: event["tool_call_id"],
                gen_ai.GEN_AI_TOOL_TYPE: "function",
                gen_ai.GEN_AI_AGENT_NAME: event["agent"],
            }
            parent = self._agents.get((event["depth"], event["agent"]))
            span = self._tools[key] = self._start(f"execute_tool {event['name']}", parent, attributes)
        return span

    def _end_tool(self, event: Event, outcome: str) -> Span | None:
        span = self._tools.pop((event["depth"], event["agent"], event["tool_call_id"]), None)
        if span is not None:
            span.set_attribute("timestep.tool.outcome", outcome)
            span.end()
        return span

    def _tool_call(self, event: Event) -> None:
        span = self._tool(event)
        if event.get("retry"):
            span.add_event("timestep.tool.retry")
        if self._content:
            span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS, _dumps(event.get("arguments")))

    def _tool_result(self, event: Event) -> None:
        span = self._tool(event)
        if self._content:
            span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_RESULT, str(event.get("result")))
        self._end_tool(event, "completed")

    def _tool_error(self, event: Event) -> None:
        span = self._tool(event)
        if event.get("declined"):
            self._end_tool(event, "declined")
            return
        span.set_attribute(error_attributes.ERROR_TYPE, "tool_error")
        span.set_status(Status(StatusCode.ERROR, str(event.get("error")) if self._content else None))
        self._end_tool(event, "error")

    def _blocked(self, event: Event) -> None:
        span = self._tool(event)
        span.add_event(
            "timestep.guardrail.blocked",
            {
                "timestep.guardrail.name": str(event["guardrail"]),
                "timestep.guardrail.stage": str(event["stage"]),
                "timestep.guardrail.reason": str(event["reason"]),
            },
        )
        self._end_tool(event, "blocked")

    def _modified(self, event: Event) -> None:
        self._tool(event).add_event(
            "timestep.guardrail.modified",
            {"timestep.guardrail.name": str(event["guardrail"]), "timestep.guardrail.stage": str(event["stage"])},
        )

    def _interrupt(self, event: Event) -> None:
        span = self._agents.get((event["depth"], event["agent"])) if event.get("kind") == "message" else None
        span = span or self._tool(event)  # a user message a guardrail asked about belongs to the agent's span
        unknown = event.get("kind") == "unknown_outcome"
        attributes = {
            "timestep.approval.kind": str(event.get("kind")),
            "timestep.tool.args_fingerprint": fingerprint(event["name"], event.get("arguments")),
        }
        if self._content:
            attributes["timestep.approval.prompt"] = str(event.get("prompt") or "")
        span.add_event("timestep.tool.unknown_outcome" if unknown else "timestep.approval.requested", attributes)
        self._end_tool(event, "paused")

    def _conversation_guardrail(self, event: Event) -> None:
        """A message or answer guardrail's verdict, on the agent's span: no tool call is involved."""
        span = self._agents.get((event["depth"], event["agent"]))
        if span is None:
            return
        action = str(event.get("action"))
        attributes = {
            "timestep.guardrail.name": str(event.get("guardrail")),
            "timestep.guardrail.stage": str(event.get("stage")),
        }
        if event.get("reason"):
            attributes["timestep.guardrail.reason"] = str(event["reason"])
        names = {"block": "timestep.guardrail.blocked", "replace": "timestep.guardrail.modified"}
        span.add_event(names.get(action, f"timestep.guardrail.{action}"), attributes)

    def _approval(self, event: Event) -> None:
        edited = event.get("edited_arguments")
        approved = bool(event.get("approved"))
        attributes: dict[str, Any] = {
            "timestep.approval.approved": approved,
            "timestep.approval.decision": ("edited" if edited is not None else "approved") if approved else "declined",
            "timestep.tool.args_fingerprint": fingerprint(event["name"], event.get("arguments")),
        }
        if edited is not None:
            attributes["timestep.tool.edited_args_fingerprint"] = fingerprint(event["name"], edited)
        if self._content and event.get("message"):
            attributes["timestep.approval.message"] = str(event["message"])
        span = self._agents.get((event["depth"], event["agent"])) if event["name"] == MESSAGE_TOOL else None
        (span or self._tool(event)).add_event("timestep.approval.decision", attributes)

    # -- helpers --------------------------------------------------------------------------------

    def _start(
        self, name: str, parent: Span | None, attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL
    ) -> Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        return self._tracer.start_span(name, context=context, kind=kind, attributes=attributes)


def _set_tokens(span: Span, used: dict[str, Any] | None) -> None:
    if used:
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, int(used.get("prompt_tokens") or 0))
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, int(used.get("completion_tokens") or 0))


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions message in the conventions' form: a role and its parts."""
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if message.get("role") == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content})
    elif isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        parts += [{"type": "text", "content": p.get("text")} for p in content if isinstance(p, dict)]
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        arguments: Any = fn.get("arguments")
        with contextlib.suppress(ValueError):  # arguments that are not JSON are shown as sent
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"), "arguments": arguments})
    return {"role": message.get("role"), "parts": parts}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
