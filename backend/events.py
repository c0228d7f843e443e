"""The change feed: what the backend tells listeners (the `/events` stream, the console) as it happens.

Publishers (the API, the reconciler, the Docker event watcher) call `publish` from any thread; each
subscriber gets its own queue and reads at its own pace. A subscriber that stops reading for long
loses the oldest events, never blocks a publisher.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

MAX_PENDING = 10_000


class AsyncSubscription:
    """A subscription read from an asyncio loop (the /events route) without holding a thread."""

    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_PENDING)

    def deliver(self, event: dict[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the loop is closed: the reader is gone
            self.close()

    def _put(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub._unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[AsyncSubscription] = []

    def subscribe_async(self) -> AsyncSubscription:
        subscription = AsyncSubscription(self, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: AsyncSubscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def publish(self, kind: str, action: str, **fields: Any) -> None:
        event = {"Type": kind, "Action": action, "Time": time.time(), **fields}
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.deliver(event)
