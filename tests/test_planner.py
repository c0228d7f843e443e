"""The planner, table by table: desired spec + observed replicas -> the next step (pure: no Docker).

Each row is a service as the reconciler would observe it and what the planner must answer: which
slots get new replicas, which replicas are replaced, drained, stopped, what is reported. A rolling
update and a scale-down are also played out step by step on a small simulated engine, checking at
every step that the balancers never carry fewer ready replicas than asked for and that no more than
one replica runs above that.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from backend.balancer import armed_slots
from backend.haproxy import slot_name
from backend.models import ServiceStatus
from backend.planner import (
    CRASH_LOOP_RESTARTS,
    DRAIN_CHECK,
    RESTART_SUSPECT_FOR,
    SOON,
    WAIT_FOR_HEALTH,
    Desired,
    Leaving,
    Outcome,
    Plan,
    Replica,
    ReplicaView,
    plan,
    rollout_surge,
)

IMAGE = "web:2"
DOWN_AFTER = 60.0


def want(replicas: int, revision: int = 1, parallelism: int = 1, slots: int | None = None) -> Desired:
    return Desired(
        image=IMAGE, replicas=replicas, revision=revision, replace_down_after=DOWN_AFTER, parallelism=parallelism,
        slots=slots,
    )


def rep(
    slot: str,
    revision: int = 1,
    state: str = "running",
    health: str = "UP",
    down_for: float = 0.0,
    leaving: Leaving = Leaving.NO,
    created: int | None = None,
    restarts: int = 0,
    running_for: float | None = None,
) -> ReplicaView:
    """A replica in `slot` (its id and name say slot and revision: 's2@r1'). `created` orders them in
    time; by default a higher slot was created later."""
    order = created if created is not None else int(slot[1:])
    replica = Replica(
        id=f"{slot}@r{revision}", name=f"web-{slot}-r{revision}", slot=slot, revision=str(revision), state=state,
        created=f"2024-01-01T00:00:{order:02d}Z", ip=f"10.0.0.{int(slot[1:]) + 1}", restarts=restarts,
        exit_code=1 if state in ("exited", "restarting") else None,
    )
    return ReplicaView(replica, health=health, down_for=down_for, running_for=running_for, leaving=leaving)


def ids(replicas: tuple[Replica, ...]) -> list[str]:
    return sorted(r.id for r in replicas)


# -- one step at a time ---------------------------------------------------------------------------

CASES = [
    # id, desired, observed, create_in, replace, drain, stop, status
    pytest.param(want(3), [], ["s1", "s2", "s3"], [], [], [], ServiceStatus.scaling, id="create-from-nothing"),
    pytest.param(want(4), [rep("s1"), rep("s2")], ["s3", "s4"], [], [], [], ServiceStatus.scaling, id="scale-up"),
    pytest.param(
        want(1), [rep("s1"), rep("s2"), rep("s3"), rep("s4")], [], [], ["s2@r1", "s3@r1", "s4@r1"], [],
        ServiceStatus.scaling, id="scale-down-drains-the-newest",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", health="starting"), rep("s3")], [], [], ["s2@r1"], [],
        ServiceStatus.scaling, id="scale-down-drains-a-not-ready-one-first",
    ),
    pytest.param(want(2), [rep("s1"), rep("s2")], [], [], [], [], ServiceStatus.active, id="steady"),
    pytest.param(
        want(2), [rep("s1"), rep("s2", health="starting")], [], [], [], [], ServiceStatus.scaling,
        id="waits-for-health-checks",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", state="exited", health="DOWN")], ["s2"], ["s2@r1"], [], [],
        ServiceStatus.degraded, id="dead-replaced-in-its-slot",
    ),
    pytest.param(
        want(3), [rep("s1", state="exited"), rep("s2"), rep("s3", state="dead")], ["s1", "s3"], ["s1@r1", "s3@r1"],
        [], [], ServiceStatus.degraded, id="several-dead-replaced",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", health="DOWN", down_for=DOWN_AFTER + 1)], ["s2"], ["s2@r1"], [], [],
        ServiceStatus.degraded, id="down-too-long-replaced",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", health="DOWN", down_for=DOWN_AFTER)], [], [], [], [],
        ServiceStatus.degraded, id="down-not-yet-too-long-kept",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", state="restarting", health="DOWN", restarts=5)], [], [], [], [],
        ServiceStatus.error, id="crash-loop-no-churn",
    ),
    pytest.param(
        want(1), [rep("s1", state="created", health="", restarts=CRASH_LOOP_RESTARTS)], [], [], [], [],
        ServiceStatus.error, id="crash-loop-by-restart-count",
    ),
    pytest.param(
        want(1), [rep("s1", restarts=CRASH_LOOP_RESTARTS)], [], [], [], [], ServiceStatus.active,
        id="restarted-but-stays-up-is-fine",
    ),
    pytest.param(
        want(1), [rep("s1", health="DOWN", restarts=1)], [], [], [], [], ServiceStatus.error,
        id="crash-loop-caught-running-between-restarts",
    ),
    pytest.param(
        want(1), [rep("s1", health="starting", restarts=2)], [], [], [], [], ServiceStatus.error,
        id="crash-loop-caught-starting-between-restarts",
    ),
    pytest.param(
        want(1), [rep("s1", health="", restarts=CRASH_LOOP_RESTARTS)], [], [], [], [], ServiceStatus.scaling,
        id="restarted-long-ago-health-unknown-not-judged-by-its-past",
    ),
    pytest.param(
        want(1), [rep("s1", health="", restarts=1, running_for=RESTART_SUSPECT_FOR + 1)], [], [], [], [],
        ServiceStatus.scaling, id="restarted-running-long-health-unknown-not-judged",
    ),
    pytest.param(
        want(1), [rep("s1", health="", restarts=1, running_for=0.2)], [], [], [], [], ServiceStatus.error,
        id="crash-loop-caught-just-restarted-before-its-first-check",
    ),
    pytest.param(
        want(1), [rep("s1"), rep("s2", state="exited")], [], ["s2@r1"], [], [], ServiceStatus.scaling,
        id="dead-and-not-wanted-only-removed",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", state="paused", health="")], [], [], [], [], ServiceStatus.degraded,
        id="paused-is-degraded-not-replaced",
    ),
    pytest.param(
        want(4), [rep("s1"), rep("s3")], ["s2", "s4"], [], [], [], ServiceStatus.scaling, id="slot-reuse-lowest-free",
    ),
    pytest.param(
        want(2), [rep("s1"), rep("s2", leaving=Leaving.DRAINING)], ["s3"], [], [], [], ServiceStatus.scaling,
        id="a-leaving-replica-keeps-its-slot",
    ),
    pytest.param(
        want(1), [rep("s1"), rep("s2", leaving=Leaving.DRAINING)], [], [], [], [], ServiceStatus.scaling,
        id="draining-is-under-way",
    ),
    pytest.param(
        want(1), [rep("s1"), rep("s2", leaving=Leaving.DRAINED)], [], [], [], ["s2@r1"], ServiceStatus.scaling,
        id="drained-is-stopped",
    ),
    pytest.param(
        want(1), [rep("s1"), rep("s2", leaving=Leaving.STOPPING)], [], [], [], [], ServiceStatus.scaling,
        id="stopping-is-under-way",
    ),
    pytest.param(
        want(3, revision=2), [rep("s1"), rep("s2"), rep("s3")], ["s4"], [], [], [], ServiceStatus.updating,
        id="outdated-rolled-one-extra-first",
    ),
    pytest.param(
        want(3, revision=2), [rep("s1"), rep("s2"), rep("s3"), rep("s4", revision=2, health="starting")], [], [],
        [], [], ServiceStatus.updating, id="roll-waits-for-the-new-one-to-be-ready",
    ),
    pytest.param(
        want(3, revision=2), [rep("s1"), rep("s2"), rep("s3"), rep("s4", revision=2)], ["s5"], [], ["s3@r1"], [],
        ServiceStatus.updating, id="roll-drains-an-old-one-once-a-new-one-is-ready-and-starts-the-next",
    ),
    pytest.param(
        want(3, revision=2),
        [rep("s1"), rep("s2"), rep("s3", leaving=Leaving.DRAINING), rep("s4", revision=2)], ["s5"], [], [], [],
        ServiceStatus.updating, id="roll-goes-on-while-an-old-one-drains",
    ),
    pytest.param(
        want(3, revision=2, slots=4),
        [rep("s1"), rep("s2"), rep("s3", leaving=Leaving.DRAINING), rep("s4", revision=2)], [], [], [], [],
        ServiceStatus.updating, id="roll-waits-for-a-slot-while-an-old-one-drains",
    ),
    pytest.param(
        want(3, revision=2), [rep("s1"), rep("s2"), rep("s4", revision=2)], ["s3"], [], [], [],
        ServiceStatus.updating, id="roll-goes-on-once-it-is-gone",
    ),
    pytest.param(
        want(2, revision=2), [rep("s1"), rep("s2", state="exited")], ["s2", "s3"], ["s2@r1"], [], [],
        ServiceStatus.updating, id="roll-replaces-a-dead-old-one-with-a-new-one",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2), [rep(f"s{i}") for i in range(1, 5)], ["s5", "s6"], [], [], [],
        ServiceStatus.updating, id="parallelism-2-starts-two-new-ones-at-once",
    ),
    pytest.param(
        want(2, revision=2, parallelism=3), [rep("s1"), rep("s2")], ["s3", "s4"], [], [], [],
        ServiceStatus.updating, id="parallelism-never-makes-more-new-ones-than-asked-for",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2),
        [*(rep(f"s{i}") for i in range(1, 5)), rep("s5", revision=2, health="starting"), rep("s6", revision=2)],
        ["s7"], [], ["s4@r1"], [], ServiceStatus.updating, id="parallelism-2-drains-one-old-per-new-one-ready",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2),
        [*(rep(f"s{i}") for i in range(1, 5)), rep("s5", revision=2), rep("s6", revision=2)],
        ["s7", "s8"], [], ["s3@r1", "s4@r1"], [], ServiceStatus.updating,
        id="parallelism-2-drains-two-once-two-are-ready-and-starts-two-more",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2),
        [rep("s1"), rep("s2"), rep("s3", leaving=Leaving.DRAINING), rep("s4", leaving=Leaving.STOPPING),
         rep("s5", revision=2), rep("s6", revision=2)],
        ["s7", "s8"], [], [], [], ServiceStatus.updating, id="parallelism-2-the-leaving-ones-hold-nothing-back",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2, slots=7),
        [rep("s1"), rep("s2"), rep("s3", leaving=Leaving.DRAINING), rep("s4", leaving=Leaving.STOPPING),
         rep("s5", revision=2), rep("s6", revision=2)],
        ["s7"], [], [], [], ServiceStatus.updating, id="parallelism-2-bounded-by-the-slots-the-leaving-ones-hold",
    ),
    pytest.param(
        want(4, revision=2, parallelism=2),
        [rep("s1"), rep("s2"), rep("s5", revision=2), rep("s6", revision=2)],
        ["s3", "s4"], [], [], [], ServiceStatus.updating, id="parallelism-2-next-two-once-they-are-gone",
    ),
    pytest.param(
        want(2, parallelism=3), [rep("s1")], ["s2"], [], [], [], ServiceStatus.scaling,
        id="parallelism-is-no-business-of-scaling",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "create_in", "replace", "drain", "stop", "status"), CASES)
def test_the_next_step(
    desired: Desired,
    observed: list[ReplicaView],
    create_in: list[str],
    replace: list[str],
    drain: list[str],
    stop: list[str],
    status: ServiceStatus,
):
    step = plan(desired, observed)
    assert sorted(step.create_in) == create_in
    assert (ids(step.replace), ids(step.drain), ids(step.stop)) == (replace, drain, stop)
    assert step.outcome.status == status
    leaving = {v.replica.id for v in observed if v.leaving != Leaving.NO}
    gone = set(replace) | set(drain) | leaving
    assert ids(step.serving) == sorted(v.replica.id for v in observed if v.replica.id not in gone)


def test_a_crash_loop_is_an_error_with_backoff_naming_the_replica():
    step = plan(want(2), [rep("s1"), rep("s2", state="restarting", health="DOWN", restarts=5)])
    assert step.outcome.backoff and step.outcome.again_in is None
    assert "web-s2-r1 keeps exiting (exit code 1, 5 restarts)" in step.outcome.message
    assert ids(step.crashing) == ["s2@r1"] and not step.changes


def test_a_replica_running_past_its_health_deadline_without_passing_is_named_in_the_status():
    desired = replace(want(3), health_deadline=45.0)
    observed = [rep("s1"), rep("s2"), rep("s3", health="starting", running_for=46.4)]
    outcome = plan(desired, observed).outcome
    assert outcome.status == ServiceStatus.scaling
    assert outcome.message == "Scaling to 3 replicas (2 ready; web-s3-r1 not passing health checks within 45 s)"
    # The message stays the same while it waits (each new message is a status event and a history entry).
    observed[2] = rep("s3", health="starting", running_for=300.0)
    assert plan(desired, observed).outcome.message == outcome.message
    # Within its deadline, it is only not ready yet.
    observed[2] = rep("s3", health="starting", running_for=44.0)
    assert plan(desired, observed).outcome.message == "Scaling to 3 replicas (2 ready)"


def test_a_crash_loop_caught_running_between_restarts_stays_an_error_without_a_stale_exit_code():
    step = plan(want(2), [rep("s1"), rep("s2", health="DOWN", restarts=5)])
    assert step.outcome.status == ServiceStatus.error and step.outcome.backoff
    assert "web-s2-r1 keeps exiting (5 restarts)" in step.outcome.message
    assert ids(step.crashing) == ["s2@r1"] and not step.changes


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        pytest.param(rep("s2", state="exited", health="DOWN"), "exited (code 1)", id="exited"),
        pytest.param(
            ReplicaView(replace(rep("s2", state="exited").replica, oom_killed=True, exit_code=137)), "ran out of memory",
            id="oom",
        ),
        pytest.param(rep("s2", health="DOWN", down_for=DOWN_AFTER + 1), "not answering health checks", id="down"),
        pytest.param(rep("s2", state="removing", health=""), "is removing", id="other"),
    ],
)
def test_a_replacement_says_what_it_replaces_and_why(view: ReplicaView, reason: str):
    step = plan(want(2), [rep("s1"), view])
    (heal,) = step.heals
    assert (heal.replica.id, heal.reason, heal.replaced) == ("s2@r1", reason, True)
    assert step.outcome == Outcome(ServiceStatus.degraded, f"replica {view.replica.name} {reason}; replacing", SOON)


def test_a_replacement_heals_until_it_is_ready():
    why = {"s2@r2": "replica web-s2-r1 exited (code 1); replacing"}
    starting = plan(want(2, revision=2), [rep("s1", revision=2), rep("s2", revision=2, health="starting")], why)
    assert starting.outcome == Outcome(ServiceStatus.degraded, why["s2@r2"], WAIT_FOR_HEALTH)
    assert dict(starting.healing) == why and not starting.changes
    ready = plan(want(2, revision=2), [rep("s1", revision=2), rep("s2", revision=2)], why)
    assert ready.outcome.status == ServiceStatus.active and dict(ready.healing) == {}
    gone = plan(want(2, revision=2), [rep("s1", revision=2)], why)
    assert dict(gone.healing) == {} and gone.outcome.status == ServiceStatus.scaling


def test_an_active_service_stays_active_while_health_is_only_being_confirmed():
    unconfirmed = [rep("s1", health="starting"), rep("s2", health="")]
    assert plan(want(2), unconfirmed, active=True).outcome == Outcome(
        ServiceStatus.active, "Scaling complete", WAIT_FOR_HEALTH
    )
    assert plan(want(2), unconfirmed, active=False).outcome.status == ServiceStatus.scaling


def test_a_settled_active_service_is_not_looked_at_again_until_something_happens():
    """Every replica UP: no polling (it was every WAIT_FOR_HEALTH s for every active service: two
    container lists each, 300 a second with 300 services); events and the resync look again."""
    assert plan(want(2), [rep("s1"), rep("s2")], active=True).outcome == Outcome(ServiceStatus.active, "Scaling complete")


def test_a_crash_loop_of_oom_kills_names_the_memory_limit():
    looping = replace(
        rep("s1", state="restarting", restarts=4).replica, oom_killed=True, exit_code=137, memory_limit=64 * 2**20
    )
    message = plan(want(1), [ReplicaView(looping, health="DOWN")]).outcome.message
    assert "OOM-killed, 4 restarts" in message and "its 64 MiB of memory" in message


def test_degraded_names_the_down_replicas_and_when_they_are_replaced():
    step = plan(want(2), [rep("s1", health="DOWN", down_for=5), rep("s2")])
    assert step.outcome.message == (
        "1 of 2 replicas DOWN (failing their health check: web-s1-r1); replaced if still DOWN after 60 s"
    )
    assert step.outcome.again_in == WAIT_FOR_HEALTH


@pytest.mark.parametrize(
    ("observed", "again_in"),
    [
        pytest.param([rep("s1", health="starting")], WAIT_FOR_HEALTH, id="health-events-wake-it-sooner"),
        pytest.param([], SOON, id="creating"),
        pytest.param([rep("s1"), rep("s2", leaving=Leaving.DRAINING)], DRAIN_CHECK, id="draining"),
        pytest.param([rep("s1"), rep("s2", leaving=Leaving.STOPPING)], DRAIN_CHECK, id="stopping"),
        pytest.param([rep("s1"), rep("s2", leaving=Leaving.DRAINED)], SOON, id="drained-stopped-now"),
        pytest.param([rep("s1")], None, id="done"),
    ],
)
def test_when_to_look_again(observed: list[ReplicaView], again_in: float | None):
    assert plan(want(1), observed).outcome.again_in == again_in


def test_progress_messages():
    assert plan(want(3), [rep("s1")]).outcome.message == "Scaling to 3 replicas (1 ready)"
    assert plan(want(1), []).outcome.message == "Scaling to 1 replica (0 ready)"
    rolling = plan(want(2, revision=2), [rep("s1"), rep("s2")]).outcome.message
    assert rolling == "Rolling out web:2: 2 of 2 replicas still on the old image"


def test_slot_names_are_the_balancers():
    step = plan(want(3), [])
    assert list(step.create_in) == [slot_name(1), slot_name(2), slot_name(3)]


# -- played out step by step -------------------------------------------------------------------------


class SimulatedEngine:
    """Applies plans the way the reconciler and a well-behaved engine would: a created replica starts
    "starting" and is UP one step later; a drained one is DRAINED one step later and gone one step
    after its stop; replaced ones are gone at once."""

    def __init__(self, observed: list[ReplicaView]) -> None:
        self.views = {v.replica.id: v for v in observed}
        self.made = 0

    def apply(self, step: Plan, desired: Desired) -> None:
        gone = {r.id for r in step.replace}
        self.views = {key: self._later(view) for key, view in self.views.items() if key not in gone}
        self.views = {key: view for key, view in self.views.items() if view is not None}
        for replica in step.drain:
            self.views[replica.id] = replace(self.views[replica.id], leaving=Leaving.DRAINING)
        for replica in step.stop:
            self.views[replica.id] = replace(self.views[replica.id], leaving=Leaving.STOPPING)
        for slot in step.create_in:
            self.made += 1
            view = rep(slot, revision=desired.revision, health="starting", created=50 + self.made)
            self.views[view.replica.id + f"#{self.made}"] = replace(
                view, replica=replace(view.replica, id=view.replica.id + f"#{self.made}")
            )

    @staticmethod
    def _later(view: ReplicaView) -> ReplicaView | None:
        if view.leaving == Leaving.STOPPING:
            return None
        if view.leaving == Leaving.DRAINING:
            return replace(view, leaving=Leaving.DRAINED)
        if view.health == "starting":
            return replace(view, health="UP")
        return view

    def observed(self) -> list[ReplicaView]:
        return list(self.views.values())


def play(desired: Desired, observed: list[ReplicaView], check) -> SimulatedEngine:
    engine = SimulatedEngine(observed)
    for _ in range(200):
        step = plan(desired, engine.observed())
        check(step, engine)
        if not step.changes and step.outcome.status == ServiceStatus.active:
            return engine
        engine.apply(step, desired)
    raise AssertionError("the plan never converged")


@pytest.mark.parametrize(
    ("replicas", "parallelism", "slots"),
    [(1, 1, None), (2, 1, None), (3, 1, None), (5, 1, None), (1, 2, None), (4, 2, None), (5, 2, None),
     (6, 3, None), (3, 5, None), (3, 1, 4), (5, 2, 7), (6, 3, 8)],
)
def test_a_rolling_update_never_runs_fewer_ready_nor_more_than_parallelism_extra(
    replicas: int, parallelism: int, slots: int | None
):
    desired = want(replicas, revision=2, parallelism=parallelism, slots=slots)
    steps_with_news: list[int] = []
    old = [rep(slot_name(i)) for i in range(1, replicas + 1)]

    def check(step: Plan, engine: SimulatedEngine) -> None:
        ready_served = [r for r in step.serving if engine.views[r.id].health == "UP"]
        assert len(ready_served) >= replicas, "the balancers would carry fewer ready replicas than asked for"
        balanced = len(step.serving) + len(step.create_in)
        assert balanced <= replicas + parallelism, "more than `parallelism` replicas above the asked number"
        running = len(engine.views) + len(step.create_in) - len(step.replace)
        assert slots is None or running <= slots, "more replicas (leaving ones included) than balancer slots"
        assert all(r.state != "restarting" for r in step.crashing)
        if step.create_in:
            steps_with_news.append(len(step.create_in))

    engine = play(desired, old, check)
    assert sorted(v.replica.revision for v in engine.views.values()) == ["2"] * replicas
    used = {v.replica.slot for v in engine.views.values()}
    assert len(used) == replicas and (slots is None or used <= {slot_name(i) for i in range(1, slots + 1)})
    # the first step starts `parallelism` new replicas (as far as the slots go), no step more
    first = min(parallelism, replicas, slots - replicas if slots else replicas)
    assert steps_with_news[0] == first and max(steps_with_news) <= parallelism, steps_with_news
    assert sum(steps_with_news) == replicas


@pytest.mark.parametrize(
    ("parallelism", "replicas", "slots", "surge"),
    [
        pytest.param(1, 3, 101, 1, id="default"),
        pytest.param(2, 6, 101, 2, id="as-asked"),
        pytest.param(4, 98, 101, 3, id="bounded-by-the-spare-slots"),
        pytest.param(3, 100, 101, 1, id="at-the-limit-still-one-at-a-time"),
    ],
)
def test_the_rollout_surge(parallelism: int, replicas: int, slots: int, surge: int):
    assert rollout_surge(parallelism, replicas, slots) == surge


@pytest.mark.parametrize(("start", "target"), [(4, 1), (1, 4), (3, 3)])
def test_scaling_converges_to_the_lowest_slots(start: int, target: int):
    engine = play(want(target), [rep(slot_name(i)) for i in range(1, start + 1)], lambda step, engine: None)
    assert sorted(v.replica.slot for v in engine.views.values()) == sorted(slot_name(i) for i in range(1, target + 1))


@pytest.mark.parametrize(("replicas", "parallelism"), [(1, 1), (3, 1), (6, 1), (10, 1), (6, 2), (10, 3)])
def test_a_rolling_update_stays_within_the_balancers_armed_slots(replicas: int, parallelism: int):
    """The slots a roll uses (new replicas beside old ones draining in theirs) are all armed ones, so
    every new replica is checked at once (backend.balancer.armed_slots), with the simulated engine's
    drains and stops taking a step each."""
    highest = 0

    def check(step: Plan, engine: SimulatedEngine) -> None:
        nonlocal highest
        highest = max([highest, *(int(slot[1:]) for slot in step.create_in)])

    play(want(replicas, revision=2, parallelism=parallelism), [rep(slot_name(i)) for i in range(1, replicas + 1)], check)
    record = SimpleNamespace(spec=SimpleNamespace(Replicas=replicas))
    assert replicas < highest <= armed_slots(record, 1000, parallelism)  # type: ignore[arg-type]
