"""``timestep sessions``: list, show and delete stored conversations.

A conversation id can exist under several agents: each agent keeps its own side, and a handoff's
delegate keeps its conversation under an id ending in ``~<caller>``. ``show`` prints every agent's
side unless ``--agent`` picks one (``--json`` insists on one, so a script gets one list); ``rm``
deletes the matching sides and their delegates' conversations, after asking.

Each command does its store work in one ``asyncio.run`` and closes the store at the end, so a
database-backed store opens its connections once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.text import Text

from ..approvals import load
from ..exceptions import ConfigurationError
from ..sessions import ConversationInfo, Store, open_store
from ..usage import totals
from .app import DEFAULT_STORE
from .render import Output, conversation_table, is_tty, print_transcript, usage_lines

T = TypeVar("T")


def _with_store(spec: str, work: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(spec)

    async def go() -> T:
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


async def _matches(store: Store, spec: str, conversation: str, agent: str | None) -> list[ConversationInfo]:
    found = [c for c in await store.list_conversations() if c.conversation_id == conversation]
    if agent is not None:
        found = [c for c in found if c.agent_name == agent]
    if not found:
        whose = f" for agent {agent!r}" if agent else ""
        store_flag = f" --store {spec}" if spec != DEFAULT_STORE else ""
        raise click.ClickException(
            f"no conversation {conversation!r}{whose} in {store.describe()} (see 'timestep sessions list{store_flag}')"
        )
    return found


async def first_prompt(store: Store, info: ConversationInfo) -> str:
    """What the conversation was started with: its first user message, the closest thing to a title."""
    messages, _ = await load(store.session(info.agent_name, info.conversation_id, None))
    first = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    return first if isinstance(first, str) else json.dumps(first, ensure_ascii=False) if first else ""


async def durable_states(spec: str) -> dict[tuple[str, str], str]:
    """Each conversation's newest durable run's state, for a PostgreSQL store whose database has
    DBOS's tables (see :mod:`timestep.durable`); empty, without importing DBOS, for any other."""
    if not spec.lower().startswith(("postgresql://", "postgres://")):
        return {}
    from ..sessions.postgres import shared_pool

    pool = await shared_pool(spec)
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT to_regclass('dbos.workflow_status') IS NOT NULL"):
            return {}
    try:
        from ..durable import run_states
    except ConfigurationError:  # durable runs were made elsewhere, without the dbos extra here
        return {}
    return await run_states(spec)


def list_conversations(spec: str, agent: str | None, limit: int, as_json: bool) -> None:
    async def work(
        store: Store,
    ) -> tuple[list[tuple[ConversationInfo, str]], int, str, dict[tuple[str, str], str]]:
        found = [c for c in await store.list_conversations() if agent is None or c.agent_name == agent]
        shown = found[:limit] if limit else found
        rows = [(c, await first_prompt(store, c)) for c in shown]
        return rows, len(found) - len(shown), store.describe(), await durable_states(str(spec))

    rows, hidden, where, states = _with_store(spec, work)
    runs = {
        (c.agent_name, c.conversation_id): states[c.agent_name, c.conversation_id]
        for c, _ in rows
        if (c.agent_name, c.conversation_id) in states
    }
    if as_json:
        listing = [
            {
                "agent": c.agent_name,
                "conversation_id": c.conversation_id,
                "messages": c.message_count,
                "updated_at": c.updated_at.isoformat(),
                "first_prompt": first,
                **({"run": runs[key]} if (key := (c.agent_name, c.conversation_id)) in runs else {}),
            }
            for c, first in rows
        ]
        json.dump(listing, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    output = Output()
    if not rows:
        whose = f" for {agent}" if agent else ""
        output.note(f"No conversations{whose} in {where}.")
        return
    conversation_table(output, rows, runs)
    if hidden:  # on stderr, so the table stays a table in a pipe
        output.err.print(Text(f"{hidden} older not shown (--limit 0 lists all)", style="dim"))


def show_conversation(spec: str, conversation: str, agent: str | None, as_json: bool) -> None:
    async def work(store: Store) -> list[tuple[ConversationInfo, list[dict[str, Any]], dict[str, Any]]]:
        found = await _matches(store, spec, conversation, agent)
        if as_json and len(found) > 1:
            agents = ", ".join(c.agent_name for c in found)
            raise click.ClickException(
                f"conversation {conversation!r} exists for agents {agents}: pick one with --agent"
            )
        sides = []
        for c in found:
            messages, journal = await load(store.session(c.agent_name, c.conversation_id, None))
            used = {} if as_json else await stored_usage(store, c.agent_name, c.conversation_id)
            sides.append((c, messages if as_json else interleave(messages, journal), used))
        return sides

    sides = _with_store(spec, work)
    if as_json:
        json.dump(sides[0][1], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    output = Output()
    for n, (info, items, used) in enumerate(sides):
        if n:
            output.line()
        print_transcript(output, info.agent_name, info.conversation_id, items)
        if used.get("model_calls"):
            for line in usage_lines(used):
                output.line(line, "dim")


async def stored_usage(store: Store, agent_name: str, conversation_id: str) -> dict[str, Any]:
    """The usage recorded in a conversation and in its delegates' conversations, summed."""
    sides = [(agent_name, conversation_id)]
    sides += [(d.agent_name, d.conversation_id) for d in await store.delegates(agent_name, conversation_id)]
    records: list[dict[str, Any]] = []
    for name, cid in sides:
        _, journal = await load(store.session(name, cid, None))
        records += journal
    return totals(records)


def interleave(messages: list[dict[str, Any]], journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with each call's journal records (questions, decisions) after the call that asked them."""
    by_call: dict[str, list[dict[str, Any]]] = {}
    for record in journal:
        by_call.setdefault(str(record.get("call", "")), []).append(record)
    out: list[dict[str, Any]] = []
    for message in messages:
        out.append(message)
        for call in message.get("tool_calls") or ():
            out += by_call.pop(str(call.get("id", "")), [])
    return out


def remove_conversation(spec: str, conversation: str, agent: str | None, yes: bool) -> None:
    output = Output()

    async def work(store: Store) -> int:
        found = await _matches(store, spec, conversation, agent)
        # The delegates' conversations belong to this one (``<id>~<caller>``, nested for deeper
        # handoffs), and only those: another agent's ``<id>~abc`` is not one of them.
        doomed = list(found)
        for c in found:
            doomed += [d for d in await store.delegates(c.agent_name, c.conversation_id) if d not in doomed]
        for c in doomed:
            output.line(f"  {c.agent_name} / {c.conversation_id} ({c.message_count} messages)")
        what = "this conversation" if len(doomed) == 1 else f"these {len(doomed)} conversations"
        if not yes and not is_tty(sys.stdin):
            raise click.ClickException(f"not deleting {what} without a terminal to confirm: add --yes")
        if not yes and not click.confirm(f"Delete {what} from {store.describe()}?", default=False):
            return 0
        for c in doomed:
            await store.delete(c.agent_name, c.conversation_id)
        return len(doomed)

    deleted = _with_store(spec, work)
    if deleted:
        output.note(f"Deleted {deleted} conversation{'s' if deleted != 1 else ''}.")
    else:
        output.note("Nothing deleted.")
