"""Timestep agents as a service: an HTTP API with server-sent events, and a web chat where a person approves calls.

Needs the ``serve`` extra (``pip install -e '.[serve]' in a Timestep checkout``); ``import timestep`` never loads it.
"""

from __future__ import annotations

try:
    import fastapi as _fastapi  # noqa: F401
    import sse_starlette as _sse  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ..exceptions import ConfigurationError

    raise ConfigurationError(
        "timestep.server needs the serve extra: pip install -e '.[serve]' in a Timestep checkout"
    ) from exc

from .app import create_app

__all__ = ["create_app"]
