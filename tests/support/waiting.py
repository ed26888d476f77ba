"""Polling until a condition holds, with a readable failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait(what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0,
         diagnose: Callable[[], str] | None = None) -> Any:
    """Call ``probe`` every ``every`` seconds until it returns something truthy (returned);
    after ``timeout`` seconds fail naming ``what``, the last value and ``diagnose()``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    extra = "\n" + diagnose() if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}")
