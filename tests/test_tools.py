"""Tool schemas from signatures and from seed-style argument dicts; validation; tool context."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from timestep import ConfigurationError, ToolContext, tool
from timestep.tools import ToolArgumentsError, as_tool, render_result


async def get_weather(city: str, unit: Literal["C", "F"] = "C", days: int = 1) -> str:
    """Current weather for a city.

    Args:
        city: The city's name.
        unit: Temperature unit.
        days (int): How many days ahead.
    """
    return city


def test_typed_schema_comes_from_signature_hints_and_docstring() -> None:
    t = as_tool(get_weather)
    assert t.name == "get_weather" and t.description == "Current weather for a city."
    assert t.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "The city's name."},
            "unit": {"type": "string", "enum": ["C", "F"], "default": "C", "description": "Temperature unit."},
            "days": {"type": "integer", "default": 1, "description": "How many days ahead."},
        },
        "required": ["city"],
    }


def test_arguments_are_validated_and_coerced_before_the_call() -> None:
    t = as_tool(get_weather)
    assert t.validate({"city": "Oslo", "days": "3"}) == {"city": "Oslo", "unit": "C", "days": 3}
    with pytest.raises(ToolArgumentsError, match="unit"):
        t.validate({"city": "Oslo", "unit": "K"})
    with pytest.raises(ToolArgumentsError, match="city: Field required"):
        t.validate({})
    with pytest.raises(ToolArgumentsError, match="Extra inputs"):
        t.validate({"city": "Oslo", "country": "NO"})


class Address(BaseModel):
    street: str
    zip_code: str


def test_nested_models_in_signatures() -> None:
    def ship(address: Address, express: bool = False) -> str:
        """Ship a parcel."""
        return address.street

    t = as_tool(ship)
    assert "$defs" in t.parameters and "Address" in t.parameters["$defs"]
    args = t.validate({"address": {"street": "Main 1", "zip_code": "0150"}})
    assert isinstance(args["address"], Address)


def test_seed_style_schema_is_inferred_from_the_keys_the_body_reads() -> None:
    async def book(args: dict) -> dict:  # type: ignore[type-arg]
        """Book a table."""
        name = args["name"]
        return {"ok": name, "size": args.get("size", 2), "note": args.get("note"), "vip": args.get("vip", False)}

    t = as_tool(book)
    assert t.args_dict and t.description == "Book a table."
    assert t.parameters == {
        "type": "object",
        "properties": {"name": {}, "size": {"type": "integer"}, "note": {}, "vip": {"type": "boolean"}},
        "required": ["name"],
    }
    assert t.validate({"anything": 1}) == {"anything": 1}  # the function owns its checks


def test_explicit_parameters_name_and_idempotent_flag() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @tool(name="search-web", parameters=schema, idempotent=True, description="Search the web.")
    async def search(args: dict) -> list:  # type: ignore[type-arg]
        return []

    assert (search.name, search.parameters, search.idempotent, search.description) == (
        "search-web",
        schema,
        True,
        "Search the web.",
    )


async def test_tool_context_is_injected_and_left_out_of_the_schema() -> None:
    async def pay(amount: int, ctx: ToolContext) -> str:
        return f"{ctx.tool_call_id}:{amount}"

    t = as_tool(pay)
    assert list(t.parameters["properties"]) == ["amount"]
    assert await t.invoke({"amount": 3}, ToolContext("call_9", "A")) == "call_9:3"


def test_bad_tools_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not allowed"):
        tool(lambda: 1, name="has space")
    with pytest.raises(ConfigurationError, match=r"\*args"):
        tool(lambda *xs: 1, name="variadic")
    with pytest.raises(ConfigurationError, match="not callable"):
        as_tool(42)

    class Local(BaseModel):
        x: int

    def uses_local(item: Local) -> int:
        return item.x

    with pytest.raises(ConfigurationError, match="cannot resolve the type 'Local'"):
        as_tool(uses_local)


def test_results_render_as_the_model_reads_them() -> None:
    class Out(BaseModel):
        n: int

    assert render_result("plain") == "plain"
    assert render_result({"a": "ü"}) == '{"a": "ü"}'
    assert render_result(Out(n=1)) == '{"n":1}'
    assert render_result([1, None]) == "[1, null]"
