"""One small module per implementation. Each exposes ``async def create(base_url, workdir) -> Adapter``."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks.common import Adapter


@dataclass(frozen=True)
class Spec:
    name: str
    module: str
    distributions: tuple[str, ...]  # must be installed; their versions are reported
    import_stmt: str  # what `import` time measures: the imports the adapter itself needs
    persists: str  # where the conversation lives between turns


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("plain_aiohttp", "benchmarks.adapters.plain_aiohttp", ("aiohttp",), "import aiohttp", "memory (a list)"),
        Spec("plain_http", "benchmarks.adapters.plain_http", ("httpx2",), "import httpx2", "memory (a list)"),
        Spec(
            "plain_httpx2_sharded",
            "benchmarks.adapters.plain_httpx2_sharded",
            ("httpx2",),
            "import httpx2",
            "memory (a list)",
        ),
        Spec("openai_client", "benchmarks.adapters.openai_client", ("openai",), "import openai", "memory (a list)"),
        Spec("timestep", "benchmarks.adapters.timestep", ("timestep",), "import timestep", "FileSession (files)"),
        Spec(
            "openai_agents",
            "benchmarks.adapters.openai_agents",
            ("openai-agents", "openai"),
            "import agents",
            "SQLiteSession (SQLite file)",
        ),
        Spec(
            "pydantic_ai",
            "benchmarks.adapters.pydantic_ai",
            ("pydantic-ai-slim", "openai"),
            "import pydantic_ai, pydantic_ai.models.openai",
            "nothing (history list in memory)",
        ),
        Spec(
            "langgraph",
            "benchmarks.adapters.langgraph",
            ("langgraph", "langchain-openai", "langgraph-checkpoint-sqlite", "aiosqlite"),
            "import langgraph.graph, langgraph.prebuilt, langchain_openai, langgraph.checkpoint.sqlite.aio",
            "AsyncSqliteSaver (SQLite file)",
        ),
    )
}

DEFAULT_ORDER = tuple(SPECS)
FLOORS = ("plain_aiohttp", "plain_http")
# the HTTP-layer candidates and Timestep run every workload; the peers run the original four
FULL_SET = frozenset({*FLOORS, "plain_httpx2_sharded", "openai_client", "timestep"})


def missing(spec: Spec) -> list[str]:
    """The distributions of `spec` that are not installed in this interpreter."""
    out = []
    for dist in spec.distributions:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def versions(spec: Spec) -> dict[str, str]:
    out = {}
    for dist in spec.distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def factory(name: str) -> Callable[[str, Path], Awaitable[Adapter]]:
    module = importlib.import_module(SPECS[name].module)
    create: Callable[[str, Path], Awaitable[Adapter]] = module.create
    return create
