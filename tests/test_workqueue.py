"""The reconciler's work queue (pure logic, no Docker); delays on an injected clock, never waited out."""

from __future__ import annotations

import threading

import pytest

from backend.workqueue import WorkQueue


class FakeClock:
    """Monotonic seconds that move only when a test moves them."""

    def __init__(self, now: float = 12345.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_name_added_many_times_is_worked_once() -> None:
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


def test_a_name_in_work_is_not_handed_out_again_until_done() -> None:
    queue = WorkQueue()
    queue.add("web")
    assert queue.get() == "web"
    queue.add("web")  # dirty again while in work
    assert queue.get(block=False) is None  # never two workers at once on one service
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    queue.done("web")  # ...and once done, the waiting worker gets it
    worker.join(timeout=10)
    assert got == ["web"]


@pytest.mark.parametrize(
    ("delays", "advance", "handed_out"),
    [
        ({"web": 5.0}, 0.0, []),
        ({"web": 5.0}, 4.9, []),  # not a moment early
        ({"web": 5.0}, 5.0, ["web"]),
        ({"web": 0.0}, 0.0, ["web"]),  # no delay: at once
        ({"web": -1.0}, 0.0, ["web"]),
        ({"late": 8.0, "soon": 2.0}, 3.0, ["soon"]),
        ({"late": 8.0, "soon": 2.0}, 8.0, ["soon", "late"]),  # in the order they fell due
    ],
)
def test_add_after_hands_out_once_due(delays: dict[str, float], advance: float, handed_out: list[str]) -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    for name, delay in delays.items():
        queue.add_after(name, delay)
    clock.now += advance
    got: list[str] = []
    while (handed := queue.get(block=False)) is not None:  # ends: each name is handed out once, then None
        got.append(handed)
    assert got == handed_out


def test_a_delayed_name_already_queued_is_worked_once() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    queue.add_after("web", 1.0)
    queue.add("web")
    clock.now += 1.0
    assert queue.get(block=False) == "web"
    assert queue.get(block=False) is None


def test_add_after_wakes_a_waiting_worker() -> None:
    queue = WorkQueue()  # the real clock: the worker blocks until the delay is over
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    queue.add_after("web", 0.05)
    worker.join(timeout=10)
    assert got == ["web"]


def test_the_background_resync_waits_behind_every_other_name() -> None:
    queue = WorkQueue(FakeClock())
    for name in ("r1", "r2", "r3"):
        queue.add(name, background=True)
    queue.add("created")  # an operator's change or an event after a resync pass was queued
    queue.add("r3")  # wanted now too: moves ahead of the background
    assert [queue.get(block=False) for _ in range(5)] == ["created", "r3", "r1", "r2", None]


def test_a_background_name_in_work_comes_back_in_the_background() -> None:
    queue = WorkQueue(FakeClock())
    queue.add("a", background=True)
    assert queue.get(block=False) == "a"
    queue.add("a", background=True)  # the next resync while it is in work
    queue.add("b")
    queue.done("a")
    assert [queue.get(block=False) for _ in range(3)] == ["b", "a", None]


def test_a_delayed_name_due_moves_ahead_of_its_background_entry() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    queue.add("x", background=True)
    queue.add("y", background=True)
    queue.add_after("y", 1.0)
    clock.now += 1.0
    assert [queue.get(block=False) for _ in range(3)] == ["y", "x", None]
