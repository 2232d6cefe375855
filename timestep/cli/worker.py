"""``timestep worker``: this process runs durable runs queued in PostgreSQL (see :mod:`timestep.durable`).

A separate module because a worker is a service, not a conversation: it loads agents, joins the
DBOS queue and serves until SIGTERM or Ctrl-C. The command itself only needs click; DBOS is
imported when the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

import click

RATE_HELP = "Start at most N runs per SECONDS across all workers, e.g. 100/60. [default: no limit]"
MODEL_RATE_HELP = "Send at most N model requests per SECONDS across all workers, e.g. 500/60. [default: no limit]"


def _rate(value: str | None, hint: str = "--rate") -> dict[str, float] | None:
    if value is None:
        return None
    count, sep, seconds = value.partition("/")
    try:
        limit, period = int(count), float(seconds) if sep else 1.0
    except ValueError:
        raise click.BadParameter(f"expected N/SECONDS, e.g. 100/60; got {value!r}", param_hint=hint) from None
    if limit < 1 or period <= 0:
        raise click.BadParameter("N must be at least 1 and SECONDS above 0", param_hint=hint)
    return {"limit": limit, "period": period}


@click.command("worker")
@click.argument("agents", nargs=-1, required=True, metavar="FILE.py:NAME | MODULE:NAME ...")
@click.option(
    "--store", metavar="URL", envvar="TIMESTEP_STORE", required=True, help="postgresql://... [env: TIMESTEP_STORE]"
)
@click.option("--queue", default="timestep", show_default=True, help="The DBOS queue to take runs from.")
@click.option("--concurrency", type=click.IntRange(1), default=8, show_default=True, help="Runs at once here.")
@click.option("--global-concurrency", type=click.IntRange(1), help="Runs at once across all workers.")
@click.option("--rate", metavar="N/SECONDS", help=RATE_HELP)
@click.option("--model-rate", metavar="N/SECONDS", help=MODEL_RATE_HELP)
@click.option("--lease-ttl", type=click.FloatRange(min=1.0), help="Seconds a dead run holds its conversation.")
@click.option(
    "--dead-after",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="Seconds without a heartbeat after which a worker counts as dead and its runs are recovered elsewhere.",
)
@click.option("--base-url", metavar="URL", envvar="OPENAI_BASE_URL", help="An OpenAI-compatible endpoint.")
@click.option("--api-key", metavar="KEY", envvar="OPENAI_API_KEY", help="API key. [env: OPENAI_API_KEY]")
def worker(agents: tuple[str, ...], store: str, **options: Any) -> None:
    """Run the durable runs queued in PostgreSQL, next to any number of other workers.

    Runs are started with timestep.durable.DurableClient (from a script, a web handler or
    another worker); this process takes them from the queue, runs them, and stores the
    conversation in the same database. A worker killed at any point has its runs finished by
    the others. Stop it with Ctrl-C or SIGTERM.

    \b
    Examples:
      timestep worker agents.py:assistant --store postgresql://localhost/app
      timestep worker agents.py:assistant agents.py:support --concurrency 16 --model-rate 600/60
    """
    if not store.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("durable runs need a postgresql:// store", param_hint="--store")
    from .loading import load_agent, make_client

    _rate(options["rate"])
    _rate(options["model_rate"], "--model-rate")  # refused before any agent is loaded
    loaded = [load_agent(spec) for spec in agents]
    client = make_client(options.pop("base_url"), options.pop("api_key"))
    asyncio.run(_serve(store, loaded, client, options))


async def _serve(store: str, agents: list[Any], client: Any, options: dict[str, Any]) -> None:
    from ..durable import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = Worker(
        store,
        agents,
        queue=options["queue"],
        worker_concurrency=options["concurrency"],
        global_concurrency=options["global_concurrency"],
        limiter=_rate(options["rate"]),
        model_limiter=_rate(options["model_rate"], "--model-rate"),
        lease_ttl=options["lease_ttl"],
        dead_after=options["dead_after"],
        client=client,
    )
    async with runner:
        names = ", ".join(a.name for a in agents)
        click.echo(f"worker {runner.executor_id} running {names} from queue {runner.queue!r}", err=True)
        sys.stderr.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()
    click.echo(f"worker {runner.executor_id} stopped", err=True)
