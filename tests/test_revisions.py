"""Revisions in the store (numbering, outcomes, what to go back to, bounds) and the rollout check's
pure logic (when a rollout has failed): no engine needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backend import store as store_module
from backend.models import RevisionOutcome, ServiceSpec
from backend.planner import Replica, ReplicaView
from backend.reconciler import docker_time, rollout_deadline, rollout_failure
from backend.store import Store


@pytest.fixture
def store(tmp_path: Path):
    made = Store(tmp_path / "data" / "state.db", "127.77.0.0/24")
    yield made
    made.close()


def spec(image: str = "web:1") -> ServiceSpec:
    return ServiceSpec(Name="svc", Image=image, ServicePort=80, Replicas=2)


def listed(store: Store) -> list[tuple[int, str, str]]:
    return [(r.Number, r.Image, r.Outcome.value) for r in store.revisions("svc") or []]


def test_every_image_change_is_a_revision_and_ready_ones_supersede(store: Store):
    record = store.insert(spec(), "created", "", by="local")
    assert listed(store) == [(1, "web:1", "rolling")]
    assert store.revision_ready(record.uid, 1) and not store.revision_ready(record.uid, 1)
    store.apply_update("svc", image="web:2", by="alice")
    store.apply_update("svc", replicas=3)  # no image: no revision
    assert listed(store) == [(2, "web:2", "rolling"), (1, "web:1", "active")]
    assert store.revisions("svc")[0].By == "alice"
    store.apply_update("svc", image="web:3")  # replaces 2 before it was ready
    assert store.revision_ready(record.uid, 3)
    assert listed(store) == [(3, "web:3", "active"), (2, "web:2", "superseded"), (1, "web:1", "superseded")]
    assert store.last_good(record.uid, 3).Number == 1  # 2 was never ready
    assert not store.revision_ready(record.uid, 2)  # not the current one


def test_roll_back_makes_the_good_revision_current_again(store: Store):
    record = store.insert(spec(), "created", "")
    store.revision_ready(record.uid, 1)
    store.apply_update("svc", image="bad:1")
    back = store.roll_back(record.uid, 2, 1, "revision 2's replicas kept exiting (code 1)")
    assert back is not None and back.revision == 1 and back.spec.Image == "web:1"
    assert back.generation > record.generation
    assert listed(store) == [(2, "bad:1", "rolled back"), (1, "web:1", "active")]
    assert store.roll_back(record.uid, 2, 1, "again") is None  # 2 is no longer current: nothing done
    store.apply_update("svc", image="web:4")  # numbers are never reused
    assert store.get("svc").revision == 3


def test_revisions_are_bounded_and_go_with_the_service(store: Store, monkeypatch):
    monkeypatch.setattr(store_module, "REVISIONS_KEPT", 3)
    record = store.insert(spec(), "created", "")
    for index in range(2, 7):
        store.apply_update("svc", image=f"web:{index}")
    assert [r.Number for r in store.revisions("svc")] == [6, 5, 4]
    store.forget(store.get("svc"))
    assert store.revisions("svc") is None and store.revision(record.uid, 6) is None


def test_services_from_before_revisions_get_their_current_one(tmp_path: Path):
    path = tmp_path / "data" / "state.db"
    first = Store(path, "127.77.0.0/24")
    record = first.insert(spec("web:7"), "active", "")
    first.update("svc", revision=4)
    with first._transaction() as db:  # as a state file written before revisions were kept
        db.execute("DELETE FROM revisions")
    first.close()
    again = Store(path, "127.77.0.0/24")
    try:
        assert listed(again) == [(4, "web:7", "active")]
        assert again.last_good(record.uid, 5).Number == 4
    finally:
        again.close()


# -- when a rollout has failed -----------------------------------------------------------------------


def container(
    status: str, created: datetime, exit_code: int = 0, restarts: int = 0, oom: bool = False, health: str = ""
) -> ReplicaView:
    stamp = created.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # as Docker writes it (nanoseconds)
    replica = Replica(
        id="abc", name="svc-x", slot="s1", revision="2", state=status, created=stamp, restarts=restarts,
        exit_code=exit_code, oom_killed=oom,
    )
    return ReplicaView(replica, health=health)


NOW = datetime(2025, 1, 1, tzinfo=UTC)
RECORD: Any = SimpleNamespace(spec=spec())


def test_a_replica_that_keeps_exiting_fails_the_rollout():
    restarting = container("restarting", NOW, exit_code=1, restarts=1)
    assert rollout_failure([restarting], 30, NOW) == "replicas kept exiting (code 1)"
    exited = container("exited", NOW, exit_code=3)
    assert rollout_failure([exited], 30, NOW) == "replicas kept exiting (code 3)"
    oom = container("restarting", NOW, exit_code=137, oom=True)
    assert rollout_failure([oom], 30, NOW) == "replicas ran out of memory"


def test_a_replica_not_ready_within_the_deadline_fails_it_and_not_before():
    deadline = rollout_deadline(RECORD)
    assert deadline == (2 + 3 + 2) * 5 + 10  # Rise 2, Fall 3, Interval 5: the spec's defaults
    young = container("running", NOW - timedelta(seconds=deadline - 1))
    old = container("running", NOW - timedelta(seconds=deadline + 1))
    old_and_up = container("running", NOW - timedelta(seconds=deadline + 1), health="UP")
    assert rollout_failure([young], deadline, NOW) is None
    assert rollout_failure([old_and_up], deadline, NOW) is None  # ready: fine
    assert "not UP within 45 s" in (rollout_failure([old], deadline, NOW) or "")


def test_docker_times_with_nanoseconds_are_read():
    assert docker_time("2024-05-01T12:00:00.123456789Z") == datetime(2024, 5, 1, 12, 0, 0, 123456, UTC)
    assert docker_time("nonsense") is None


def test_revision_outcomes_are_the_documented_words():
    assert [o.value for o in RevisionOutcome] == ["rolling", "active", "failed", "rolled back", "superseded"]
