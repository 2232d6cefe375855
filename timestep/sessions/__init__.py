"""Conversation stores behind one small protocol: files by default, databases when outgrown."""

from .base import ConversationInfo, Item, Session
from .file import FileSession

__all__ = ["ConversationInfo", "FileSession", "Item", "Session"]
