"""Test doubles for code that talks to OpenAI-compatible model APIs.

:class:`TestServer` is a real HTTP server (loopback, background thread) that
speaks the Chat Completions wire format, streaming included, and answers with
scripted :class:`Reply` values. Because it is a real server, any client can be
pointed at it (``base_url=server.base_url``) and the code under test runs
unmodified, down to retries, SSE parsing and connection handling.

This package depends only on the standard library and ``h11`` so it can be
imported by test suites and benchmarks without pulling in the rest of the
library. ``python -m timestep.testing`` runs the same server as a process.
"""

from timestep.testing.server import (
    RecordedRequest,
    Reply,
    Responder,
    TestServer,
    ToolCall,
    tool_then_answer,
)

__all__ = [
    "RecordedRequest",
    "Reply",
    "Responder",
    "TestServer",
    "ToolCall",
    "tool_then_answer",
]
