"""Starts the fake Chat Completions server (``python -m timestep.testing``) in its own process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = "benchmarks.responder:respond"
_LISTENING = re.compile(r"listening on (\S+)")


def child_env(**extra: str) -> dict[str, str]:
    """Environment for every child process: the repo root importable, tracing/telemetry of peers off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(
        OPENAI_AGENTS_DISABLE_TRACING="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class FakeServer:
    url: str  # http://127.0.0.1:PORT/v1
    pid: int | None  # None: a server this process did not start


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0.0 where unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fake_server(latency: float = 0.0, timeout: float = 60.0) -> Iterator[FakeServer]:
    """Starts the server and yields it once it listens; stops it with SIGTERM after."""
    port = free_port()
    cmd = [sys.executable, "-m", "timestep.testing", "--port", str(port), "--responder", RESPONDER, "--no-record"]
    if latency:
        cmd += ["--latency", str(latency)]
    with tempfile.NamedTemporaryFile("w+", prefix="bench-server-", suffix=".log") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            yield FakeServer(_wait_listening(proc, Path(log.name), timeout), proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            return match.group(1).rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(
        f"fake server did not start (exit code {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
    )
