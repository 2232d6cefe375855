"""Tools from Model Context Protocol servers, under the same guardrails, approvals and journal.

Needs the ``mcp`` extra (``pip install -e '.[mcp]' in a Timestep checkout``); ``import timestep`` never imports it.
"""

from ..exceptions import MCPServerError
from .convert import ApprovalPolicy
from .server import MCPServer, MCPServerHTTP, MCPServerStdio, MCPTool, mcp_server

__all__ = ["ApprovalPolicy", "MCPServer", "MCPServerError", "MCPServerHTTP", "MCPServerStdio", "MCPTool", "mcp_server"]
