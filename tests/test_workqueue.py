"""The reconciler's work queue (pure logic, no Docker)."""

from __future__ import annotations

import threading
import time

from backend.workqueue import WorkQueue


def test_a_name_added_many_times_is_worked_once():
    queue = WorkQueue()
    for _ in range(5):
        queue.add("web")
    queue.add("db")
    assert queue.get() == "web"
    assert queue.get() == "db"
    queue.done("web")
    queue.done("db")
    queue.shutdown()
    assert queue.get() is None


def test_a_name_in_work_is_not_handed_out_again_until_done():
    queue = WorkQueue()
    queue.add("web")
    assert queue.get() == "web"
    queue.add("web")  # dirty again while in work
    got: list[str | None] = []
    thread = threading.Thread(target=lambda: got.append(queue.get()))
    thread.start()
    time.sleep(0.2)
    assert got == []  # the second worker waits: never two at once on one service
    queue.done("web")
    thread.join(timeout=2)
    assert got == ["web"]


def test_add_after_waits_then_hands_out():
    queue = WorkQueue()
    start = time.monotonic()
    queue.add_after("web", 0.3)
    assert queue.get() == "web"
    assert 0.25 <= time.monotonic() - start < 2
