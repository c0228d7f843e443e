"""Waiting in the benchmarks: poll a check until it holds, with a deadline.

The benches' one copy of tests/conftest.py's `eventually` (bench/ never imports tests/): a check may be
plain or async; the deadline raises `TimedOut` (a RuntimeError) saying what was awaited and the last
value seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class TimedOut(RuntimeError):
    """What a bench waited for did not happen in time."""


async def eventually(check: Callable[[], Any], timeout: float, what: str = "", interval: float = 0.05) -> Any:
    """Poll `check` (sync, or returning an awaitable) every `interval` s until it answers something
    truthy, and answer that; TimedOut after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise TimedOut(f"timed out after {timeout:g} s waiting for {what or check}; last: {last!r}")
