"""MCP servers as toolsets: one connection per server and event loop, started when first needed.

How a server lives:

* **Listing at construction.** ``Agent(tools=[server])`` needs the server's tool names to refuse a
  clash there, not mid-run. If the list is not known yet, the server is started once in a worker
  thread with its own event loop, listed and stopped. Inside ``async with server:`` it is known
  already, and nothing extra starts.
* **Connecting on first use.** A tool call connects on the running event loop if that loop has no
  connection yet, so an agent built at import time works in any number of ``asyncio.run`` calls,
  and a call resumed in a new process starts the server afresh. ``async with server:`` (or
  ``await server.connect()`` / ``await server.close()``) holds one connection open across runs.
* **One owner task per connection.** The SDK's transports are anyio context managers that must be
  entered and left by the same task, so a small task enters them, then sleeps until it is told to
  refresh the tool list (the server said it changed) or to stop. Whoever closes only wakes it. When
  the loop ends (``asyncio.run`` returning, Ctrl-C, an error) that task is cancelled with the rest
  and leaves the transport, which stops the subprocess: no finalizer does I/O.
* **Failures are tool errors.** A server that will not start, dies during a call, does not answer
  within ``timeout`` or answers nonsense raises :class:`MCPServerError` from the tool, which the run
  turns into an error message the model reads; a connection that broke is dropped, so the next call
  starts the server again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError, MCPServerError
from ..guardrails import GuardrailInterrupt, GuardrailResult, InputGuardrail, OutputGuardrail
from ..tools import Tool, ToolArgumentsError, ToolContext
from .convert import APPROVAL_POLICIES, ApprovalPolicy, call_result, is_idempotent, local_name, needs_approval

try:
    import mcp_types
    from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("MCP servers need the mcp extra: pip install -e '.[mcp]' in a Timestep checkout") from exc

if TYPE_CHECKING:
    from mcp.client.session import IncomingMessage
    from mcp.shared.message import SessionMessage

    Streams = tuple[Any, Any]


@dataclass(eq=False)
class MCPTool(Tool):
    """A tool of an MCP server: the schema the server declared, called over the server's connection."""

    server: MCPServer | None = None
    remote_name: str = ""
    annotations: mcp_types.ToolAnnotations | None = None
    needs_approval: bool = False
    _schema_check: Any = field(default=None, repr=False)

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check the arguments against the declared schema before the call is journaled and sent."""
        if self._schema_check is None:
            return args
        problems = [
            f"{'.'.join(str(p) for p in err.absolute_path) or 'arguments'}: {err.message}"
            for err in self._schema_check.iter_errors(args)
        ]
        if problems:
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {'; '.join(sorted(problems))}")
        return args

    async def invoke(self, args: dict[str, Any], context: ToolContext) -> Any:
        assert self.server is not None
        return await self.server.call_tool(self, args)


class MCPServer:
    """What the stdio and HTTP servers share: the tool list, the safety policy, the connections.

    ``prefix`` puts ``prefix_`` before every tool name (to tell two servers' ``search`` apart).
    ``approval``, ``approve`` and ``idempotent`` set the safety policy described in
    :mod:`timestep.mcp.convert`. ``timeout`` bounds one tool call, ``connect_timeout`` a start-up.
    """

    def __init__(
        self,
        name: str,
        *,
        prefix: str | None = None,
        approval: ApprovalPolicy = "destructive",
        approve: Mapping[str, bool] | None = None,
        idempotent: Mapping[str, bool] | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
    ) -> None:
        if approval not in APPROVAL_POLICIES:
            raise ConfigurationError(f"MCP server {name!r}: approval must be one of {', '.join(APPROVAL_POLICIES)}")
        self.name = name
        self.prefix = prefix
        self.approval: ApprovalPolicy = approval
        self.approve = dict(approve or {})
        self.idempotent = dict(idempotent or {})
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._listed = False
        self._tools: dict[str, MCPTool] = {}
        self._connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._guardrail = InputGuardrail(self._ask_approval, name=f"mcp approval: {name}")

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Streams]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- what the Agent asks (timestep.tools.Toolset) -------------------------------------------

    def toolset_tools(self) -> Sequence[MCPTool]:
        if not self._listed:
            self._list_in_a_thread()
        return list(self._tools.values())

    def toolset_guardrails(self) -> Sequence[InputGuardrail | OutputGuardrail]:
        return [self._guardrail]

    # -- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> MCPServer:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect on the running event loop (if not connected yet) and take in the tool list."""
        await self._connection()

    async def close(self) -> None:
        """Close this event loop's connection, stopping the server process if it is a subprocess."""
        conn = self._connections.pop(asyncio.get_running_loop(), None)
        if conn is not None:
            await conn.close()

    async def list_tools(self) -> list[MCPTool]:
        """The tools as the server lists them now (connecting if needed)."""
        conn = await self._connection()
        self._absorb(await conn.list_all())
        return list(self._tools.values())

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._connections.get(loop)
        if conn is None or conn.closed:
            conn = self._connections[loop] = _Connection(self)
        try:
            await conn.ready()
        except MCPServerError:
            if self._connections.get(loop) is conn:
                del self._connections[loop]
            raise
        return conn

    def _forget(self, conn: _Connection) -> None:
        for loop, known in list(self._connections.items()):
            if known is conn:
                del self._connections[loop]

    def _list_in_a_thread(self) -> None:
        """List the tools from synchronous code (an Agent being built), even inside a running loop."""

        async def discover() -> None:
            conn = _Connection(self)
            try:
                await conn.ready()
            finally:
                await conn.close()

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix=f"mcp-{self.name}") as pool:
            pool.submit(asyncio.run, discover()).result()

    # -- tools ----------------------------------------------------------------------------------

    def _absorb(self, listing: Sequence[mcp_types.Tool]) -> None:
        """Take in a tool list, keeping the same tool objects for tools that did not change."""
        tools: dict[str, MCPTool] = {}
        for remote in listing:
            name = local_name(self.prefix, remote.name)
            if name in tools:
                continue  # two remote names that read the same once made valid: the first one wins
            old = self._tools.get(name)
            if old is not None and _same(old, remote):
                tools[name] = old
            else:
                tools[name] = self._tool(name, remote)
        self._tools = tools
        self._listed = True

    def _tool(self, name: str, remote: mcp_types.Tool) -> MCPTool:
        schema = dict(remote.input_schema or {"type": "object", "properties": {}})
        return MCPTool(
            fn=self.call_tool,
            name=name,
            description=remote.description or remote.title or remote.name,
            parameters=schema,
            idempotent=is_idempotent(name, remote.annotations, self.idempotent),
            args_dict=True,
            _is_async=True,
            server=self,
            remote_name=remote.name,
            annotations=remote.annotations,
            needs_approval=needs_approval(name, remote.annotations, self.approval, self.approve),
            _schema_check=_schema_checker(schema),
        )

    def _ask_approval(self, tool_name: str, args: dict[str, Any]) -> GuardrailResult:
        tool = self._tools.get(tool_name)
        if tool is None or not tool.needs_approval:
            return GuardrailResult.proceed()
        marked = " (the server marks it destructive)" if tool.annotations and tool.annotations.destructive_hint else ""
        raise GuardrailInterrupt(f"Run {tool_name} on MCP server {self.name!r}{marked}?", tool_name, args)

    async def call_tool(self, tool: MCPTool, args: dict[str, Any]) -> Any:
        """One tools/call: the result as the model should read it, or MCPServerError."""
        conn = await self._connection()
        what = tool.remote_name
        try:
            async with asyncio.timeout(self.timeout):
                result = await conn.session().call_tool(what, args)
        except TimeoutError:
            raise MCPServerError(self.name, f"{what} did not answer within {self.timeout:g} s", tool=what) from None
        except MCPError as exc:
            if exc.error.code == mcp_types.CONNECTION_CLOSED or conn.closed:
                self._forget(conn)
                await conn.close()
                raise MCPServerError(
                    self.name, f"the connection closed during {what} (the server may have crashed)", tool=what
                ) from None
            raise MCPServerError(self.name, f"{what} failed: {exc.error.message}", tool=what) from None
        except Exception as exc:
            raise MCPServerError(self.name, f"{what}: unusable answer ({_describe(exc)})", tool=what) from None
        if not isinstance(result, mcp_types.CallToolResult):
            raise MCPServerError(self.name, f"{what}: unexpected answer {type(result).__name__}", tool=what)
        if conn.stale:  # the call changed the list: take it in before the model is asked again
            await conn.refresh()
        value, is_error = call_result(result)
        if is_error:
            raise MCPServerError(self.name, f"{what} reported an error: {value}", tool=what)
        return value


class MCPServerStdio(MCPServer):
    """A server started as a subprocess, spoken to over its stdin and stdout.

    ``env`` is added to a minimal safe environment (the SDK's: ``PATH``, ``HOME``...), not to all of
    this process's variables, so secrets are passed on purpose. The server's stderr goes to
    ``errlog`` (this process's stderr by default).
    """

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str | None = None,
        errlog: TextIO | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name or _command_name(command, args), **options)
        self.params = StdioServerParameters(command=command, args=list(args), env=dict(env) if env else None, cwd=cwd)
        self.errlog = errlog

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Streams]:
        return stdio_client(self.params, errlog=self.errlog or _stderr())


class MCPServerHTTP(MCPServer):
    """A remote server over Streamable HTTP; ``headers`` go with every request (an API key, say)."""

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, name: str | None = None, **options: Any
    ) -> None:
        super().__init__(name or urlsplit(url).netloc or url, **options)
        self.url = url
        self.headers = dict(headers or {})

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Streams]:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with (
            create_mcp_http_client(headers=self.headers) as http,
            streamable_http_client(self.url, http_client=http) as streams,
        ):
            yield streams


def _stderr() -> TextIO:
    """This process's stderr for the server's own messages, when it is a real file; else nowhere.

    A subprocess can only write to a file descriptor: a replaced ``sys.stderr`` (a test runner's
    buffer, a notebook) has none, and the server must still start.
    """
    global _devnull
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        if _devnull is None:
            import atexit

            _devnull = open(os.devnull, "w")  # noqa: SIM115  # one for the process, shared by every server
            atexit.register(_devnull.close)
        return _devnull
    return sys.stderr


_devnull: TextIO | None = None


def mcp_server(spec: str, **options: Any) -> MCPServer:
    """A server from one string, as the command line takes it: a URL, or a command to start."""
    if spec.startswith(("http://", "https://")):
        return MCPServerHTTP(spec, **options)
    words = shlex.split(spec)
    if not words:
        raise ConfigurationError("an MCP server needs a command or a URL")
    return MCPServerStdio(words[0], words[1:], **options)


class _Connection:
    """One live client session, owned by one task (see the module docstring)."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.closed = False
        self._session: ClientSession | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read here if nobody waits
        self._wake = asyncio.Event()
        self._stopping = False
        self.stale = False  # the server said its tool list changed; not listed again yet
        self._task = asyncio.create_task(self._run(), name=f"MCP server {server.name}")

    def session(self) -> ClientSession:
        if self._session is None or self.closed:
            raise MCPError(mcp_types.CONNECTION_CLOSED, "Connection closed")
        return self._session

    async def ready(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.server.connect_timeout)
        except TimeoutError:
            await self.close()
            raise MCPServerError(self.server.name, f"did not start within {self.server.connect_timeout:g} s") from None

    async def list_all(self) -> list[mcp_types.Tool]:
        session, tools, cursor = self.session(), [], None
        while True:
            page = await session.list_tools(params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def _run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self.server._transport())
                session = ClientSession(read, write, message_handler=self._on_message)
                self._session = await stack.enter_async_context(session)
                await session.initialize()
                self.server._absorb(await self.list_all())
                self._ready.set_result(None)
                while not self._stopping:
                    await self._wake.wait()
                    self._wake.clear()
                    if self.stale and not self._stopping:
                        await self.refresh()
        except Exception as exc:
            if not self._ready.done():
                self._ready.set_exception(MCPServerError(self.server.name, f"could not start: {_describe(exc)}"))
        finally:
            self.closed = True
            if not self._ready.done():
                self._ready.set_exception(MCPServerError(self.server.name, "stopped while starting"))

    async def refresh(self) -> None:
        self.stale = False
        with contextlib.suppress(Exception):  # a failed refresh keeps the last list
            self.server._absorb(await self.list_all())

    async def _on_message(self, message: IncomingMessage | SessionMessage) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.stale = True
            self._wake.set()

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task.done():
            return
        if not self._ready.done() or self._ready.exception() is not None:
            self._task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def _same(old: MCPTool, remote: mcp_types.Tool) -> bool:
    return (
        old.remote_name == remote.name
        and old.description == (remote.description or remote.title or remote.name)
        and old.parameters == (remote.input_schema or {"type": "object", "properties": {}})
        and old.annotations == remote.annotations
    )


def _schema_checker(schema: dict[str, Any]) -> Any:
    """A JSON Schema validator for the declared input schema, or None if the schema is not valid."""
    from jsonschema import exceptions, validators  # type: ignore[import-untyped]  # mcp depends on it

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError:
        return None
    return cls(schema)


def _describe(exc: BaseException) -> str:
    """The innermost real error of an anyio exception group, as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _command_name(command: str, args: Sequence[str]) -> str:
    """``uvx mcp-server-time`` → ``mcp-server-time``; ``python -m pkg`` → ``pkg``: what a person would call it."""
    for arg in args:
        if not arg.startswith("-"):
            return Path(arg).stem or arg
    return Path(command).stem or command
