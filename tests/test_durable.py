"""Durable runs on DBOS: worker processes on the local PostgreSQL, one of them killed mid-run.

Each test module run gets a database of its own (``timestep_dbos_<random>``, dropped at the end),
so concurrent test runs never meet. Workers are real ``timestep worker`` processes; the model is
the test server in this process, reached over HTTP; side effects are counted in a file the tool
appends to, outside the library.
"""

from __future__ import annotations

import asyncio
import collections
import json
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
from click.testing import CliRunner

from tests.durable_app import assistant
from timestep import FileSession, ModelClient, PostgresSession, RunConfig, run_agent
from timestep.cli.app import cli
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

    def start(self, n: int, *options: str) -> None:
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
                "--lease-ttl", "2", "--dead-after", "3", *options,
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


async def test_sessions_list_shows_each_conversations_newest_durable_run(cluster: Cluster, tmp_path: Path) -> None:
    from timestep.durable import DurableClient

    client = await _client(cluster.url)
    idle = await DurableClient.connect(cluster.url, queue="no-worker-takes-this")
    try:
        paused = await client.start(AGENT, [{"role": "user", "content": "approve me later"}], "listed-paused")
        assert (await paused.result())["status"] == "interrupted"
        done = await client.start(AGENT, [{"role": "user", "content": "note listed"}], "listed-done")
        assert (await done.result())["status"] == "completed"
        assert await (await client.start(AGENT, [{"role": "user", "content": "a"}], "listed-later")).result()
        waiting = await idle.start(AGENT, [{"role": "user", "content": "b"}], "listed-later")  # its newest run
        assert await waiting.state() == "queued"
    finally:
        await idle.close()
        await client.close()

    def listing(*extra: str) -> str:
        result = CliRunner().invoke(cli, ["sessions", "list", "--limit", "0", *extra])
        assert result.exit_code == 0, result.output
        return result.output

    rows = json.loads(await asyncio.to_thread(listing, "--store", cluster.url, "--json"))
    runs = {r["conversation_id"]: r.get("run") for r in rows if r["conversation_id"].startswith("listed-")}
    assert runs == {"listed-paused": "interrupted", "listed-done": "completed", "listed-later": "queued"}
    table = (await asyncio.to_thread(listing, "--store", cluster.url)).splitlines()
    assert table[0].split()[:5] == ["AGENT", "CONVERSATION", "MESSAGES", "LAST", "UPDATE"] and "RUN" in table[0]
    assert any("listed-paused" in line and "interrupted" in line for line in table)

    # Any other store: no RUN column, and DBOS is not even imported.
    filed = FileSession(AGENT, "filed", assistant.instructions, storage_dir=tmp_path)
    model = ModelClient(base_url=cluster.model.base_url, api_key="sk-test")
    await run_agent(assistant, [{"role": "user", "content": "hi"}], filed, client=model)
    script = (
        "import sys; from click.testing import CliRunner; from timestep.cli.app import cli; "
        f"r = CliRunner().invoke(cli, ['sessions', 'list', '--store', {str(tmp_path)!r}]); "
        "print(r.exit_code, 'dbos' in sys.modules); print(r.output)"
    )
    other = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    status, rest = other.stdout.split("\n", 1)
    assert status == "0 False" and "filed" in rest and "RUN" not in rest


async def test_a_worker_killed_mid_run_loses_nothing_and_runs_no_tool_twice(cluster: Cluster) -> None:
    client = await _client(cluster.url)
    before = len(cluster.effects_lines())
    try:
        runs = [
            await client.start(AGENT, [{"role": "user", "content": f"note {i}"}], f"conv-{i}")
            for i in range(CONVERSATIONS)
        ]
        # Killed mid-run: a quarter of the conversations done, and some of its own runs under way.
        victim_id = cluster.logs[0].read_text().split()[1]
        while len(cluster.effects_lines()) - before < CONVERSATIONS // 4 or not await client._dbos.list_workflows_async(
            status="PENDING", executor_id=victim_id, load_input=False, load_output=False
        ):
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


PACED_LIMIT, PACED_PERIOD, PACED_CONVERSATIONS, PACED_WORKERS, PACED_CONCURRENCY = 6, 1.0, 24, 2, 4


class Timed:
    """``tool_then_answer``, noting when each request reached the server and for which conversation."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    def __call__(self, body: dict[str, Any]) -> Reply:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        self.seen.append((time.monotonic(), user))
        return tool_then_answer(body)


async def test_model_requests_keep_within_the_model_rate_across_workers(database: str, tmp_path: Path) -> None:
    """Two workers, one limit: no window of PACED_PERIOD seconds holds more than PACED_LIMIT requests
    at the model server, and runs of different conversations take turns."""
    timed = Timed()
    with TestServer(responder=timed) as model:
        paced = Cluster(database, model, tmp_path)
        paced.start(
            PACED_WORKERS, "--queue", "paced", "--concurrency", str(PACED_CONCURRENCY),
            "--model-rate", f"{PACED_LIMIT}/{PACED_PERIOD}",
        )  # fmt: skip
        try:
            results = await _paced_runs(database)
        finally:
            paced.stop()
    assert [r["status"] for r in results] == ["completed"] * PACED_CONVERSATIONS
    times = sorted(t for t, _ in timed.seen)
    assert len(times) == 2 * PACED_CONVERSATIONS
    busiest = max(sum(1 for u in times if t <= u < t + PACED_PERIOD) for t in times)
    assert busiest <= PACED_LIMIT, f"{busiest} model requests in {PACED_PERIOD} s"
    # Fair turns: between a conversation's two requests, each other run in flight got at most one
    # turn (the permits are first come, first served), not the whole backlog.
    order = [user for _, user in sorted(timed.seen)]
    in_flight = PACED_WORKERS * PACED_CONCURRENCY
    for user in set(order):
        first, second = (i for i, u in enumerate(order) if u == user)
        assert second - first <= 2 * in_flight, (user, second - first)


async def _paced_runs(url: str) -> list[dict[str, Any]]:
    from timestep.durable import DurableClient

    async with await DurableClient.connect(url, queue="paced") as client:
        runs = [
            await client.start(AGENT, [{"role": "user", "content": f"paced {i}"}], f"paced-{i}")
            for i in range(PACED_CONVERSATIONS)
        ]
        return list(await asyncio.gather(*(r.result() for r in runs)))


async def test_runs_queued_before_any_worker_exists_run_when_one_starts(database: str, tmp_path: Path) -> None:
    """A backlog queued while no worker has registered the queue yet is run once a worker starts."""
    from timestep.durable import DurableClient

    with TestServer(responder=tool_then_answer) as model:
        async with await DurableClient.connect(database, queue="early") as client:
            runs = [
                await client.start(AGENT, [{"role": "user", "content": f"early {i}"}], f"early-{i}") for i in range(3)
            ]
            assert {await r.state() for r in runs} == {"queued"}
            late = Cluster(database, model, tmp_path)
            late.start(1, "--queue", "early")
            try:
                done = await asyncio.wait_for(asyncio.gather(*(r.result() for r in runs)), 120)  # a hang guard
            finally:
                late.stop()
    assert [r["status"] for r in done] == ["completed"] * 3
