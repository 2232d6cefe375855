"""The default way to turn a run's events into one result dict."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any


async def default_result_processor(events: AsyncIterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Collect a run's events into ``{"status", "final_output", "messages", "tool_calls", ...}``.

    ``messages`` are the messages the run added to the top-level conversation, in order (a
    delegate's messages stay in the delegate's session); ``tool_calls`` lists every tool call of the
    run, the delegates' included, each with its result or error; ``interruptions`` lists the calls
    waiting for a person when ``status == "interrupted"``.
    """
    builder = ResultBuilder()
    async for event in events:
        builder.add(event)
    return builder.result


class ResultBuilder:
    """:func:`default_result_processor`, one event at a time: a run awaited for its result feeds it
    each event as it happens, so no list of the run's events is kept."""

    __slots__ = ("_calls", "result")

    def __init__(self) -> None:
        self.result: dict[str, Any] = {
            "status": "completed",
            "final_output": None,
            "messages": [],
            "tool_calls": [],
            "interruptions": [],
            "error": None,
            "usage": {},
            "agent": None,
        }
        self._calls: dict[tuple[int, str, str], dict[str, Any]] = {}

    def add(self, event: Mapping[str, Any]) -> None:
        result, calls = self.result, self._calls
        kind = event["type"]
        top = event.get("depth", 0) == 0
        if kind == "message" and top:
            result["messages"].append(event["message"])
        elif kind == "tool_call":
            key = (event.get("depth", 0), event["agent"], event["tool_call_id"])
            if key not in calls:
                calls[key] = {
                    "id": event["tool_call_id"],
                    "name": event["name"],
                    "arguments": event.get("arguments"),
                    "agent": event["agent"],
                    "result": None,
                    "error": None,
                }
                result["tool_calls"].append(calls[key])
            else:
                calls[key]["arguments"] = event.get("arguments")
        elif kind in ("tool_result", "tool_error", "guardrail_blocked"):
            key = (event.get("depth", 0), event["agent"], event["tool_call_id"])
            entry = calls.get(key)
            if entry is None:
                entry = calls[key] = {
                    "id": event["tool_call_id"],
                    "name": event.get("name"),
                    "arguments": event.get("arguments"),
                    "agent": event["agent"],
                    "result": None,
                    "error": None,
                }
                result["tool_calls"].append(entry)
            if "arguments" in event:
                entry["arguments"] = event["arguments"]  # what the tool ran with, after guardrails and edits
            if kind == "tool_result":
                entry["result"] = event["result"]
                entry["error"] = None
            elif kind == "tool_error":
                entry["error"] = event["error"]
            else:
                entry["error"] = f"blocked by {event['guardrail']}: {event['reason']}"
        elif kind == "error" and top:
            result["error"] = event["error"]
        elif kind == "run_end" and top:
            result["status"] = event["status"]
            result["final_output"] = event["output"] if "output" in event else event["final_output"]
            result["usage"] = event.get("run_usage") or event.get("usage") or {}
            result["agent"] = event["agent"]
            result["interruptions"] = event.get("interruptions", [])
