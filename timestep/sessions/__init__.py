"""Conversation stores behind one small protocol: files by default, databases when outgrown.

The database stores load on first use, so ``import timestep`` pays only for the file store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ConversationInfo, Item, Session
from .file import FileSession

if TYPE_CHECKING:
    from .postgres import PostgresSession
    from .sqlite import SQLiteSession
    from .stores import Store, open_store

_LAZY = {
    "PostgresSession": ".postgres",
    "SQLiteSession": ".sqlite",
    "Store": ".stores",
    "open_store": ".stores",
}

__all__ = [
    "ConversationInfo",
    "FileSession",
    "Item",
    "PostgresSession",
    "SQLiteSession",
    "Session",
    "Store",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
