"""Leaving without waiting for a sync tool that a cancelled turn left running.

Sync tools run in the event loop's default executor. Cancelling a turn cannot stop a thread, and
both ``asyncio.Runner.close()`` and the interpreter's exit join every executor thread, so a hung
tool would hang the exit, silently. The command line therefore gives its loop a
:class:`ToolThreads` executor that knows which threads are still busy; at exit, if some are,
it says so and :func:`exit_now` ends the process without joining them (the stores are closed by
then, and each tool's start was journaled, so the session knows its outcome is unknown).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_abandoned = threading.Event()


class ToolThreads(ThreadPoolExecutor):
    """A thread pool that counts its running calls and, once abandoned, never waits for them."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="timestep-tool")
        self._lock = threading.Lock()
        self._busy = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        def counted() -> T:
            with self._lock:
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        return super().submit(counted)

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def abandon_if_busy(self) -> bool:
        """If a call still runs: stop waiting for it, here and at exit; True if so."""
        if not self.busy:
            return False
        _abandoned.set()
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if _abandoned.is_set():
            wait, cancel_futures = False, True
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def exit_now(code: Any) -> None:
    """End the process with ``code`` (as ``sys.exit`` takes it) if threads were abandoned."""
    if not _abandoned.is_set():
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
