"""Durable runs on DBOS: worker processes on the local PostgreSQL, one of them killed mid-run.

Each test module run gets a database of its own (``timestep_dbos_<random>``, dropped at the end),
so concurrent test runs never meet. Workers are real ``timestep worker`` processes; the model is
the test server in this process, reached over HTTP; side effects are counted in a file the tool
appends to, outside the library.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from timestep import FileSession, ModelClient, PostgresSession, RunConfig, run_agent
from timestep.testing import Reply, TestServer, ToolCall, tool_then_answer

from .stores_fixtures import ROOT, require_postgres, run_apart

try:
    import dbos  # noqa: F401  # the dbos extra
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # installed by .ci/run through the dev extra: missing here is a failure, not a skip
    pytest.skip("the dbos extra is not installed (pip install -e '.[dbos]')", allow_module_level=True)

AGENT = "Recorder"
WORKERS = 3
CONVERSATIONS = 200


async def test_message_key_stores_the_messages_once(server: TestServer, client: ModelClient, tmp_path: Path) -> None:
    """A run retried after a crash passes the same key: the user's message must not be stored twice."""
    from tests.durable_app import assistant

    session = FileSession(assistant.name, "keyed", assistant.instructions, storage_dir=tmp_path)
    server.script(Reply.text("first"), Reply.text("second"))
    config = RunConfig(message_key="run-1")
    hello = [{"role": "user", "content": "hello"}]
    await run_agent(assistant, hello, session, client=client, config=config)
    await run_agent(assistant, hello, session, client=client, config=config)
    users = [m for m in await session.get_items() if m["role"] == "user"]
    assert users == hello
    other = await run_agent(assistant, hello, session, client=client, config=RunConfig(message_key="run-2"))
    assert other["final_output"] == "second"
    assert len([m for m in await session.get_items() if m["role"] == "user"]) == 2
    server.script(Reply.tool_calls(ToolCall("record_effect", {"note": "x"})))  # unused: nothing is sent again
    assert server.pending == 1


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    base = require_postgres()
    name = f"timestep_dbos_{uuid.uuid4().hex[:12]}"
    admin = base.rsplit("/", 1)[0] + "/postgres"

    async def sql(statement: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    run_apart(lambda: sql(f"CREATE DATABASE {name}"))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        run_apart(lambda: sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class Cluster:
    def __init__(self, url: str, model: TestServer, folder: Path) -> None:
        self.url = url
        self.model = model
        self.folder = folder
        self.effects = folder / "effects.log"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, n: int) -> None:
        env = {
            **os.environ,
            "OPENAI_BASE_URL": self.model.base_url,
            "OPENAI_API_KEY": "sk-test",
            "TIMESTEP_EFFECTS": str(self.effects),
        }
        for k in range(n):
            log = self.folder / f"worker{k}.log"
            command = [
                sys.executable, "-c", "from timestep.cli import main; main()", "worker",
                "tests/durable_app.py:assistant", "--store", self.url, "--concurrency", "8",
                "--lease-ttl", "2", "--dead-after", "3",
            ]  # fmt: skip
            with log.open("wb") as out:
                self.workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out))
            self.logs.append(log)
        for log, proc in zip(self.logs, self.workers, strict=True):
            while b" running " not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)

    def effects_lines(self) -> list[str]:
        return self.effects.read_text().split() if self.effects.exists() else []

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with TestServer(responder=tool_then_answer) as model:
        c = Cluster(database, model, tmp_path_factory.mktemp("durable"))
        c.start(WORKERS)
        try:
            yield c
        finally:
            c.stop()


async def _client(url: str) -> Any:
    from timestep.durable import DurableClient

    return await DurableClient.connect(url)


async def test_an_approval_from_another_process_resumes_a_run_no_worker_holds(cluster: Cluster) -> None:
    client = await _client(cluster.url)
    try:
        run = await client.start(AGENT, [{"role": "user", "content": "please approve this"}], "needs-approval")
        paused = await run.result()
        assert paused["status"] == "interrupted"
        assert await run.state() == "interrupted"  # the workflow ended: no worker holds the run
        (waiting,) = paused["interruptions"]
        assert waiting["tool_call_id"] not in cluster.effects_lines()
        decided = subprocess.run(
            [sys.executable, "tests/durable_decide.py", cluster.url, "needs-approval", waiting["tool_call_id"]],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        resumed = client.run(decided.stdout.strip())
        done = await resumed.result()
        assert done["status"] == "completed"
        assert done["final_output"] == "Done: recorded please approve this"
        assert cluster.effects_lines().count(waiting["tool_call_id"]) == 1
        kinds = [e["type"] async for e in resumed.events()]
        assert kinds[0] == "run_start" and kinds[-1] == "run_end" and "tool_result" in kinds
        states = {(r.conversation_id, r.state) for r in await client.runs()}
        assert {("needs-approval", "interrupted"), ("needs-approval", "completed")} <= states
    finally:
        await client.close()


async def test_a_worker_killed_mid_run_loses_nothing_and_runs_no_tool_twice(cluster: Cluster) -> None:
    client = await _client(cluster.url)
    before = len(cluster.effects_lines())
    try:
        runs = [
            await client.start(AGENT, [{"role": "user", "content": f"note {i}"}], f"conv-{i}")
            for i in range(CONVERSATIONS)
        ]
        while len(cluster.effects_lines()) - before < CONVERSATIONS // 4:
            await asyncio.sleep(0.02)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        results = await asyncio.gather(*(r.result() for r in runs))
        # A call cut short between its journal record and its result is an unknown outcome: it waits
        # for a person, who declines running it again here, from this process.
        unknown = [
            (i, r["interruptions"][0]["tool_call_id"]) for i, r in enumerate(results) if r["status"] == "interrupted"
        ]
        for i, call_id in unknown:
            assert results[i]["interruptions"][0]["kind"] == "unknown_outcome"
            results[i] = await (await client.resume(AGENT, f"conv-{i}", {call_id: "do not run it again"})).result()
        assert [r["status"] for r in results] == ["completed"] * CONVERSATIONS
    finally:
        await client.close()

    recovered = [log for log in cluster.logs[1:] if b"recovered" in log.read_bytes()]
    assert recovered, "no live worker recovered the killed worker's runs"
    effects = collections.Counter(cluster.effects_lines()[before:])
    assert max(effects.values()) == 1  # no tool ran twice
    calls = 0
    for i in range(CONVERSATIONS):
        session = PostgresSession(AGENT, f"conv-{i}", url=cluster.url)
        roles = [m["role"] for m in await session.get_items()]
        assert roles == ["system", "user", "assistant", "tool", "assistant"], (i, roles)  # nothing lost, nothing twice
        call_id = (await session.get_items())[2]["tool_calls"][0]["id"]
        calls += effects[call_id]
    assert calls == len(effects)  # every side effect belongs to one of these conversations
    await PostgresSession.close_pools(cluster.url)
