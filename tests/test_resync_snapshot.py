"""A periodic resync pass reads the engine once, not once per service (issue 9 point 5).

Unit tests: when a pass's snapshot may stand for a service's own look (`snapshot_serves`, pure); a
container as the engine's list gives it becomes the same Replica inspect would give, as far as a
running one goes; and, on an in-memory engine, that a pass over many services takes one snapshot and
no per-service list, while a service touched after the snapshot was read (a replica made by a sync
under way when the snapshot was taken, a replica that died with its event) is looked at fresh: no
duplicate replica, no dead one missed.

The real-engine test counts the container lists the backend sends to dockerd (a wrapper around the
Docker client's list call) during one resync pass over 5, then 15 settled services: the count must not
grow with the services (before, every service's sync listed its replicas and its balancers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from backend.docker_driver import LABEL_REVISION, LABEL_ROLE, LABEL_SERVICE, LABEL_UID, ServiceRef
from backend.engine import Engine, EngineSnapshot
from backend.engines.docker import listed_attrs, replica_of
from backend.events import EventHub
from backend.models import ServiceSpec, ServiceStatus
from backend.planner import Replica
from backend.reconciler import PassSnapshot, Reconciler, docker_time, snapshot_serves
from backend.store import ServiceRecord, Store
from tests.conftest import client_for, eventually, make_settings, wait_status, web_body
from tests.test_sync_never_waits import IMAGE, BusyBalancers, MemoryEngine
from tests.test_workqueue import FakeClock

# -- when a snapshot may stand for a service's own look (pure) ----------------------------------------


def shared(seq: int = 10, taken: float = 100.0) -> PassSnapshot:
    return PassSnapshot(EngineSnapshot(), seq, taken)


def test_a_snapshot_serves_only_a_resync_only_sync_of_a_service_untouched_since_it_was_read():
    assert snapshot_serves(shared(), resync_only=True, touched=9, now=105.0, max_age=10.0)
    assert snapshot_serves(shared(), resync_only=True, touched=0, now=110.0, max_age=10.0)  # never touched, at the age limit


@pytest.mark.parametrize(
    ("why", "snapshot", "resync_only", "touched", "now", "settled"),
    [
        ("no snapshot", None, True, 0, 100.0, True),
        ("an event or a change asked for the sync", shared(), False, 0, 100.0, True),
        ("touched while the snapshot was read", shared(), True, 10, 100.0, True),
        ("touched after the snapshot was read", shared(), True, 11, 100.0, True),
        ("the snapshot is too old", shared(), True, 0, 110.5, True),
        ("the service is not settled (a crash loop is judged by restarts the list does not say)", shared(), True, 0, 100.0,
         False),
    ],
)
def test_a_snapshot_does_not_serve(
    why: str, snapshot: PassSnapshot | None, resync_only: bool, touched: int, now: float, settled: bool
):
    assert not snapshot_serves(snapshot, resync_only, touched, now, max_age=10.0, settled=settled), why


# -- a container as the engine's list gives it (pure) ---------------------------------------------------


def test_a_listed_running_container_is_the_replica_inspect_would_give():
    item = {
        "Id": "c0ffee", "Names": ["/web-ab12c"], "Created": 1764400000, "State": "running", "Status": "Up 5 minutes",
        "Labels": {LABEL_SERVICE: "web", LABEL_UID: "u1", LABEL_ROLE: "replica", "io.hyperservice.slot": "s2",
                   LABEL_REVISION: "3"},
        "NetworkSettings": {"Networks": {"hs-web-u1": {"IPAddress": "10.213.0.5"}}},
    }
    container = Container(attrs=listed_attrs(item))
    replica = replica_of(container)
    assert (replica.id, replica.name, replica.slot, replica.revision, replica.state, replica.ip) == (
        "c0ffee", "web-ab12c", "s2", "3", "running", "10.213.0.5"
    )
    created = docker_time(replica.created)
    assert created is not None and int(created.timestamp()) == 1764400000
    assert container.labels["io.hyperservice.slot"] == "s2" and container.status == "running"


# -- the reconciler on an in-memory engine ------------------------------------------------------------


class SnapshotMemoryEngine(MemoryEngine):
    """The in-memory engine with a snapshot; counts its lists (per service, and whole snapshots)."""

    def __init__(self) -> None:
        super().__init__()
        self.networks: set[str] = set()  # uids whose network was made
        self.lists = 0  # per-service replica lists
        self.snapshots = 0
        self.image_looks = 0
        self.on_start: Callable[[ServiceRef], None] = lambda ref: None

    def has_image(self, reference: str) -> bool:
        self.image_looks += 1
        return super().has_image(reference)

    def find_network(self, ref: ServiceRef) -> Network | None:
        return super().find_network(ref) if ref.uid in self.networks else None

    def ensure_network(self, ref: ServiceRef, subnet: str | None = None) -> Network:
        self.networks.add(ref.uid)
        return super().ensure_network(ref, subnet)

    def replicas(self, ref: ServiceRef) -> list[Replica]:
        self.lists += 1
        return super().replicas(ref)

    def start_replica(self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: str, slot: str) -> Replica:
        self.on_start(ref)
        return super().start_replica(ref, spec, revision, network, slot)

    def remove_replicas(self, replicas: Sequence[Replica], graceful: bool = True) -> None:
        super().remove_replicas(replicas, graceful=False)  # (nothing here waits)

    def snapshot(self) -> EngineSnapshot:
        self.snapshots += 1
        snapshot = EngineSnapshot()
        with self._lock:
            for uid, owned in self.by_service.items():
                snapshot.replicas[uid] = list(owned.values())
        for uid in self.networks:
            snapshot.networks[uid] = Network(attrs={"Id": uid, "Name": f"net-{uid}"})
        return snapshot

    def die(self, ref: ServiceRef) -> Replica:
        """One of the service's replicas exits (code 1), as a kill behind the backend's back would."""
        with self._lock:
            owned = self.by_service[ref.uid]
            replica = next(iter(owned.values()))
            owned[replica.id] = Replica(**{**replica.__dict__, "state": "exited", "exit_code": 1})
        return replica

    def count(self, ref: ServiceRef) -> int:
        with self._lock:
            return len(self.by_service.get(ref.uid, {}))


class Rig:
    """A reconciler on the in-memory engine; its syncs are called here, one at a time (no workers)."""

    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path / "data", resync_seconds=30)
        self.store = Store(settings.state_file, settings.address_pool)
        self.engine = SnapshotMemoryEngine()
        self.clock = FakeClock()
        engine: Engine = self.engine
        self.reconciler = Reconciler(self.store, engine, EventHub(), settings, clock=self.clock)
        self.reconciler.balancers = BusyBalancers()  # type: ignore[assignment]

    def settled(self, name: str, replicas: int = 1) -> ServiceRecord:
        spec = ServiceSpec.model_validate({"Name": name, "Image": IMAGE, "ServicePort": 80, "Replicas": replicas})
        self.store.insert(spec, ServiceStatus.created, "Service is created")
        self.reconciler.enqueue(name)
        for _ in range(3):  # create, then see it ready
            self.reconciler.sync(name)
        record = self.store.get(name)
        assert record is not None and record.status == ServiceStatus.active, record
        return record

    def ref(self, name: str) -> ServiceRef:
        record = self.store.get(name)
        assert record is not None
        return ServiceRef(record.name, record.uid)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.reconciler.stop()
    rig.store.close()


def test_a_resync_pass_takes_one_snapshot_and_lists_nothing_per_service(rig: Rig):
    names = [f"web{i}" for i in range(6)]
    for name in names:
        rig.settled(name)
    rig.engine.lists = rig.engine.image_looks = 0
    rig.reconciler.resync_all()
    for name in names:
        rig.reconciler.sync(name)
    assert (rig.engine.snapshots, rig.engine.lists, rig.engine.image_looks) == (1, 0, 1)
    assert all(rig.engine.count(rig.ref(name)) == 1 for name in names)
    # The next pass reads the engine anew (once); a pass that outlasts the snapshot's age reads it again.
    rig.reconciler.resync_all()
    rig.reconciler.sync(names[0])
    rig.clock.now += rig.reconciler.snapshot_max_age + 1
    for name in names[1:]:
        rig.reconciler.sync(name)
    assert (rig.engine.snapshots, rig.engine.lists) == (3, 0)


def test_a_sync_asked_for_by_anything_but_the_resync_lists_fresh(rig: Rig):
    rig.settled("web")
    rig.engine.lists = 0
    rig.reconciler.resync_all()
    rig.reconciler.enqueue("web")  # the operator changed it meanwhile
    rig.reconciler.sync("web")
    assert (rig.engine.snapshots, rig.engine.lists) == (0, 1)


def test_a_replica_made_while_the_snapshot_was_read_is_not_made_again(rig: Rig):
    """`b` is scaled to 2; its sync creates the second replica while (on another worker) a resync pass
    reads the engine, so the snapshot still has one replica of `b`. The resync then looks at `b`: the
    snapshot must not stand for it (the planner would make a third replica)."""
    rig.settled("a")
    rig.settled("b")
    b = rig.ref("b")

    def resync_pass_meanwhile(ref: ServiceRef) -> None:
        if ref == b and rig.engine.snapshots == 0:
            rig.reconciler.resync_all()
            rig.reconciler.sync("a")  # the pass's first sync reads the engine: one replica of b

    rig.engine.on_start = resync_pass_meanwhile
    rig.store.scale("b", 2)
    rig.reconciler.enqueue("b")
    rig.reconciler.sync("b")
    assert rig.engine.snapshots == 1 and rig.engine.count(b) == 2
    rig.reconciler.sync("b")  # the resync's look at b
    assert rig.engine.count(b) == 2


def test_a_replica_that_died_after_the_snapshot_is_replaced(rig: Rig):
    rig.settled("a")
    rig.settled("b")
    b = rig.ref("b")
    rig.reconciler.resync_all()
    rig.reconciler.sync("a")  # the snapshot: b's replica running
    dead = rig.engine.die(b)
    rig.reconciler._on_docker_event(
        {"Type": "container", "Action": "die",
         "Actor": {"ID": dead.id, "Attributes": {LABEL_SERVICE: "b", "name": dead.name, "exitCode": "1"}}}
    )
    rig.reconciler.sync("b")
    with rig.engine._lock:
        left = list(rig.engine.by_service[b.uid].values())
    assert dead.id not in [r.id for r in left]
    assert [r.state for r in left] == ["running"]


# -- the real engine ----------------------------------------------------------------------------------


class ListCounter:
    """Counts the container lists sent to the engine through one Docker client (every list, sparse or
    not, goes through the low-level `containers` call)."""

    def __init__(self, api: Any) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        original = api.containers

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
            return original(*args, **kwargs)

        api.containers = counted


class SyncWatch:
    """Watches a backend's reconciler from before its first service: which services were synced,
    how many syncs are under way, which syncs something else than the resync asked for; and, once
    every service in `awaited` was synced, the list count then and whether another sync was under way."""

    def __init__(self, reconciler: Any, counter: ListCounter) -> None:
        self.synced: list[str] = []
        self.asked: list[str] = []
        self.under_way = 0
        self.awaited: set[str] = set()
        self.end: tuple[int, int] | None = None  # (lists so far, syncs under way) when all awaited were synced
        self._lock = threading.Lock()
        sync, mark_dirty = reconciler.sync, reconciler.mark_dirty

        def recorded_sync(name: str) -> float | None:
            with self._lock:
                self.under_way += 1
            try:
                return sync(name)
            finally:
                with self._lock:
                    self.under_way -= 1
                    self.synced.append(name)
                    if self.awaited and self.end is None and set(self.synced) >= self.awaited:
                        self.end = (counter.calls, self.under_way)

        def recorded_mark(name: str, background: bool = False) -> None:
            if not background:
                self.asked.append(name)
            mark_dirty(name, background)

        reconciler.sync, reconciler.mark_dirty = recorded_sync, recorded_mark


async def clean_resync_pass_lists(backend: Any, counter: ListCounter, watch: SyncWatch, attempts: int = 8) -> int:
    """The container lists of one resync pass over every service (run by the workers, as the periodic
    resync runs it), counted from its start to the end of its last service's sync: of the first pass
    that began and ended with no other sync under way, synced each service once, and during which
    nothing else asked for a sync (an event about a service just made, a health line, a step looking
    again soon), since such a sync reads the engine for itself, whatever the pass does."""
    names = sorted(backend.store.names())
    for _ in range(attempts):
        await eventually(lambda: watch.under_way == 0, timeout=120, what="no sync under way")
        with watch._lock:
            watch.synced.clear()
            watch.asked.clear()
            watch.awaited, watch.end = set(names), None
            before = counter.calls
        backend.reconciler.resync_all()
        await eventually(lambda: watch.end is not None, timeout=120, what="every service synced")
        assert watch.end is not None
        lists, others = watch.end
        if not watch.asked and sorted(watch.synced[:len(names)]) == names and others == 0:
            return lists - before
    raise AssertionError(f"no clean resync pass in {attempts} (last: asked {watch.asked}, synced {watch.synced})")


async def test_a_resync_pass_lists_containers_a_fixed_number_of_times_however_many_services(backend_factory):
    backend = backend_factory(resync_seconds=3600, workers=4)  # the periodic one never runs by itself here
    counter = ListCounter(backend.driver.client.api)
    watch = SyncWatch(backend.reconciler, counter)
    per_pass: dict[int, int] = {}
    async with client_for(backend) as api:
        for count in (5, 15):
            have = len(backend.store.names())
            names = [f"scan{i}" for i in range(have, count)]
            for name in names:
                assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
            for name in names:
                await wait_status(api, name, "active", timeout=240)
            per_pass[count] = await clean_resync_pass_lists(backend, counter, watch)
    # Before: two lists per service (its replicas, its balancers): 10 and 30.
    assert per_pass[15] <= per_pass[5] == 1, per_pass
