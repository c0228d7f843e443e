"""The reconciler's retry backoff, on an injected clock (pure logic: no Docker, nothing waited out).

A failed step is retried after 1, 2, 4 ... seconds, at most BACKOFF_MAX; any outcome but `error`
starts the count afresh. While a service waits out its backoff, Docker events, balancer health news
and the periodic resync leave it alone; an operator's change (`enqueue`) is acted on at once.
The real-engine side (a missing image turns the service to `error`, fixing it recovers) is in
test_orchestration.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.balancer import ReplicaHealth
from backend.docker_driver import LABEL_SERVICE, EngineUnavailable
from backend.engines.docker import DockerEngine
from backend.events import EventHub
from backend.models import ServiceSpec, ServiceStatus
from backend.planner import SOON, Outcome
from backend.reconciler import BACKOFF_FIRST, BACKOFF_MAX, Reconciler
from backend.store import ServiceRecord, Store
from tests.conftest import make_settings
from tests.test_workqueue import FakeClock


class RecordingQueue:
    """Stands in for the WorkQueue: hands out the names it is given, records what the reconciler queues."""

    def __init__(self) -> None:
        self.to_hand_out: list[str] = []
        self.added: list[str] = []
        self.later: list[tuple[str, float]] = []

    def get(self, block: bool = True) -> str | None:
        return self.to_hand_out.pop(0) if self.to_hand_out else None

    def done(self, name: str) -> None:
        pass

    def add(self, name: str, background: bool = False) -> None:
        self.added.append(name)

    def add_after(self, name: str, delay: float) -> None:
        self.later.append((name, delay))

    def shutdown(self) -> None:
        pass


class PingedEngine(DockerEngine):
    """The engine as these tests see it: only its ping is ever called (when a step found the engine
    unreachable), and it answers as told, without Docker, so the tests run where no engine is."""

    answers = True

    def ping(self) -> None:
        if not self.answers:
            raise EngineUnavailable("Docker engine not reachable")


class Rig:
    """A reconciler on a real store and event hub, with a fake clock and a scripted `_converge`."""

    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path / "data")
        self.store = Store(settings.state_file, settings.address_pool)
        self.hub = EventHub()
        self.clock = FakeClock()
        # Docker is never called here: `_converge`, the only step that uses it, is scripted.
        self.engine = PingedEngine(self.store.tenant)
        self.reconciler = Reconciler(self.store, self.engine, self.hub, settings, clock=self.clock)
        self.queue = RecordingQueue()
        self.reconciler.queue = self.queue  # type: ignore[assignment]
        spec = ServiceSpec.model_validate({"Name": "web", "Image": "hbx/web:1", "ServicePort": 80, "Replicas": 1})
        self.store.insert(spec, ServiceStatus.created, "Service is created")

    def step(self, result: Step) -> float | None:
        """One worker pass over `web` whose step has `result`; the delay it was queued again with."""

        def converge(record: ServiceRecord, *_: object) -> Outcome:
            if isinstance(result, Exception):
                raise result
            return result(self.reconciler, record)

        self.reconciler._converge = converge  # type: ignore[method-assign]
        self.queue.to_hand_out = ["web"]
        self.reconciler._work()  # returns once the queue hands out nothing more
        if not self.queue.later:
            return None
        name, delay = self.queue.later.pop()
        assert name == "web" and not self.queue.later
        return delay

    def queued_by(self, source: str) -> bool:
        """Whether something happening to `web` (from `source`) put it on the queue now."""
        self.queue.added.clear()
        if source == "docker event":
            self.reconciler._on_docker_event(
                {"Type": "container", "Action": "die", "Actor": {"ID": "c0ffee", "Attributes": {LABEL_SERVICE: "web"}}}
            )
        elif source == "balancer health":
            self.reconciler._on_health("web", "", ReplicaHealth("DOWN", datetime.now(UTC)))
        elif source == "resync":
            self.reconciler.resync_all()
        elif source == "operator":
            self.reconciler.enqueue("web")
        else:
            raise ValueError(source)
        return self.queue.added == ["web"]


Step = Exception | Callable[[Reconciler, ServiceRecord], Outcome]


def done(reconciler: Reconciler, record: ServiceRecord) -> Outcome:
    return Outcome(ServiceStatus.active, "Scaling complete")


def under_way(reconciler: Reconciler, record: ServiceRecord) -> Outcome:
    return Outcome(ServiceStatus.scaling, "Scaling to 1 replicas (0 ready)", again_in=SOON)


def image_missing(reconciler: Reconciler, record: ServiceRecord) -> Outcome:
    # what `_converge` answers when the image can't be pulled: an error outcome with its backoff
    return Outcome(ServiceStatus.error, "image hbx/web:1 not found", again_in=reconciler._backoff(record.name))


FAIL = RuntimeError("the engine refused")
ENGINE_DOWN = EngineUnavailable("Docker engine not reachable")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.store.close()


@pytest.mark.parametrize(
    ("steps", "delays"),
    [
        pytest.param([FAIL], [1], id="first-retry-after-BACKOFF_FIRST"),
        pytest.param([FAIL] * 5, [1, 2, 4, 8, 16], id="doubles"),
        pytest.param([FAIL] * 9, [1, 2, 4, 8, 16, 32, 60, 60, 60], id="capped-at-BACKOFF_MAX"),
        pytest.param([FAIL, FAIL, FAIL, done, FAIL], [1, 2, 4, None, 1], id="reset-on-success"),
        pytest.param([FAIL, FAIL, under_way, FAIL], [1, 2, SOON, 1], id="reset-on-progress"),
        pytest.param([image_missing, image_missing, FAIL], [1, 2, 4], id="image-error-outcome-counts"),
        pytest.param([ENGINE_DOWN, ENGINE_DOWN, FAIL], [1, 2, 4], id="engine-down-counts"),
    ],
)
def test_failed_steps_back_off_exponentially(rig: Rig, steps: list[Step], delays: list[float | None]):
    assert (BACKOFF_FIRST, BACKOFF_MAX) == (1.0, 60.0)  # the figures the table is written for
    assert [rig.step(result) for result in steps] == delays


def test_an_engine_really_away_is_no_failure_of_the_service(rig: Rig):
    rig.engine.answers = False
    assert rig.step(ENGINE_DOWN) is None  # no retry of its own: the watcher resyncs all on the engine's return
    assert rig.reconciler.engine_error is not None
    rig.engine.answers = True
    assert rig.step(FAIL) == BACKOFF_FIRST  # the time away counted no failure


def test_a_failure_shows_on_the_service_with_its_reason(rig: Rig):
    rig.step(FAIL)
    record = rig.store.get("web")
    assert record is not None and record.status == ServiceStatus.error and record.message == "the engine refused"
    rig.step(done)
    record = rig.store.get("web")
    assert record is not None and record.status == ServiceStatus.active


@pytest.mark.parametrize("source", ["docker event", "balancer health", "resync"])
@pytest.mark.parametrize(
    ("failures", "after", "queued"),
    [
        pytest.param(0, 0.0, True, id="never-failed"),
        pytest.param(3, 0.0, False, id="just-failed"),
        pytest.param(3, 3.99, False, id="backoff-not-over"),  # 3 failures: the retry is due after 4 s
        pytest.param(3, 4.0, True, id="backoff-over"),
        pytest.param(1, 1.0, True, id="one-failure-1s"),
    ],
)
def test_events_and_resync_respect_the_backoff(rig: Rig, source: str, failures: int, after: float, queued: bool):
    for _ in range(failures):
        rig.step(FAIL)
    rig.clock.now += after
    assert rig.queued_by(source) is queued


@pytest.mark.parametrize("failures", [1, 3, 9])
def test_an_operator_change_bypasses_the_backoff_and_starts_it_afresh(rig: Rig, failures: int):
    for _ in range(failures):
        rig.step(FAIL)
    assert not rig.queued_by("resync")
    assert rig.queued_by("operator")  # at once, whatever the backoff
    assert rig.queued_by("docker event")  # and no backoff holds events back any more
    assert rig.step(FAIL) == BACKOFF_FIRST  # the next failure starts from the first delay
