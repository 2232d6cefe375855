"""What a run used (model calls, tool calls, tokens, cost) and the limits that end it.

One :class:`Usage` is shared by every level of a run (the caller and its delegates), so a limit is a
budget for the whole run, and the totals it reports name each model and each agent. Limits are
checked where going on would break them: before a model call or a batch of tool calls that would
exceed a count, and after each reply for tokens and cost (a reply's size is only known once it has
come). Hitting one raises :class:`~timestep.exceptions.UsageLimitExceeded` after everything so far
is stored, so the session stays valid and a run with a higher limit continues from it.

The session keeps each reply's usage as a ``usage`` journal record written with the reply itself,
so totals can be read back later (``timestep sessions show``) without the process that ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError, UsageLimitExceeded

TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class UsageLimits:
    """The most one run may use; ``None`` is no limit.

    ``input_tokens`` and ``output_tokens`` are the API's ``prompt_tokens`` and ``completion_tokens``.
    ``cost`` is in the currency of ``RunConfig.prices``, and needs a price for every model the run uses.
    """

    model_calls: int | None = None
    tool_calls: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ConfigurationError(f"UsageLimits.{name} must be a number >= 0 or None, got {value!r}")


@dataclass(frozen=True)
class Price:
    """What a model costs per million input and output tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in (self.input, self.output)):
            raise ConfigurationError(f"a Price is two numbers >= 0 per million tokens, got {self}")

    def of(self, used: Mapping[str, Any]) -> float:
        tokens_in, tokens_out = int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0)
        return (self.input * tokens_in + self.output * tokens_out) / 1e6


@dataclass
class Usage:
    """The running totals of one run, its delegates' included, checked against its limits."""

    limits: UsageLimits = field(default_factory=UsageLimits)
    prices: Mapping[str, Price] = field(default_factory=dict)
    model_calls: int = 0
    tool_calls: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    by_agent: dict[str, dict[str, int]] = field(default_factory=dict)
    cost: float = 0.0

    def before_model_call(self) -> None:
        limit = self.limits.model_calls
        if limit is not None and self.model_calls + 1 > limit:
            raise UsageLimitExceeded("model_calls", limit, self.model_calls + 1)
        self.model_calls += 1

    def before_tool_calls(self, count: int) -> None:
        limit = self.limits.tool_calls
        if limit is not None and count and self.tool_calls + count > limit:
            raise UsageLimitExceeded("tool_calls", limit, self.tool_calls + count)
        self.tool_calls += count

    def add(self, agent: str, model: str, used: Mapping[str, Any] | None) -> dict[str, Any]:
        """Count one reply; the journal record that keeps it in the session."""
        tokens = {k: int((used or {}).get(k) or 0) for k in TOKEN_KEYS}
        for totals in (self.tokens, self.by_model.setdefault(model, {}), self.by_agent.setdefault(agent, {})):
            totals["model_calls"] = totals.get("model_calls", 0) + 1
            for k, v in tokens.items():
                totals[k] = totals.get(k, 0) + v
        price = self.prices.get(model)
        if price is not None:
            self.cost += price.of(tokens)
        elif self.limits.cost is not None:
            raise ConfigurationError(f"a cost limit is set but RunConfig.prices has no price for model {model!r}")
        return {"journal": "usage", "agent": agent, "model": model, **tokens}

    def check_tokens(self) -> None:
        """After a reply: end the run if it went over a token or cost budget."""
        limits, tokens = self.limits, self.tokens
        for name, key in (
            ("input_tokens", "prompt_tokens"),
            ("output_tokens", "completion_tokens"),
            ("total_tokens", "total_tokens"),
        ):
            limit = getattr(limits, name)
            if limit is not None and tokens.get(key, 0) > limit:
                raise UsageLimitExceeded(name, limit, tokens[key])
        if limits.cost is not None and self.cost > limits.cost:
            raise UsageLimitExceeded("cost", limits.cost, round(self.cost, 6))

    def summary(self) -> dict[str, Any]:
        """The run's totals, per model and per agent, as the result's ``usage``."""
        out: dict[str, Any] = {k: self.tokens.get(k, 0) for k in TOKEN_KEYS}
        out.update(
            model_calls=self.model_calls,
            tool_calls=self.tool_calls,
            by_model={m: dict(t) for m, t in self.by_model.items()},
            by_agent={a: dict(t) for a, t in self.by_agent.items()},
        )
        if self.prices:
            out["cost"] = round(self.cost, 10)
        return out


def totals(records: Iterable[Mapping[str, Any]], prices: Mapping[str, Price] | None = None) -> dict[str, Any]:
    """Sum stored ``usage`` journal records (of one conversation and its delegates)."""
    usage = Usage(prices=prices or {})
    for r in records:
        if r.get("journal") == "usage":
            usage.add(str(r.get("agent")), str(r.get("model")), r)
    usage.model_calls = usage.tokens.get("model_calls", 0)
    return usage.summary()
