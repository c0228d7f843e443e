"""Waiting in the benchmarks: poll a check until it holds, with a deadline.

`eventually` (a check may be plain or async) and, for threads and scripts without an event loop,
`wait_until`; tests/conftest.py's `eventually` is this one (bench/ never imports tests/). The deadline
raises `TimedOut` (a RuntimeError) saying what was awaited and the last value seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `check` until it answers something truthy, and answer that; TimedOut after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        last = check()
    return last
