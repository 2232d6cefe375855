"""A small MCP server written with the SDK's own ``MCPServer``, for the MCP tests.

Run it as ``python tests/mcp_notes_server.py`` (stdio) or ``python tests/mcp_notes_server.py http PORT``
(Streamable HTTP on 127.0.0.1). Its tools carry real annotations, so the approval and re-run policy
is tested against what a server declares, and some misbehave on purpose (a crash, a hang, an error).
Every call that has an effect is appended to the file named by ``NOTES_FILE``, so a test can count
how many times a tool really ran.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent, ToolAnnotations

server = MCPServer("notes")
NOTES = Path(os.environ.get("NOTES_FILE", "notes.txt"))

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)
IDEMPOTENT_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)


def _log(line: str) -> None:
    with NOTES.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=DESTRUCTIVE)
def delete_note(title: str) -> str:
    """Delete a note for good."""
    _log(f"deleted {title}")
    return f"deleted {title}"


@server.tool(annotations=IDEMPOTENT_WRITE)
async def save_note(title: str, text: str, pause: float = 0.0) -> str:
    """Save a note under a title (saving the same note twice changes nothing); the first save of a
    title waits ``pause`` seconds (so a test can stop its caller mid-call), a second one does not."""
    first = f"saved {title}" not in (NOTES.read_text().splitlines() if NOTES.exists() else [])
    _log(f"saved {title}")
    await asyncio.sleep(pause if first else 0)
    return f"saved {title}"


@server.tool()
async def send_note(to: str, pause: float = 0.0) -> str:
    """Send a note to someone (no annotations: the server says nothing about its safety)."""
    _log(f"sent to {to}")
    await asyncio.sleep(pause)
    return f"sent to {to}"


@server.tool(annotations=READ_ONLY)
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool(annotations=READ_ONLY)
async def wait(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}"


@server.tool(annotations=DESTRUCTIVE)
async def crash(after: float = 0.0) -> str:
    """Die in the middle of the call."""
    _log("crash started")
    await asyncio.sleep(after)
    os._exit(3)


@server.tool(annotations=READ_ONLY)
def weather(city: str) -> dict[str, str]:
    """The weather in a city, as a seed-style tool returns it."""
    return {"result": f"Sunny in {city}"}


@server.tool(annotations=READ_ONLY)
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ToolError(reason)


@server.tool(annotations=READ_ONLY, structured_output=False)
def picture() -> list[TextContent | ImageContent]:
    """A caption and a one-pixel picture."""
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f6b0000000049454e44ae426082"
    )
    return [
        TextContent(type="text", text="a red dot"),
        ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
    ]


@server.tool(annotations=READ_ONLY)
async def learn_shout(ctx: Context) -> str:
    """Add a tool named shout, and tell the client the list changed."""
    if "shout" not in {t.name for t in await server.list_tools()}:
        server.add_tool(lambda text: text.upper(), name="shout", description="Upper-case a text.")
    await ctx.session.send_tool_list_changed()
    return "learned shout"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
