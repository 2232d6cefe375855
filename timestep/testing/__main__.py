"""Run the Chat Completions test server as a foreground process.

Benchmarks run the server in its own process so that its CPU time does not
compete with the client being measured (both would otherwise share one GIL)::

    python -m timestep.testing --port 8123 --latency 0.1 \\
        --responder timestep.testing:tool_then_answer --no-record

Without ``--responder`` it answers with :func:`timestep.testing.offline.offline_model`, so
``timestep chat agents.py:bot --base-url http://127.0.0.1:8123/v1`` works against it as it is.

It prints ``listening on http://HOST:PORT/v1`` once connections are accepted
(callers wait for that line instead of polling the port), serves until SIGTERM
or SIGINT and then exits with status 0. The server runs on the main thread's
event loop; no background thread is needed in a dedicated process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Sequence

from timestep.testing.offline import offline_model
from timestep.testing.server import Responder, TestServer


def _load_responder(spec: str) -> Responder:
    """Resolve ``package.module:function`` to the callable."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise argparse.ArgumentTypeError(f"expected package.module:function, got {spec!r}")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise argparse.ArgumentTypeError(f"{spec} is not callable")
    responder: Responder = target
    return responder


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m timestep.testing",
        description="Serve an OpenAI-compatible Chat Completions test server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds to wait before every reply (default: %(default)s)"
    )
    parser.add_argument(
        "--responder",
        type=_load_responder,
        default=offline_model,
        metavar="MODULE:FUNCTION",
        help="callable(body) -> Reply answering every request, e.g. timestep.testing:tool_then_answer "
        "(default: timestep.testing.offline:offline_model, which repeats what it is told and calls a tool "
        "when the message names it)",
    )
    parser.add_argument("--no-record", dest="record", action="store_false", help="do not keep requests in memory")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer API_KEY'")
    return parser.parse_args(argv)


async def _serve(server: TestServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except NotImplementedError:  # Windows: no loop signal handlers
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))
    await server._open()
    try:
        print(f"listening on {server.base_url}", flush=True)
        await stop.wait()
    finally:
        await server._close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    server = TestServer(
        host=args.host,
        port=args.port,
        responder=args.responder,
        api_key=args.api_key,
        latency=args.latency,
        record=args.record,
    )
    asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
