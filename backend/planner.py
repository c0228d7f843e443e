"""The reconciler's planner: what to do next for one service, as a pure function.

    plan(desired, observed, healing, active) -> Plan

`desired` is what the store says the service should be (`Desired`); `observed` is every replica the
engine reports, each with what its balancer and the reconciler know of it (`ReplicaView`: health, how
long it has been DOWN, whether it is on its way out); `healing` the replacements made earlier that
are not ready yet (id -> why they were made); `active` whether the service shows `active` now. The
answer says which replicas to create (in which balancer slots), which to remove at once (and why:
`Heal`), which to take out of the balancers to drain, which drained ones to stop, which the balancers
carry, and what to report (`Outcome`).

The rules, in one place:
- a replica counts while it is alive (running, restarting, created, paused) and not DOWN for longer
  than `replace_down_after`; the others (exited, dead, DOWN too long) are replaced: removed at once,
  a new one created in the lowest free slot (often the same);
- scaling creates in the lowest free slots and takes the least useful replicas out (not ready
  first, then the newest);
- a roll (replicas of an older revision alive) runs at most `parallelism` replicas above `replicas`
  in the balancers (the rollout parallelism: how many new replicas start in one step), and takes an
  old one out only while the ready new ones and the old ones together are more than `replicas`: never
  fewer ready replicas than asked for. The old ones taken out drain and stop beside the next steps
  (the next new replicas start in the step that takes the old ones out); they only keep their
  balancer slots until they are gone, and `slots` bounds everything that runs at once;
- a replica taken out is drained (its slot stays reserved, it no longer counts), then stopped; the
  planner never waits for either: it says what is under way and the reconciler looks again;
- a replica restarting again and again is reported (`error`) and left alone: no replacement churn;
- healing is not scaling: while a replacement is not ready the service is `degraded`, saying what
  it replaces and why; a paused replica or one failing its checks makes it `degraded` too; an active
  service whose replicas are all there stays `active` while their health is only being confirmed.

No Docker, no clock, no I/O: tests/test_planner.py covers it table by table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from backend.models import ServiceStatus

SOON = 0.25  # seconds before looking again at a service whose step is still under way
DRAIN_CHECK = 0.5  # ... whose only business is replicas leaving (a stop's end wakes it sooner)
WAIT_FOR_HEALTH = 2.0  # ... whose replicas wait for their health checks (health events come sooner)
CRASH_LOOP_RESTARTS = 3  # a replica restarted this often without staying up is reported
# A replica the engine restarted is still suspect this long after its start if its balancer has not
# seen it yet (its first check is a moment away); beyond it, its past is not held against it.
RESTART_SUSPECT_FOR = 60.0
ALIVE_STATES = ("running", "restarting", "created", "paused")
SLOT_PREFIX = "s"  # balancer slots are s1, s2, ... (backend.haproxy.slot_name)


class Leaving(StrEnum):
    """Where a replica taken out of the balancers is on its way out."""

    NO = ""  # not leaving
    DRAINING = "draining"  # out of the balancers; requests on it may still be finishing
    DRAINED = "drained"  # out of the balancers; no request left on it, or its drain time is over
    STOPPING = "stopping"  # being stopped and removed


@dataclass(frozen=True)
class Replica:
    """One replica as the engine reports it, whatever the engine."""

    id: str
    name: str
    slot: str  # the balancer slot it occupies (s1, s2, ...; "" when it has none)
    revision: str  # the service revision it was created for
    state: str  # running | restarting | created | paused | exited | dead | removing
    created: str = ""  # when it was created, RFC 3339 (sorts in time order)
    started: str = ""  # when it last started (the engine restarts it in place), RFC 3339; "" if unknown
    ip: str = ""  # its address on the service network ("" while it has none)
    restarts: int = 0  # how often the engine restarted it
    exit_code: int | None = None  # of its last exit
    oom_killed: bool = False  # its last exit was the kernel's out-of-memory kill
    memory_limit: int = 0  # bytes (0: none)


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the planner sees it: the engine's facts, the balancer's, the reconciler's."""

    replica: Replica
    health: str = ""  # UP | DOWN | starting as the balancer sees it; "" while it has not seen it
    down_for: float = 0.0  # seconds it has been DOWN (0 unless health is DOWN)
    running_for: float | None = None  # seconds since it last started (None: not running, or unknown)
    leaving: Leaving = Leaving.NO


@dataclass(frozen=True)
class Desired:
    """What the service should be, as far as its replicas go."""

    image: str
    replicas: int
    revision: int
    replace_down_after: float  # seconds a replica may stay DOWN before it is replaced
    parallelism: int = 1  # a roll's new replicas started at once (see `rollout_surge`: the slots bound it)
    slots: int | None = None  # balancer slots: replicas running at once, leaving ones included (None: no bound)
    # Seconds a running replica may take to pass its checks before the status names it (None: never)
    health_deadline: float | None = None


@dataclass
class Outcome:
    """What one sync found: the status to report, and when to look again (None: when told).

    `backoff`: look again after the service's retry backoff (a failure that is not the step's fault
    to retry at once, such as a replica that keeps crashing); the reconciler owns that count."""

    status: str
    message: str
    again_in: float | None = None
    backoff: bool = False


@dataclass(frozen=True)
class Heal:
    """A replica that died or stopped answering, and what becomes of it."""

    replica: Replica
    reason: str  # "exited (code 1)", "ran out of memory", "not answering health checks", ...
    replaced: bool  # a new replica takes its place (else it is only removed: the service shrank)

    @property
    def message(self) -> str:
        return f"replica {self.replica.name} {self.reason}; {'replacing' if self.replaced else 'removing'}"


@dataclass(frozen=True)
class Plan:
    """The next step for one service. Every tuple holds replicas from the observation."""

    outcome: Outcome
    create_in: tuple[str, ...] = ()  # a new replica in each of these slots
    replace: tuple[Replica, ...] = ()  # dead or DOWN too long: removed at once (they serve nothing)
    drain: tuple[Replica, ...] = ()  # out of the balancers now; stopped once drained
    stop: tuple[Replica, ...] = ()  # drained (or out of drain time): stop gracefully and remove
    serving: tuple[Replica, ...] = ()  # what the balancers carry (with the replicas created now)
    crashing: tuple[Replica, ...] = ()  # restarting again and again: reported, left alone
    heals: tuple[Heal, ...] = ()  # why each of `replace` goes; the replaced ones in `create_in` order
    healing: Mapping[str, str] = field(default_factory=dict)  # earlier replacements still not ready

    @property
    def changes(self) -> bool:
        return bool(self.create_in or self.replace or self.drain or self.stop)


def plan(
    desired: Desired, observed: Sequence[ReplicaView], healing: Mapping[str, str] | None = None, active: bool = False
) -> Plan:
    """The next step from `observed` towards `desired` (see the module docstring for the rules)."""
    leaving = [v for v in observed if v.leaving != Leaving.NO]
    present = [v for v in observed if v.leaving == Leaving.NO]
    alive = [v for v in present if v.replica.state in ALIVE_STATES and not _down_too_long(v, desired)]
    dead = [v for v in present if v not in alive]  # exited, stopped by hand, or DOWN for too long
    current = [v for v in alive if v.replica.revision == str(desired.revision)]
    outdated = [v for v in alive if v.replica.revision != str(desired.revision)]
    ready_now = [v for v in current if ready(v)]
    wanted = desired.replicas

    # Roll: an old replica goes out of the balancers as soon as a new one is ready (never fewer ready
    # replicas than `wanted`), and the next new one starts in the same step: at most `parallelism`
    # replicas above `wanted` in the balancers. Taken out, an old one drains and stops beside the
    # next steps; it only keeps its balancer slot until it is gone (`slots` bounds all that runs).
    excess_outdated = max(0, len(ready_now) + len(outdated) - wanted) if outdated else 0
    excess_current = max(0, len(current) - wanted)
    drain = _least_useful(outdated)[:excess_outdated] + _least_useful(current)[:excess_current]
    staying = [v for v in alive if v not in drain]
    kept_outdated = len(outdated) - min(excess_outdated, len(outdated))
    room = wanted + max(1, desired.parallelism) if outdated else wanted
    to_create = max(0, min(wanted - len(current), room - len(current) - kept_outdated))
    if desired.slots is not None:
        to_create = min(to_create, max(0, desired.slots - len(alive) - len(leaving)))
    # A leaving replica keeps its slot until it is gone: its requests may still be finishing there.
    create_in = _free_slots([v.replica.slot for v in alive + leaving], to_create)
    stop = [v for v in leaving if v.leaving == Leaving.DRAINED]
    crashing = [v for v in current if crash_looping(v.replica) or _up_again_unproven(v)]
    heals = [Heal(v.replica, _why_dead(v, desired), replaced=index < len(create_in)) for index, v in enumerate(dead)]
    # A replacement heals until it is ready (or gone: then its own replacement says why).
    still_healing = {
        key: why for key, why in (healing or {}).items() if any(v.replica.id == key and not ready(v) for v in current)
    }

    changes = bool(create_in or dead or drain or stop)
    under_way = SOON if changes else DRAIN_CHECK if leaving else None
    messages = [*still_healing.values(), *(heal.message for heal in heals if heal.replaced)]
    return Plan(
        outcome=_assess(desired, current, outdated, ready_now, crashing, under_way, messages, active),
        create_in=tuple(create_in),
        replace=_replicas(dead),
        drain=_replicas(drain),
        stop=_replicas(stop),
        serving=_replicas(staying),
        crashing=_replicas(crashing),
        heals=tuple(heals),
        healing=still_healing,
    )


def _assess(
    desired: Desired,
    current: list[ReplicaView],
    outdated: list[ReplicaView],
    ready_now: list[ReplicaView],
    crashing: list[ReplicaView],
    under_way: float | None,
    healing: list[str],
    active: bool,
) -> Outcome:
    """What to report once the step is taken (`under_way`: when to look again at the changes
    under way, None when there are none; `healing`: why each replacement not ready yet was made)."""
    wanted = desired.replicas
    if crashing:
        return Outcome(ServiceStatus.error, describe_crash(crashing[0].replica), backoff=True)
    if healing and not outdated:
        # Healing is not scaling: while a replacement is not ready, say what it replaces and why.
        again_in = under_way if under_way is not None else WAIT_FOR_HEALTH
        return Outcome(ServiceStatus.degraded, "; ".join(dict.fromkeys(healing)), again_in)
    if under_way is not None:
        return _progress(desired, current, len(ready_now), outdated, again_in=under_way)
    paused = [v for v in current if v.replica.state == "paused"]
    down = [v for v in current if v.health == "DOWN" and v not in paused]
    if not outdated and len(current) == wanted and (down or paused):
        problems = []
        if paused:
            problems.append(f"{_names(paused)} paused (not answering)")
        if down:
            problems.append(f"{len(down)} of {wanted} replicas DOWN (failing their health check: {_names(down)})")
        return Outcome(
            ServiceStatus.degraded,
            "; ".join(problems) + f"; replaced if still DOWN after {desired.replace_down_after:g} s",
            again_in=WAIT_FOR_HEALTH,
        )
    if not outdated and len(current) == wanted and active and len(ready_now) < wanted:
        # Every replica is there and none changed, only their health is not confirmed yet (the
        # engine or a balancer restarted): nothing scales, so the service stays active. (Only
        # then: looked at again every WAIT_FOR_HEALTH, every settled service cost the engine two
        # container lists every 2 s: 300 services, 300 lists a second.)
        return Outcome(ServiceStatus.active, "Scaling complete", again_in=WAIT_FOR_HEALTH)
    if outdated or len(ready_now) < wanted:
        # Waiting for health checks: the balancer's health events wake the reconciler sooner.
        return _progress(desired, current, len(ready_now), outdated, again_in=WAIT_FOR_HEALTH)
    return Outcome(ServiceStatus.active, "Scaling complete")


def _progress(
    desired: Desired, current: list[ReplicaView], ready_count: int, outdated: list[ReplicaView], again_in: float
) -> Outcome:
    if outdated:
        return Outcome(
            ServiceStatus.updating,
            f"Rolling out {desired.image}: {len(outdated)} of {desired.replicas} replicas still on the old image",
            again_in,
        )
    noun = "replica" if desired.replicas == 1 else "replicas"
    progress = f"{ready_count} ready"
    if laggards := _not_passing_in_time(desired, current):
        # The deadline, not the time so far: a message that changed with every look would be a new
        # status event (and history entry) every few seconds.
        progress += f"; {_names(laggards)} not passing health checks within {desired.health_deadline:g} s"
    return Outcome(ServiceStatus.scaling, f"Scaling to {desired.replicas} {noun} ({progress})", again_in)


def _not_passing_in_time(desired: Desired, current: Sequence[ReplicaView]) -> list[ReplicaView]:
    """Running replicas that had their health deadline and more to pass their checks, and did not:
    what a status that only said "scaling" would hide (a wrong ContainerPort, a replica not listening)."""
    if desired.health_deadline is None:
        return []
    return [
        v for v in current
        if not ready(v) and v.running_for is not None and v.running_for > desired.health_deadline
    ]


def rollout_surge(parallelism: int, replicas: int, slots: int) -> int:
    """The replicas a roll may run above `replicas`: the rollout parallelism, as far as the balancers'
    `slots` (one server line per replica, draining ones included) leave room; at least one (a service
    at the slots' limit still rolls, one replica at a time, in the spare slot kept for that)."""
    return max(1, min(parallelism, slots - replicas))


def describe_crash(replica: Replica) -> str:
    if replica.oom_killed:
        return (
            f"replica {replica.name} keeps exiting (exit code {replica.exit_code}, OOM-killed, {replica.restarts} "
            f"restarts): it needs more than its {replica.memory_limit // 2**20} MiB of memory; choose a larger "
            "ContainerSize"
        )
    # Running between two restarts, the engine no longer says how the last run ended.
    code = "" if replica.state == "running" else f"exit code {replica.exit_code}, "
    restarts = f"{replica.restarts} restart{'' if replica.restarts == 1 else 's'}"
    return f"replica {replica.name} keeps exiting ({code}{restarts}); see its logs"


def _why_dead(view: ReplicaView, desired: Desired) -> str:
    replica = view.replica
    if _down_too_long(view, desired):
        return "not answering health checks"
    if replica.oom_killed:
        return "ran out of memory"
    if replica.state in ("exited", "dead"):
        return f"exited (code {replica.exit_code})"
    return f"is {replica.state}"


def _names(views: list[ReplicaView]) -> str:
    return ", ".join(v.replica.name for v in views[:3]) + (" ..." if len(views) > 3 else "")


def ready(view: ReplicaView) -> bool:
    """Running, and UP at its balancer."""
    return view.replica.state == "running" and view.health == "UP"


def _down_too_long(view: ReplicaView, desired: Desired) -> bool:
    return view.health == "DOWN" and view.down_for > desired.replace_down_after


def _up_again_unproven(view: ReplicaView) -> bool:
    """Restarted by the engine and running again, but failing its checks (or not passed them yet):
    caught between two restarts of a crash loop, not a recovery, until its balancer says UP (a
    `restarting` replica is reported already; reporting the run between two restarts as scaling would
    flap the status error → scaling → error with every restart). One its balancer has not seen yet
    is suspect only just after its start: one running for long (seen by a restarted backend) is not
    judged by its past."""
    replica = view.replica
    if replica.restarts == 0 or replica.state != "running" or view.health == "UP":
        return False
    just_started = view.running_for is not None and view.running_for < RESTART_SUSPECT_FOR
    return view.health in ("DOWN", "starting") or just_started


def crash_looping(replica: Replica) -> bool:
    """Restarting now, or restarted CRASH_LOOP_RESTARTS times and not running."""
    return replica.state == "restarting" or (replica.restarts >= CRASH_LOOP_RESTARTS and replica.state != "running")


def _least_useful(views: list[ReplicaView]) -> list[ReplicaView]:
    """Removal order: not-ready replicas first, then the newest (keep the proven ones)."""
    newest_first = sorted(views, key=lambda v: v.replica.created, reverse=True)
    return sorted(newest_first, key=ready)  # stable: among equals, newest stays first


def _free_slots(used: Iterable[str], count: int) -> list[str]:
    """The lowest `count` balancer slots not in `used`."""
    taken = set(used)
    names = (f"{SLOT_PREFIX}{index}" for index in itertools.count(1))
    return list(itertools.islice((name for name in names if name not in taken), count))


def _replicas(views: Iterable[ReplicaView]) -> tuple[Replica, ...]:
    return tuple(v.replica for v in views)
