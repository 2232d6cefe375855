"""Conversation stores behind one small protocol: files by default, databases when outgrown."""

from .base import ConversationInfo, Item, Session
from .file import FileSession
from .postgres import PostgresSession
from .sqlite import SQLiteSession
from .stores import Store, open_store

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
