"""The Agent: a model, its instructions, its tools, its delegates and its guardrails.

An Agent is plain configuration: it holds no conversation state (that lives in a session), so one
Agent can serve any number of conversations at once. Everything that could make a run fail later
(an empty model, a duplicate tool name, a handoff that is not an Agent) fails here instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError
from .guardrails import AnswerGuardrail, InputGuardrail, MessageGuardrail, OutputGuardrail
from .handoffs import handoff_tool_name, handoff_tool_spec
from .tools import Tool, Toolset, as_tool

if TYPE_CHECKING:
    from .output import OutputMode, OutputSpec


@dataclass(eq=False)
class Agent:
    """An LLM with instructions, tools, agents it may hand off to, and guardrails on its tool calls.

    ``model_settings`` is passed through to the Chat Completions request (``temperature``,
    ``max_tokens``...), so any option the endpoint accepts is available without a new parameter.
    ``output_type`` makes the final answer typed (see :mod:`timestep.output`). ``guardrails`` takes
    all four kinds: :class:`InputGuardrail`/:class:`OutputGuardrail` around tool calls,
    :class:`MessageGuardrail` on incoming user messages and :class:`AnswerGuardrail` on answers.
    """

    name: str
    model: str
    instructions: str | None = None
    tools: Sequence[Any] = ()
    handoffs: Sequence[Agent] = ()
    guardrails: Sequence[InputGuardrail | OutputGuardrail | MessageGuardrail | AnswerGuardrail] = ()
    model_settings: dict[str, Any] = field(default_factory=dict)
    output_type: Any = None
    output_mode: OutputMode = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError("Agent name must be a non-empty string")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError(f"Agent {self.name!r}: model must be a non-empty string")
        self.tools = list(self.tools)
        self.handoffs = list(self.handoffs)
        self.guardrails = list(self.guardrails)
        self._tools: dict[str, Tool] = {}
        self._handoffs: dict[str, Agent] = {}
        self._toolsets: list[Toolset] = [raw for raw in self.tools if isinstance(raw, Toolset)]
        for raw in self.tools:
            if isinstance(raw, Toolset):
                continue
            t = as_tool(raw)
            self._claim(t.name, f"tool {t.name!r}")
            self._tools[t.name] = t
        self._own_tool_names = set(self._tools)
        for toolset in self._toolsets:
            for t in toolset.toolset_tools():
                self._claim(t.name, f"tool {t.name!r} of {toolset.name!r} (give it a prefix)")
                self._tools[t.name] = t
        for target in self.handoffs:
            if not isinstance(target, Agent):
                raise ConfigurationError(f"Agent {self.name!r}: handoff {target!r} is not an Agent")
            tool_name = handoff_tool_name(target.name)
            self._claim(tool_name, f"handoff to {target.name!r}")
            self._handoffs[tool_name] = target
        for g in self.guardrails:
            if not isinstance(g, InputGuardrail | OutputGuardrail | MessageGuardrail | AnswerGuardrail):
                raise ConfigurationError(
                    f"Agent {self.name!r}: guardrail {g!r} is not an InputGuardrail, OutputGuardrail, "
                    "MessageGuardrail or AnswerGuardrail"
                )
        self.output = self._output_spec()
        for toolset in self._toolsets:  # once: a copy made with dataclasses.replace already has them
            self.guardrails.extend(g for g in toolset.toolset_guardrails() if g not in self.guardrails)
        self._tool_specs = [t.spec() for t in self._tools.values()] + [
            handoff_tool_spec(name, target) for name, target in self._handoffs.items()
        ]

    def _output_spec(self) -> OutputSpec | None:
        if self.output_type is None:
            return None
        from .output import FINAL_ANSWER_TOOL, output_spec

        if self.output_mode not in ("auto", "json_schema", "tool"):
            raise ConfigurationError(
                f"Agent {self.name!r}: output_mode must be 'auto', 'json_schema' or 'tool', got {self.output_mode!r}"
            )
        self._claim(FINAL_ANSWER_TOOL, "the final-answer tool of output_type")
        return output_spec(self.output_type)

    def _claim(self, tool_name: str, what: str) -> None:
        if tool_name in self._tools or tool_name in self._handoffs:
            raise ConfigurationError(
                f"Agent {self.name!r}: {what} would be named {tool_name!r}, which another tool or handoff "
                "already uses; rename one of them"
            )

    def _refresh(self) -> None:
        """Take in a toolset's changed list: a tool that is gone goes, one whose name is taken is left out."""
        tools = {name: t for name, t in self._tools.items() if name in self._own_tool_names}
        for toolset in self._toolsets:
            for t in toolset.toolset_tools():
                if t.name not in tools and t.name not in self._handoffs:
                    tools[t.name] = t
        if [(n, id(t)) for n, t in tools.items()] != [(n, id(t)) for n, t in self._tools.items()]:
            self._tools = tools
            self._tool_specs = [t.spec() for t in tools.values()] + [
                handoff_tool_spec(name, target) for name, target in self._handoffs.items()
            ]

    @property
    def tool_specs(self) -> list[dict[str, Any]]:
        """The ``tools`` list sent to the model: this agent's tools and one transfer tool per handoff."""
        if self._toolsets:
            self._refresh()
        return self._tool_specs

    def get_tool(self, name: str) -> Tool | None:
        if self._toolsets:
            self._refresh()
        return self._tools.get(name)

    @property
    def message_guardrails(self) -> list[MessageGuardrail]:
        return [g for g in self.guardrails if isinstance(g, MessageGuardrail)]

    @property
    def answer_guardrails(self) -> list[AnswerGuardrail]:
        return [g for g in self.guardrails if isinstance(g, AnswerGuardrail)]

    def get_handoff(self, name: str) -> Agent | None:
        return self._handoffs.get(name)

    @property
    def tool_names(self) -> list[str]:
        if self._toolsets:
            self._refresh()
        return [*self._tools, *self._handoffs]

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model!r}, tools={self.tool_names!r})"
