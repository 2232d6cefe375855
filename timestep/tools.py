"""Tools: plain Python functions the model can call.

A tool is any callable. Two calling conventions are supported, because both appear in the wild:

* **Typed** — ``async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str``. The JSON
  schema comes from the signature, type hints and docstring through pydantic, and the model's
  arguments are validated by the same pydantic model before the call, so a bad call becomes an error
  message the model can correct instead of a ``TypeError`` inside user code.
* **Arguments dict** — ``async def get_weather(args: dict) -> dict`` (the seed README's style). The
  function receives the decoded arguments as one dict. Its schema is the explicit ``parameters`` given
  to :func:`tool`, or, when none is given, is inferred from the keys the body reads (``args["city"]``
  is required, ``args.get("unit")`` optional) so that a real model knows what to send.

Either kind may also take a parameter annotated :class:`ToolContext` (excluded from the schema) to
learn its tool call id, an idempotency key it can pass to the outside world.

pydantic is imported when the first typed tool is built, not at ``import timestep``.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, get_type_hints, runtime_checkable

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .guardrails import InputGuardrail, OutputGuardrail

TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolContext:
    """What a tool may want to know about the call it is serving.

    ``tool_call_id`` is stable across a crash and a resume, so it makes a good idempotency key for
    the outside world (a payment id, a message id).
    """

    tool_call_id: str
    agent_name: str
    conversation_id: str | None = None


class ToolArgumentsError(Exception):
    """The model's arguments do not fit the tool; the message goes back to the model."""


@dataclass
class Tool:
    """A callable the model can invoke, with the schema the model sees."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    idempotent: bool = False
    args_dict: bool = False
    context_param: str | None = None
    _validator: Any = field(default=None, repr=False)
    _is_async: bool = field(default=False, repr=False)

    def spec(self) -> dict[str, Any]:
        """The Chat Completions ``tools`` entry for this tool."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check the model's arguments before the call; raise ToolArgumentsError with a readable reason."""
        if self._validator is None:
            return args
        from pydantic import ValidationError

        try:
            model = self._validator.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, args: dict[str, Any], context: ToolContext) -> Any:
        """Call the function; sync functions run in a worker thread so the event loop stays free."""
        if self.args_dict:
            call_args: tuple[Any, ...] = (args,)
            call_kwargs: dict[str, Any] = {}
        else:
            call_args, call_kwargs = (), dict(args)
        if self.context_param is not None:
            call_kwargs[self.context_param] = context
        if self._is_async:
            return await self.fn(*call_args, **call_kwargs)
        import asyncio  # here, not at import time: ``import timestep`` stays light

        result = await asyncio.to_thread(self.fn, *call_args, **call_kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


@runtime_checkable
class Toolset(Protocol):
    """Tools that live elsewhere (an MCP server), given to ``Agent(tools=[...])`` next to functions.

    ``toolset_tools`` is asked when the agent is built (so name clashes fail there) and again each
    time the model is called, because the list may change while a run goes on. Only the first answer
    may need I/O (an MCP server is started once to list its tools); later ones come from memory.
    ``toolset_guardrails`` are added after the agent's own guardrails: that is how a toolset asks
    for approval of the tools it knows to be dangerous.
    """

    name: str

    def toolset_tools(self) -> Sequence[Tool]: ...

    def toolset_guardrails(self) -> Sequence[InputGuardrail | OutputGuardrail]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    idempotent: bool = False,
) -> Any:
    """Turn a function into a :class:`Tool`, with options a bare function cannot express.

    ``@tool`` and ``@tool(idempotent=True)`` both work. ``idempotent=True`` tells the run loop that
    a call whose outcome was lost in a crash may simply be run again.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return build_tool(f, name=name, description=description, parameters=parameters, idempotent=idempotent)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Any) -> Tool:
    """Accept a Tool or a plain callable in ``Agent(tools=[...])``."""
    if isinstance(obj, Tool):
        return obj
    if not callable(obj):
        raise ConfigurationError(f"tool {obj!r} is not callable")
    return build_tool(obj)


def build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    idempotent: bool = False,
) -> Tool:
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not TOOL_NAME_RE.match(tool_name):
        raise ConfigurationError(f"tool name {tool_name!r} is not allowed: use 1-64 letters, digits, '_' or '-'")
    doc = inspect.getdoc(fn) or ""
    summary, param_docs = _parse_docstring(doc)
    sig = inspect.signature(fn)
    hints = _type_hints(fn, sig, tool_name)
    context_param = next((p for p in sig.parameters if hints.get(p) is ToolContext), None)
    plain = [p for p in sig.parameters.values() if p.name != context_param]
    call = getattr(fn, "__call__", None)  # noqa: B004 - a callable object's coroutine-ness lives on __call__
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
    text = description or summary or tool_name

    if _is_args_dict(plain, hints):
        schema = parameters if parameters is not None else _infer_args_dict_schema(fn, plain[0].name)
        return Tool(fn, tool_name, text, schema, idempotent, True, context_param, None, is_async)

    validator = _build_validator(tool_name, plain, hints, param_docs)
    schema = parameters if parameters is not None else _clean_schema(validator.model_json_schema())
    return Tool(fn, tool_name, text, schema, idempotent, False, context_param, validator, is_async)


def _type_hints(fn: Callable[..., Any], sig: inspect.Signature, tool_name: str) -> dict[str, Any]:
    """Resolve annotations; one that cannot be resolved is an error, never a silent ``Any``."""
    try:
        return get_type_hints(fn)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = dict(getattr(fn, "__globals__", {}))
    for p in sig.parameters.values():
        if p.annotation is inspect.Parameter.empty:
            continue
        if not isinstance(p.annotation, str):
            hints[p.name] = p.annotation
            continue
        try:
            hints[p.name] = eval(p.annotation, namespace)  # the function's own annotation, as typing would
        except Exception as exc:
            raise ConfigurationError(
                f"tool {tool_name!r}: cannot resolve the type {p.annotation!r} of parameter {p.name!r} ({exc}); "
                "define the type at module level"
            ) from None
    return hints


def _is_args_dict(params: list[inspect.Parameter], hints: dict[str, Any]) -> bool:
    if len(params) != 1:
        return False
    p = params[0]
    hint = hints.get(p.name, p.annotation)
    if hint is inspect.Parameter.empty:
        return p.name == "args"
    origin = getattr(hint, "__origin__", None)
    return hint is dict or origin is dict


def _build_validator(
    tool_name: str, params: list[inspect.Parameter], hints: dict[str, Any], docs: dict[str, str]
) -> Any:
    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigurationError(f"tool {tool_name!r}: *args/**kwargs parameters cannot be described to a model")
        annotation = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, Field(default, description=docs.get(p.name)))
    try:
        return create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )
    except Exception as exc:
        raise ConfigurationError(f"tool {tool_name!r}: cannot build a schema from its signature: {exc}") from exc


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` noise; models read descriptions, not titles."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    for sub in schema.get("$defs", {}).values():
        if isinstance(sub, dict):
            _clean_schema(sub)
    return schema


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """First paragraph as the description; ``name: text`` lines under Args/Parameters as param docs."""
    if not doc:
        return "", {}
    paragraphs = doc.split("\n\n")
    summary = " ".join(paragraphs[0].split())
    params: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.rstrip(":").lower() in ("args", "arguments", "parameters", "params"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", stripped)
            if m:
                params[m.group(1)] = m.group(2)
            elif stripped and not line.startswith((" ", "\t")):
                in_args = False
        m = re.match(r"^:param\s+(\w+):\s*(.+)$", stripped)
        if m:
            params[m.group(1)] = m.group(2)
    if summary.lower().startswith(("args:", "parameters:")):
        summary = ""
    return summary, params


def _infer_args_dict_schema(fn: Callable[..., Any], arg_name: str) -> dict[str, Any]:
    """Read the keys a seed-style tool takes out of its ``args`` dict from the function's source."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        key: str | None = None
        default: Any = ...
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == arg_name
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            key = node.slice.value
            if key not in required:
                required.append(key)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == arg_name
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            key = node.args[0].value
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                default = node.args[1].value
        if key is None:
            continue
        prop = properties.setdefault(key, {})
        json_type = _JSON_TYPES.get(type(default))
        if json_type and "type" not in prop:
            prop["type"] = json_type
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def render_result(value: Any) -> str:
    """What the model reads: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return valid_text(value)
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        return valid_text(str(dump()))
    try:
        return valid_text(json.dumps(value, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return valid_text(str(value))


def valid_text(text: str) -> str:
    """Text that can be stored and sent as UTF-8: a lone surrogate (an undecodable file name, say)
    becomes an escape instead of an error that would lose the result of a tool that already ran."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
