"""Deterministic waits for tests: poll a condition until it holds, with a deadline far beyond what
it needs, so a busy machine only makes the test slower, never red. Past the deadline, it hung."""

from __future__ import annotations

import time
from typing import Callable

HANG = 60.0  # seconds: far more than any wait in the suite needs on a busy machine


def wait_for(condition: Callable[[], object], timeout: float = HANG, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.01)


def settle(engine, timeout: float = HANG) -> None:
    """Waits until `engine` has nothing in flight, queued or waiting to be retried."""
    wait_for(lambda: not engine.pending(), timeout, "the engine to send and receive everything")
