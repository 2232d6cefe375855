"""What ``chat`` and ``run`` share before the first message: the agent, the store, the endpoint, the conversation.

The order matters to a person who got something wrong: the agent file is checked first, then the
store (an unknown ``--store`` is reported before a missing key is), then the endpoint. Each step
fails with one :class:`click.ClickException` line.

A conversation is picked by ``-c`` (the agent's latest), by ``--conversation ID`` (that one if it
exists, else a new one under that id) or not at all (a new one with a generated id).
:meth:`ChatOptions.resume_command` repeats every option a later command needs to find the same
conversation with the same model and endpoint, so the hint it prints works as printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import shlex
import time
from dataclasses import dataclass

import click

from ..agent import Agent
from ..approvals import load
from ..model import DEFAULT_BASE_URL, ModelClient
from ..sessions import Session, Store
from .app import DEFAULT_STORE
from .loading import make_client, with_model


@dataclass(frozen=True)
class ChatOptions:
    """The options of ``timestep chat`` and ``timestep run``, as click parsed them."""

    conversation: str | None = None
    continue_latest: bool = False
    store: str = DEFAULT_STORE
    system: str | None = None
    no_stream: bool = False
    offline: bool = False
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    base_url_from_env: bool = False  # OPENAI_BASE_URL: the hint need not repeat it
    mcp: tuple[str, ...] = ()  # MCP servers whose tools the agent also gets

    def resume_command(self, spec: str, conversation_id: str) -> str:
        """``timestep chat SPEC --conversation ID`` plus whatever else this invocation relied on.

        The API key is never repeated: it is a secret, and its environment variable still holds it.
        """
        words = ["timestep", "chat", spec, "--conversation", conversation_id]
        if self.store != DEFAULT_STORE:
            words += ["--store", self.store]
        if self.model:
            words += ["--model", self.model]
        if self.offline:
            words.append("--offline")
        elif self.base_url and not self.base_url_from_env and self.base_url.rstrip("/") != DEFAULT_BASE_URL:
            words += ["--base-url", self.base_url]
        if self.system is not None:
            words += ["--system", self.system]
        for server in self.mcp:
            words += ["--mcp", server]
        return shlex.join(words)


def new_conversation_id() -> str:
    """Sortable by time, short enough to type, unique enough for one person's conversations."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def prepare_agent(agent: Agent, options: ChatOptions) -> Agent:
    """The agent with ``--model`` (for it and its delegates) and ``--system`` (for it alone) applied."""
    if options.model:
        agent = with_model(agent, options.model)
    if options.system is not None:
        agent = dataclasses.replace(agent, instructions=options.system)
    if options.mcp:
        try:
            from ..mcp import mcp_server
        except ImportError as exc:
            raise click.ClickException(
                f"--mcp needs the MCP SDK ({exc.name} is missing): pip install -e '.[mcp]' in a Timestep checkout"
            ) from None
        agent = dataclasses.replace(agent, tools=[*agent.tools, *(mcp_server(spec) for spec in options.mcp)])
    return agent


def open_endpoint(options: ChatOptions, stack: contextlib.ExitStack) -> ModelClient:
    """``--offline`` serves the built-in scripted model on loopback; otherwise the configured endpoint."""
    if options.offline:
        from ..testing import TestServer
        from ..testing.offline import offline_model

        server = stack.enter_context(TestServer(responder=offline_model))
        return ModelClient(base_url=server.base_url, api_key="offline")
    return make_client(options.base_url, options.api_key)


async def has_history(session: Session) -> bool:
    """Whether anything beyond the system message was ever stored."""
    messages, journal = await load(session)
    return bool(journal) or any(m.get("role") not in (None, "system") for m in messages)


async def pick_conversation(store: Store, agent: Agent, options: ChatOptions) -> tuple[str, bool]:
    """The conversation id to use, and whether it already holds a conversation."""
    if options.continue_latest and options.conversation:
        raise click.UsageError("give -c (the latest conversation) or --conversation ID, not both")
    if options.continue_latest:
        latest = next(
            (
                c
                for c in await store.list_conversations()
                if c.agent_name == agent.name and "~" not in c.conversation_id  # not a delegate's side
            ),
            None,
        )
        if latest is None:
            raise click.ClickException(
                f"no conversation with {agent.name} in {store.describe()} to continue (leave out -c to start one)"
            )
        return latest.conversation_id, True
    if options.conversation:
        session = store.session(agent.name, options.conversation, agent.instructions)
        return options.conversation, await has_history(session)
    return new_conversation_id(), False


async def forget_if_unanswered(store: Store, agent: Agent, conversation_id: str) -> bool:
    """Remove a conversation the model never answered in (its first turn failed); True if removed.

    A failed first message (a wrong key, a bad URL) would otherwise leave a two-message conversation
    that looks like one that happened. The message itself is not lost: it is in the prompt history
    of ``chat``, and on the command line or in the pipe of ``run``.
    """
    messages, journal = await load(store.session(agent.name, conversation_id, agent.instructions))
    if journal or any(m.get("role") == "assistant" for m in messages):
        return False
    return await store.delete(agent.name, conversation_id)
