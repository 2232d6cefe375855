"""A traced run in its own process, exporting over OTLP/HTTP: the tracing tests pause it in one
process and approve it in another.

    python tracing_app.py BASE_URL STORE CONVERSATION OTLP_ENDPOINT [APPROVALS_JSON]
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from timestep import Agent, FileSession, GuardrailInterrupt, InputGuardrail, ModelClient, RunConfig, run_agent
from timestep.tracing import Tracing


async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def ask(tool_name: str, args: dict) -> None:  # type: ignore[type-arg]
    raise GuardrailInterrupt(f"Look up {args.get('city')}?", tool_name, args)


agent = Agent(name="Desk", model="m", tools=[get_weather], guardrails=[InputGuardrail(ask)])


async def main() -> None:
    base_url, store, conversation, endpoint = sys.argv[1:5]
    approvals = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    provider = TracerProvider(resource=Resource.create({"service.name": "tracing-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    config = RunConfig(tracing=Tracing(tracer_provider=provider))
    session = FileSession(agent.name, conversation, None, store)
    messages = [] if approvals else [{"role": "user", "content": "Weather in Oslo?"}]
    client = ModelClient(base_url=base_url, api_key="sk-test")
    result = await run_agent(agent, messages, session, client=client, config=config, approvals=approvals)
    provider.shutdown()  # flushes the batch to the endpoint
    print(json.dumps({"status": result["status"]}))


asyncio.run(main())
