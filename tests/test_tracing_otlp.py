"""Spans exported over OTLP/HTTP, from two processes, to a receiver on 127.0.0.1 that decodes them.

A collector binary is not available here, so the receiver is a small HTTP server that parses the
protobuf payload with ``opentelemetry-proto``, as a collector would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from timestep.approvals import fingerprint
from timestep.testing import Reply, TestServer, ToolCall

APP = Path(__file__).with_name("tracing_app.py")


class Receiver:
    """Collects every span posted to /v1/traces, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "attributes": attributes(span.attributes),
                                    "events": [(e.name, attributes(e.attributes)) for e in span.events],
                                    "resource": resource,
                                    "path": self.path,
                                }
                            )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in pairs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    thread.join()


def app(server: TestServer, store: Path, receiver: Receiver, approvals: Any = None) -> str:
    argv = [sys.executable, str(APP), server.base_url, str(store), "conv", receiver.endpoint]
    if approvals is not None:
        argv.append(json.dumps(approvals))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout.strip().splitlines()[-1])["status"])


def test_a_pause_and_its_approval_in_two_processes_over_otlp(
    server: TestServer, store: Path, receiver: Receiver
) -> None:
    server.script(Reply.tool_calls(ToolCall("get_weather", {"city": "Oslo"}, id="o1")))
    assert app(server, store, receiver) == "interrupted"
    paused = list(receiver.spans)
    receiver.spans.clear()
    server.script(Reply.text("Sunny in Oslo."))
    assert app(server, store, receiver, {"o1": True}) == "completed"
    resumed = list(receiver.spans)

    assert {s["path"] for s in paused + resumed} == {"/v1/traces"}
    assert {s["resource"]["service.name"] for s in paused + resumed} == {"tracing-app"}
    assert sorted(s["name"] for s in paused) == ["chat m", "execute_tool get_weather", "invoke_agent Desk"]
    assert sorted(s["name"] for s in resumed) == ["chat m", "execute_tool get_weather", "invoke_agent Desk"]
    assert {s["trace_id"] for s in paused}.isdisjoint({s["trace_id"] for s in resumed})  # two runs, two traces

    def find(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
        return next(s for s in spans if s["name"] == name)

    for spans in (paused, resumed):
        agent, tool = find(spans, "invoke_agent Desk"), find(spans, "execute_tool get_weather")
        assert agent["attributes"][gen_ai.GEN_AI_CONVERSATION_ID] == "conv"  # linked by the conversation
        assert tool["attributes"][gen_ai.GEN_AI_TOOL_CALL_ID] == "o1"  # and by the call
        assert tool["parent"] == agent["span_id"] and agent["parent"] == ""
    asked = fingerprint("get_weather", {"city": "Oslo"})
    ((name, attrs),) = find(paused, "execute_tool get_weather")["events"]
    assert name == "timestep.approval.requested" and attrs["timestep.tool.args_fingerprint"] == asked
    ((name, attrs),) = find(resumed, "execute_tool get_weather")["events"]
    assert name == "timestep.approval.decision"
    assert attrs == {
        "timestep.approval.approved": True,
        "timestep.approval.decision": "approved",
        "timestep.tool.args_fingerprint": asked,
    }
    chat = find(resumed, "chat m")["attributes"]
    assert chat[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"] and chat[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
