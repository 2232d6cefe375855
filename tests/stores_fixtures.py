"""Shared helpers for the tests that run against every conversation store.

Every store is reached through :class:`timestep.sessions.Store`, the same face the command line
uses, so one test body covers files, SQLite and PostgreSQL. PostgreSQL tests use tables with a
prefix unique to this test run (dropped at the end), so they never meet another run's rows.

PostgreSQL is expected on ``127.0.0.1:5432`` (database ``test``, trust auth) or wherever
``TIMESTEP_TEST_POSTGRES_URL`` points. When it cannot be reached the PostgreSQL cases are skipped,
except under ``CI=true``, where a missing database must not pass silently: they fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from timestep.sessions import Store, open_store
from timestep.sessions.stores import PostgresStore

KINDS = ["file", "sqlite", "postgres"]
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent

_reachable: dict[str, str | None] = {}  # url -> None if reachable, else why not


def postgres_url() -> str:
    return os.environ.get("TIMESTEP_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def run_apart(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on its own loop in its own thread (callable from inside a loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()


def _probe(url: str) -> str | None:
    async def connect() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        run_apart(connect)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_postgres() -> str:
    """The test database's URL; skip (or, under CI=true, fail) when it cannot be reached."""
    url = postgres_url()
    if url not in _reachable:
        _reachable[url] = _probe(url)
    why = _reachable[url]
    if why is not None:
        message = (
            f"PostgreSQL is not reachable at {url} ({why}). Start PostgreSQL on 127.0.0.1:5432 "
            "(database 'test', trust auth) or set TIMESTEP_TEST_POSTGRES_URL to enable these tests."
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def drop_tables(url: str, prefix: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(
                f"DROP TABLE IF EXISTS {prefix}items, {prefix}conversations, {prefix}leases, {prefix}migrations"
            )
        finally:
            await conn.close()

    run_apart(drop)


@pytest.fixture(scope="module")
def pg_prefix() -> Iterator[str]:
    """A table prefix for this module's PostgreSQL tests; its tables are dropped afterwards."""
    prefix = f"ts_test_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    yield prefix
    url = postgres_url()
    if _reachable.get(url, "not probed") is None:
        drop_tables(url, prefix)


def make_store(kind: str, tmp_path: Path, prefix: str) -> tuple[Store, str]:
    """A store of ``kind`` and the spec a child process uses to open the same one."""
    if kind == "file":
        spec = str(tmp_path / "conversations")
        return open_store(spec), spec
    if kind == "sqlite":
        spec = f"sqlite://{tmp_path / 'conversations.db'}"
        return open_store(spec), spec
    url = require_postgres()
    return PostgresStore(url, table_prefix=prefix), url


@pytest.fixture(params=KINDS)
async def store_and_spec(
    request: pytest.FixtureRequest, tmp_path: Path, pg_prefix: str
) -> AsyncIterator[tuple[Store, str]]:
    store, spec = make_store(request.param, tmp_path, pg_prefix)
    try:
        yield store, spec
    finally:
        await store.aclose()


def unique(name: str = "conv") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


# A child process that opens the same store. It says "ready" once connected, waits for "go" on
# stdin (so two children really write at the same time), then runs its job and says "done".
CHILD_PRELUDE = """
import asyncio, json, sys
from timestep.sessions import open_store
from timestep.sessions.stores import PostgresStore

kind, spec, prefix = sys.argv[1], sys.argv[2], sys.argv[3]

def store():
    return PostgresStore(spec, table_prefix=prefix) if kind == "postgres" else open_store(spec)
"""


def child(code: str, kind: str, spec: str, prefix: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + code, kind, spec, prefix, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


def as_json_list(items: list[dict[str, Any]]) -> list[str]:
    """Items in their exact form, key order included (dict equality ignores order)."""
    import json

    return [json.dumps(i, ensure_ascii=False) for i in items]


# -- agents shared by the run tests and their child processes ------------------------------------------


def payment_agent(ledger: Path) -> Any:
    """An agent whose one tool moves money, behind a guardrail that asks a person first.

    The tool appends to ``ledger`` so a test can count how often it really ran, in any process.
    """
    import json

    from timestep import Agent, GuardrailInterrupt, InputGuardrail

    def send_money(to: str, amount: int) -> str:
        """Send money to someone."""
        with open(ledger, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"to": to, "amount": amount}) + "\n")
        return f"sent {amount} to {to}"

    def ask_first(tool_name: str, args: dict[str, Any]) -> None:
        if tool_name == "send_money":
            raise GuardrailInterrupt(f"Send {args.get('amount')} to {args.get('to')}?", tool_name, args)

    return Agent(
        name="Payer",
        model="test-model",
        instructions="You move money when asked.",
        tools=[send_money],
        guardrails=[InputGuardrail(ask_first)],
    )
