"""From MCP's forms to Timestep's, with no I/O: tool names, the safety policy, and results.

The policy in one place:

* **Approval.** With ``approval="destructive"`` (the default) a tool the server marks
  ``destructiveHint: true``, and not ``readOnlyHint: true``, pauses for a person. ``"not_read_only"``
  asks for every tool not marked read-only (what the MCP spec's defaults imply for a tool with no
  annotations), ``"always"`` for every tool, ``"never"`` for none. ``approve={"tool": True/False}``
  decides single tools, whatever the hints say.
* **Re-running after a crash.** A call that started but has no recorded result runs again only if
  the tool is idempotent: marked ``idempotentHint`` or ``readOnlyHint`` by the server, or listed in
  ``idempotent={"tool": True}``. Any other tool pauses as ``unknown_outcome`` for a person.

Annotations are hints from the server, so they can only make a tool *stricter* than the default by
themselves; making a tool looser (``"never"``, ``approve={...: False}``) is the agent author's call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import mcp_types

ApprovalPolicy = Literal["destructive", "not_read_only", "always", "never"]
APPROVAL_POLICIES: tuple[str, ...] = ("destructive", "not_read_only", "always", "never")

_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")


def local_name(prefix: str | None, remote: str) -> str:
    """The name the model sees: the server's, behind ``prefix_`` if given, in the characters the
    Chat Completions API allows (others become ``_``), at most 64 of them."""
    name = f"{prefix}_{remote}" if prefix else remote
    return _NOT_NAME.sub("_", name)[:64] or "_"


def needs_approval(
    name: str, annotations: mcp_types.ToolAnnotations | None, policy: ApprovalPolicy, approve: Mapping[str, bool]
) -> bool:
    if name in approve:
        return approve[name]
    read_only = bool(annotations and annotations.read_only_hint)
    if policy == "always":
        return True
    if policy == "never" or read_only:
        return False
    if policy == "not_read_only":
        return True
    return bool(annotations and annotations.destructive_hint)


def is_idempotent(name: str, annotations: mcp_types.ToolAnnotations | None, idempotent: Mapping[str, bool]) -> bool:
    if name in idempotent:
        return idempotent[name]
    return bool(annotations and (annotations.idempotent_hint or annotations.read_only_hint))


def call_result(result: mcp_types.CallToolResult) -> tuple[Any, bool]:
    """What the model reads, and whether the server called it an error.

    The content blocks become text: that is what a server writes for a model to read (and what
    the spec asks servers to send alongside structured content). A result with structured content
    and no blocks is returned as the dict it is, sent as JSON; so is one text block holding a JSON
    object or array. Chat Completions tool messages carry
    text only, so a picture or a sound is named and measured in a note instead of silently dropped.
    """
    if result.structured_content is not None and not result.content and not result.is_error:
        return result.structured_content, False
    parts = [_block_text(block) for block in result.content]
    text = "\n".join(p for p in parts if p)
    if result.is_error:
        return text or "the tool failed without saying why", True
    return _json_object(result, text), False


def _json_object(result: mcp_types.CallToolResult, text: str) -> Any:
    """A result that is one JSON object or array in text (how servers send a dict) as that value.

    So an output guardrail gets a dict from an MCP tool that returns one, as from a Python tool,
    and ``result.get("result")`` works for both; the model still reads it as JSON.
    """
    if len(result.content) != 1 or getattr(result.content[0], "type", None) != "text":
        return text
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict | list) else text


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", None)
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        size = len(block.data) * 3 // 4  # base64
        return f"[{kind} ({block.mime_type}, about {size} bytes) left out: tool results reach the model as text]"
    if kind == "resource_link":
        return f"[resource {block.uri}" + (f" ({block.name})" if block.name else "") + "]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if isinstance(text, str):
            return text
        mime = getattr(resource, "mime_type", None) or "binary"
        return f"[resource {resource.uri} ({mime}) left out: tool results reach the model as text]"
    dump = getattr(block, "model_dump", None)
    return json.dumps(dump(mode="json", exclude_none=True)) if callable(dump) else str(block)
