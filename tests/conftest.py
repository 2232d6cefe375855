"""Shared fixtures: one loopback test server per session, and no accidental real model calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from timestep import ModelClient
from timestep.testing import TestServer


@pytest.fixture(autouse=True)
def _no_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the default endpoint at a closed local port so a test that forgets its client fails fast."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")


@pytest.fixture(scope="session")
def _server() -> Iterator[TestServer]:
    with TestServer() as server:
        yield server


@pytest.fixture
def server(_server: TestServer) -> Iterator[TestServer]:
    _server.reset()
    yield _server
    _server.reset()


@pytest.fixture
def client(server: TestServer) -> ModelClient:
    return ModelClient(base_url=server.base_url, api_key="sk-test-key", max_retries=2, backoff_base=0.01)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "conversations"
