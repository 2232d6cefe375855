"""Handoffs: an agent delegating a request to another agent, which keeps its own session.

For each agent in ``Agent(handoffs=[...])`` the model sees one tool, ``transfer_to_<name>`` with a
single ``message`` parameter. Calling it runs the target as a nested run in its *own* session: same
store, ``agent_name`` set to the target's name, and a conversation id derived from the caller's
(``<caller conversation>~<caller agent>``), so the delegate remembers earlier delegations in the same
conversation and a cycle (A → B → A) never shares a session with an outer run of the same agent.
The target's final answer becomes the transfer tool's result.

Guardrails flow downwards: the guardrails of every agent up the chain also govern the tools a
delegate runs (outermost first), then the delegate's own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .agent import Agent
    from .sessions.base import Session

TRANSFER_PREFIX = "transfer_to_"
HANDOFF_RECEIVED = "handoff_received"


def snake_case(name: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def handoff_tool_name(agent_name: str) -> str:
    """``"Weather Assistant"`` → ``transfer_to_weather_assistant``, within the API's 64-character limit."""
    slug = snake_case(agent_name)
    if not slug:
        raise ConfigurationError(
            f"cannot build a transfer tool name from agent name {agent_name!r}: it needs at least one "
            "ASCII letter or digit"
        )
    return (TRANSFER_PREFIX + slug)[:64].rstrip("_")


def handoff_tool_spec(tool_name: str, target: Agent) -> dict[str, Any]:
    purpose = (target.instructions or "").strip().split("\n")[0][:300]
    description = f"Hand the request over to the agent {target.name!r}"
    description += f", whose job is: {purpose}" if purpose else "."
    description += " Its answer comes back as this tool's result."
    return {
        "type": "function",
        "function": {
            "name": tool_name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "message": {
                        "type": "string",
                        "description": "The request for the other agent, with everything it needs to know.",
                    }
                },
                "required": ["message"],
            },
        },
    }


def delegate_conversation_id(conversation_id: str, caller_name: str) -> str:
    return f"{conversation_id}~{snake_case(caller_name) or 'agent'}"


def delegate_session(caller: Agent, target: Agent, session: Session) -> Session:
    """The session a handoff from ``caller`` to ``target`` runs in: same store, its own conversation."""
    derive = getattr(session, "derive", None)
    if derive is None:
        raise ConfigurationError(f"{type(session).__name__} cannot hold a delegate's session: it has no derive()")
    sub: Session = derive(
        target.name, delegate_conversation_id(session.conversation_id, caller.name), target.instructions
    )
    return sub
