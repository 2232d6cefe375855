"""``timestep serve``: the agents behind an HTTP API and the web chat, served by uvicorn.

The command only configures: it loads the agents, picks the model endpoint and the token, and
hands :func:`timestep.server.create_app` to uvicorn. Bound to a loopback address the API is open
to this machine only; bound to any other, a bearer token is required: ``$TIMESTEP_SERVE_TOKEN``,
or one made now and printed once, on stderr (it is never logged).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
from typing import Any

import click

TOKEN_ENV = "TIMESTEP_SERVE_TOKEN"
# As the other commands have them; repeated, not imported, so that this module and cli/app.py
# (which registers it) do not import each other.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
STORE_HELP = (
    "Where conversations live: a folder, sqlite:file.db, sqlite:///abs/path.db or postgresql://... "
    "[default: conversations; env: TIMESTEP_STORE]"
)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    group = ctx.find_root().command
    if value and hasattr(group, "debug"):
        group.debug = True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def pick_token(host: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str | None, bool]:
    """The token to require, and whether it was made here (and must be shown to the person once)."""
    given = environ.get(TOKEN_ENV) or None
    if given is not None or is_loopback(host):
        return given, False
    return secrets.token_urlsafe(24), True


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn, so that an address in use is one clear error."""
    address = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        hint = "; choose another with --port" if exc.errno == errno.EADDRINUSE else "; check --host and --port"
        raise click.ClickException(f"cannot listen on {shown}: {why}{hint}") from None
    sock.set_inheritable(True)
    return sock


@click.command("serve", context_settings=CONTEXT)
@click.argument("agents", nargs=-1, required=True, metavar="FILE.py:NAME|MODULE:NAME...")
@click.option("--store", metavar="STORE", default="conversations", envvar="TIMESTEP_STORE", help=STORE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; any but loopback needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind.")
@click.option("--offline", is_flag=True, help="Use the built-in scripted model (no key, no network) instead.")
@click.option("-m", "--model", metavar="NAME", help="Model name to use instead of the agents' own.")
@click.option(
    "--base-url",
    metavar="URL",
    envvar="OPENAI_BASE_URL",
    help="An OpenAI-compatible endpoint, e.g. http://localhost:11434/v1. [env: OPENAI_BASE_URL]",
)
@click.option("--api-key", metavar="KEY", envvar="OPENAI_API_KEY", help="API key. [env: OPENAI_API_KEY]")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show the full traceback when something fails.",
)
def serve(agents: tuple[str, ...], store: str, host: str, port: int, offline: bool, **endpoint: Any) -> None:
    """Serve agents: a web chat at / and a JSON API under /api (OpenAPI at /api/docs).

    Runs go on when a browser leaves, and a person approves, declines or edits the calls that wait,
    from the page or the API. A token is required when bound to an address other than loopback:
    $TIMESTEP_SERVE_TOKEN, or one printed once at start.

    \b
    Examples:
      timestep serve agents.py:assistant
      timestep serve agents.py:assistant agents.py:support --store sqlite:chats.db
      TIMESTEP_SERVE_TOKEN=... timestep serve agents.py:assistant --host 0.0.0.0 --port 8080
    """
    try:
        import uvicorn

        from ..server import create_app
    except ImportError as exc:
        raise click.ClickException(
            "timestep serve needs the serve extra: pip install -e '.[serve]' in a Timestep checkout"
        ) from exc
    from ..sessions import open_store
    from .loading import load_agent, with_model
    from .setup import ChatOptions, open_endpoint

    model = endpoint.get("model")
    loaded = [with_model(a, model) if model else a for a in map(load_agent, agents)]
    token, made = pick_token(host)
    with contextlib.ExitStack() as stack:
        options = ChatOptions(offline=offline, base_url=endpoint.get("base_url"), api_key=endpoint.get("api_key"))
        client = open_endpoint(options, stack)
        app = create_app(loaded, store=open_store(store), client=client, token=token)
        sock = stack.enter_context(listen(host, port))
        port = sock.getsockname()[1]
        where = f"http://{host}:{port}/"
        click.echo(f"serving {', '.join(a.name for a in loaded)} at {where} (API: {where}api/docs)", err=True)
        if made:
            click.echo(f"bearer token (shown once; set {TOKEN_ENV} to choose one): {token}", err=True)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="info", server_header=False, timeout_graceful_shutdown=5
        )
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        if not server.started:
            raise click.ClickException(f"the server at {where} did not start (see the lines above)")
