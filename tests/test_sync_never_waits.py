"""A sync never waits on a drain, a stop or a pull: four services stuck in one keep no worker busy.

The reconciler runs its four workers on an in-memory engine (`MemoryEngine`, the Engine protocol with
no Docker) and balancers that always report a session open on a leaving replica. Four services get
stuck in a slow operation: a drain that never ends (the clock is frozen, so its deadline never
passes), a graceful stop that never returns, or an image pull that never returns. A fifth service,
created afterwards, must still be synced: its replica is created while the four are still stuck.
What is asserted is the order of things (the fifth replica exists while every slow operation is
still under way), never how long anything took; each wait has a deadline only so that a broken
reconciler fails instead of hanging.
Once the slow operations end, the four services finish (their leaving replicas go, they are active).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from backend.balancer import DRAIN_WAIT, ReplicaHealth
from backend.docker_driver import PullProgress, ServiceRef
from backend.engine import Engine
from backend.events import EventHub
from backend.models import ServiceSpec, ServiceStatus
from backend.planner import Replica
from backend.reconciler import PULL_WORKERS, STOP_WORKERS, Reconciler
from backend.store import ServiceRecord, Store
from tests.conftest import make_settings
from tests.test_workqueue import FakeClock

GATE_TIMEOUT = 60.0  # a deadline for a broken reconciler to fail by, not a measure of anything
STUCK = ("a", "b", "c", "d")  # one per worker
IMAGE = "memory/web:1"


class MemoryEngine:
    """The Engine protocol in memory. Graceful removals and pulls wait for `release` (a slow stop, a
    slow pull); whatever happens is appended to `log`."""

    def __init__(self) -> None:
        self.tenant = "memory"
        self.images = {IMAGE}
        self.by_service: dict[str, dict[str, Replica]] = {}
        self.release = threading.Event()
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def note(self, entry: str) -> None:
        with self._lock:
            self.log.append(entry)

    def entries(self, prefix: str) -> list[str]:
        with self._lock:
            return [entry for entry in self.log if entry.startswith(prefix)]

    def add_running(self, ref: ServiceRef, count: int) -> None:
        for index in range(1, count + 1):
            self._add(ref, f"s{index}", "1")

    def _add(self, ref: ServiceRef, slot: str, revision: str) -> Replica:
        number = next(self._ids)
        replica = Replica(
            id=f"{ref.name}-{number}", name=f"{ref.name}-{number}", slot=slot, revision=revision, state="running",
            created=f"2024-01-01T00:{number // 60:02d}:{number % 60:02d}Z", ip=f"10.0.{number // 250}.{number % 250 + 2}",
        )
        with self._lock:
            self.by_service.setdefault(ref.uid, {})[replica.id] = replica
        return replica

    # the engine
    def ping(self) -> None:
        pass

    def events(self) -> Any:
        raise NotImplementedError("not started: only the workers run here")

    # images
    def has_image(self, reference: str) -> bool:
        return reference in self.images

    def ensure_image(self, reference: str, on_progress: Callable[[PullProgress], None] | None = None) -> str:
        self.note(f"pull-begin {reference}")
        assert self.release.wait(GATE_TIMEOUT)
        self.images.add(reference)
        self.note(f"pull-end {reference}")
        return reference

    # networks
    def find_network(self, ref: ServiceRef) -> Network | None:
        return Network(attrs={"Id": ref.uid, "Name": f"net-{ref.name}"})

    def ensure_network(self, ref: ServiceRef, subnet: str | None = None) -> Network:
        return Network(attrs={"Id": ref.uid, "Name": f"net-{ref.name}"})

    def used_subnets(self) -> list[str]:
        return []

    def remove_network(self, ref: ServiceRef) -> None:
        pass

    # replicas
    def replicas(self, ref: ServiceRef) -> list[Replica]:
        with self._lock:
            return list(self.by_service.get(ref.uid, {}).values())

    def start_replica(self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: str, slot: str) -> Replica:
        replica = self._add(ref, slot, str(revision))
        self.note(f"start {ref.name} {slot}")
        return replica

    def remove_replicas(self, replicas: Sequence[Replica], graceful: bool = True) -> None:
        for replica in replicas:
            if graceful:
                self.note(f"stop-begin {replica.id}")
                assert self.release.wait(GATE_TIMEOUT)
            with self._lock:
                for owned in self.by_service.values():
                    owned.pop(replica.id, None)
            self.note(f"removed {replica.id}")

    def oom_killed(self, replica_id: str) -> bool:
        return False

    def remove_containers(self, ref: ServiceRef, graceful: bool = True, stop_timeout: int = 10) -> None:
        with self._lock:
            self.by_service.pop(ref.uid, None)

    def remove_service_volumes(self, service: str) -> None:
        pass

    def owned_uids(self) -> dict[str, str]:
        return {}

    # balancer containers: the balancers are stood in for below, so these are never called
    def labels(self, ref: ServiceRef, role: str, **extra: str) -> dict[str, str]:
        raise NotImplementedError

    def balancers(self, ref: ServiceRef) -> list[Container]:
        return []

    def create_container(self, image: str, name: str, labels: dict[str, str], **options: Any) -> Container:
        raise NotImplementedError

    def start(self, container: Container) -> None:
        raise NotImplementedError

    def refresh(self, container: Container) -> None:
        raise NotImplementedError

    def remove(self, container: Container, graceful: bool = True) -> None:
        raise NotImplementedError

    def copy_in(self, container: Container, path: str, archive: bytes) -> bool:
        raise NotImplementedError

    def exec(self, container: Container, argv: list[str]) -> tuple[int, bytes]:
        raise NotImplementedError

    def error_log(self, container: Container, lines: int) -> bytes:
        raise NotImplementedError

    def follow_log(self, container: Container, since: float) -> Any:
        raise NotImplementedError

    def open_log(self, container: Container, since: float) -> None:
        raise NotImplementedError


class BusyBalancers:
    """Stands in for Balancers: every replica is UP, and every leaving one still has a session open
    (so a drain ends only at its deadline)."""

    def __init__(self) -> None:
        self.servers: dict[str, dict[str, str]] = {}

    def ensure(
        self, record: ServiceRecord, servers: dict[str, str], listed: list[Container] | None = None
    ) -> list[Container]:
        return []

    def set_servers(
        self, record: ServiceRecord, balancers: list[Container], servers: dict[str, str], owners: dict[str, str]
    ) -> list[str]:
        self.servers[record.name] = dict(servers)
        return []

    def containers(self, ref: ServiceRef) -> list[Container]:
        return []

    def busy_slots(self, balancers: list[Container], slots: list[str]) -> set[str]:
        return set(slots)

    def health(self, uid: str, slot: str | None, container_id: str = "") -> ReplicaHealth | None:
        return ReplicaHealth("UP", datetime.now(UTC)) if slot else None

    def remove_all(self, ref: ServiceRef) -> None:
        pass

    def stop(self) -> None:
        pass


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path / "data", workers=4)
        self.store = Store(settings.state_file, settings.address_pool)
        self.engine = MemoryEngine()
        self.clock = FakeClock()
        engine: Engine = self.engine
        self.reconciler = Reconciler(self.store, engine, EventHub(), settings, clock=self.clock)
        self.reconciler.balancers = BusyBalancers()  # type: ignore[assignment]
        self.workers = [threading.Thread(target=self.reconciler._work, daemon=True) for _ in range(settings.workers)]

    def add_service(self, name: str, replicas: int, image: str = IMAGE) -> ServiceRecord:
        spec = ServiceSpec.model_validate({"Name": name, "Image": image, "ServicePort": 80, "Replicas": replicas})
        return self.store.insert(spec, ServiceStatus.created, "Service is created")

    def status(self, name: str) -> str:
        record = self.store.get(name)
        assert record is not None
        return record.status

    def close(self) -> None:
        self.engine.release.set()
        self.reconciler.stop()
        for worker in self.workers:
            worker.join(timeout=GATE_TIMEOUT)
        self.store.close()


def eventually(check: Callable[[], object], what: str, tick: Callable[[], None] = lambda: None) -> None:
    """Wait (with a deadline, for a broken reconciler to fail by) until `check()` is true; `tick`
    between looks (to move the fake clock on)."""
    pause = threading.Event()
    for _ in range(int(GATE_TIMEOUT / 0.02)):
        if check():
            return
        tick()
        pause.wait(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def get_stuck(rig: Rig, kind: str) -> None:
    """Bring the four STUCK services into the slow operation `kind`, one per worker."""
    if kind == "pull":
        for name in STUCK:
            rig.add_service(name, 1, image=f"memory/slow-{name}:1")
        for name in STUCK:
            rig.reconciler.enqueue(name)
        pulls = min(PULL_WORKERS, len(STUCK))  # the others wait their turn on the pull pool
        eventually(lambda: len(rig.engine.entries("pull-begin")) == pulls, "the pulls under way")
        return
    for name in STUCK:  # three replicas running, scaled down to one: two of each leave
        record = rig.add_service(name, 3)
        rig.engine.add_running(ServiceRef(record.name, record.uid), 3)
        rig.store.scale(name, 1)
    for name in STUCK:
        rig.reconciler.enqueue(name)
    eventually(
        lambda: all(rig.reconciler.balancers.servers.get(n, {}).keys() == {"s1"} for n in STUCK),  # type: ignore[attr-defined]
        "every leaving replica out of the balancers",
    )
    if kind == "stop":
        rig.clock.now += DRAIN_WAIT  # the drain time is over: the next steps stop them
        for name in STUCK:
            rig.reconciler.enqueue(name)
        stops = min(STOP_WORKERS, 2 * len(STUCK))
        eventually(lambda: len(rig.engine.entries("stop-begin")) == stops, "the stops under way")


@pytest.mark.parametrize("kind", ["drain", "stop", "pull"])
def test_four_services_stuck_in_slow_operations_keep_no_worker_busy(rig: Rig, kind: str):
    for worker in rig.workers:
        worker.start()
    get_stuck(rig, kind)
    assert all(rig.status(name) in (ServiceStatus.scaling, ServiceStatus.created) for name in STUCK)

    rig.add_service("e", 1)
    rig.reconciler.enqueue("e")
    eventually(lambda: rig.engine.entries("start e s1"), "the fifth service's replica to be created")
    # ... while the four are still stuck: nothing slow has ended yet.
    assert not rig.engine.entries("pull-end") and not rig.engine.entries("removed")
    if kind == "drain":
        assert not rig.engine.entries("stop-begin")  # the drains have not ended: nothing was stopped

    # The slow operations end: the four finish.
    rig.engine.release.set()
    if kind == "drain":
        rig.clock.now += DRAIN_WAIT
        for name in STUCK:
            rig.reconciler.enqueue(name)

    def later() -> None:  # the looks again the reconciler asked for come due
        rig.clock.now += 0.5

    eventually(lambda: all(rig.status(name) == ServiceStatus.active for name in STUCK), "the four active", later)
    for name in STUCK:
        record = rig.store.get(name)
        assert record is not None
        assert [r.slot for r in rig.engine.replicas(ServiceRef(name, record.uid))] == ["s1"]
