"""A candidate for model.py: the httpx2 loop with its connections spread over 16 pools."""

from benchmarks.adapters.plain_http import create_sharded as create

__all__ = ["create"]
