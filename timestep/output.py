"""Typed final answers: ``Agent(output_type=...)``.

The answer is asked for as JSON matching the type's schema, in one of two ways: the endpoint's
JSON-schema response format (OpenAI and most servers that copy it), or, for endpoints without it,
a ``final_answer`` tool whose parameters are that schema. ``output_mode="auto"`` (the default) uses
the response format and, when an endpoint refuses it with an HTTP 400/422, switches to the tool for
that endpoint and model from then on.

Pydantic does the work: a ``TypeAdapter`` gives the schema and validates the reply, so a pydantic
model, a dataclass, a ``TypedDict`` or a simple type (``int``, ``list[str]``...) all work. A type
whose schema is not an object is wrapped as ``{"value": ...}``, because both the response format and
tool parameters want an object at the top. The session keeps the answer's JSON text; the result
gives the validated object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .exceptions import ConfigurationError, OutputValidationError

if TYPE_CHECKING:
    from pydantic import TypeAdapter

OutputMode = Literal["auto", "json_schema", "tool"]
FINAL_ANSWER_TOOL = "final_answer"


@dataclass(frozen=True)
class OutputSpec:
    """What an agent's ``output_type`` asks of the model, and how to read its answer."""

    output_type: Any
    adapter: TypeAdapter[Any]
    schema: dict[str, Any]  # always an object
    wrapped: bool  # the type's own schema sits under "value"
    name: str

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema}}

    def tool_spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": FINAL_ANSWER_TOOL,
                "description": "Give your final answer. Call this alone, once, when you are done.",
                "parameters": self.schema,
            },
        }

    def parse(self, text: str) -> Any:
        """The validated answer, or :class:`OutputValidationError` with what to tell the model."""
        from pydantic import ValidationError

        try:
            data = json.loads(_strip_fence(text))
        except ValueError as exc:
            raise OutputValidationError(f"the answer is not valid JSON ({exc})") from None
        if self.wrapped:
            if not isinstance(data, dict) or set(data) != {"value"}:
                raise OutputValidationError('the answer must be a JSON object {"value": ...}')
            data = data["value"]
        try:
            return self.adapter.validate_python(data)
        except ValidationError as exc:
            raise OutputValidationError(f"the answer does not match the schema: {_errors(exc)}") from None

    def dump(self, value: Any) -> str:
        """The JSON text a caller (a delegating agent, the session) reads for ``value``."""
        data = self.adapter.dump_python(value, mode="json")
        return json.dumps({"value": data} if self.wrapped else data, ensure_ascii=False)


def output_spec(output_type: Any) -> OutputSpec:
    from pydantic import TypeAdapter

    try:
        adapter: TypeAdapter[Any] = TypeAdapter(output_type)
        schema = adapter.json_schema()
    except Exception as exc:  # pydantic raises several kinds for a type it cannot describe
        raise ConfigurationError(f"output_type {output_type!r} cannot be described as a JSON schema: {exc}") from None
    wrapped = schema.get("type") != "object"
    if wrapped:
        defs = schema.pop("$defs", None)
        schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
        if defs:
            schema["$defs"] = defs
    raw_name = getattr(output_type, "__name__", None) or "answer"
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(raw_name))[:64] or "answer"
    return OutputSpec(output_type, adapter, schema, wrapped, name)


def _strip_fence(text: str) -> str:
    """Some models wrap JSON in a Markdown code fence even when asked not to."""
    found = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.S)
    return found.group(1) if found else text


def _errors(exc: Any) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "the answer"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)
