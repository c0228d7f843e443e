"""A work queue of service names, in the manner of client-go's workqueue.

- A name added many times before a worker takes it is worked on once (events only mark it dirty).
- A name is never worked on by two workers at once; added while in work, it runs again after.
- `add_after` re-adds a name later (a step that waits for something, or a retry with backoff).
- `add(name, background=True)` (the periodic resync) queues behind every other name: with hundreds of
  services a resync pass keeps the workers busy for a while, and a service just created or changed,
  or one an event is about, must not wait behind it. Added again in the foreground, it moves ahead.

The clock is injectable (monotonic seconds), so the delays can be tested without waiting them out.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._background: list[str] = []  # handed out only when _queue is empty
        self._low: set[str] = set()  # dirty names wanted only in the background
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._shutdown = False

    def add(self, name: str, background: bool = False) -> None:
        with self._cond:
            if self._shutdown:
                return
            if name in self._dirty:
                if not background and name in self._low:  # wanted now: ahead of the background
                    self._low.discard(name)
                    if name in self._background:
                        self._background.remove(name)
                        self._queue.append(name)
                        self._cond.notify()
                return
            self._dirty.add(name)
            if background:
                self._low.add(name)
            if name not in self._processing:
                (self._background if background else self._queue).append(name)
                self._cond.notify()

    def add_after(self, name: str, delay: float) -> None:
        if delay <= 0:
            self.add(name)
            return
        with self._cond:
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._counter), name))
            self._cond.notify()

    def get(self, block: bool = True) -> str | None:
        """Block until a name is ready; None once the queue is shut down (or, with `block=False`,
        at once when no name is ready)."""
        with self._cond:
            while True:
                if self._shutdown:
                    return None
                self._promote_due()
                if self._queue or self._background:
                    name = self._queue.pop(0) if self._queue else self._background.pop(0)
                    self._dirty.discard(name)
                    self._low.discard(name)
                    self._processing.add(name)
                    return name
                if not block:
                    return None
                timeout = self._delayed[0][0] - self._clock() if self._delayed else None
                self._cond.wait(timeout)

    def done(self, name: str) -> None:
        with self._cond:
            self._processing.discard(name)
            if name in self._dirty:
                (self._background if name in self._low else self._queue).append(name)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, name = heapq.heappop(self._delayed)
            if name in self._low:  # due now: ahead of the background
                self._low.discard(name)
                if name in self._background:
                    self._background.remove(name)
                    self._queue.append(name)
            elif name not in self._dirty:
                self._dirty.add(name)
                if name not in self._processing:
                    self._queue.append(name)
