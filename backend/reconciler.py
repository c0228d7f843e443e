"""The reconciler: drives what runs on the engine towards what the store says each service should be.

Controller-style, as in Kubernetes' sample-controller:
- engine events, API calls and a periodic resync only mark a service dirty (add its name to a queue);
- `sync(name)` takes the next idempotent step for one service, read top to bottom as
    observe (`_observe`): the engine's replicas, each with its health at the balancer and, for one
      taken out of the balancers, how far it is on its way out;
    plan (`backend.planner.plan`, pure): which replicas to create in which slots, which to replace
      (and why), drain, stop, and what to report (scale, replace dead or too-long-DOWN replicas, roll
      outdated ones with one extra at most and never fewer ready than asked for, report a crash loop,
      say what heals);
    apply (`_apply`): through the engine (backend/engine.py) and the balancers;
    report (`report`): the service's status and message, as a `service`/`status` event too;
  before that it makes sure of the service's network and image;
- on an engine whose scheduler owns the replicas (`ServiceEngine`: swarm), observe/plan/apply is the
  engine's: after the network and the image, `sync` hands it the whole service (`converge`) and
  reports what it answers; deleting removes its swarm services first;
- a step never waits: a replica taken out of the balancers drains while the service is looked at
  again, and is stopped by a later step (once no request is left on it, or after DRAIN_WAIT) on the
  stop pool; a missing image is pulled on the pull pool (its progress reported as it comes); so the
  workers stay free for the other services;
- a step that waits for something asks to be looked at again shortly; a step that fails is retried
  with exponential backoff, and the service shows `error` with the reason meanwhile. Events and the
  resync leave a service alone while it waits out its backoff; an operator's change (`enqueue`)
  cuts the backoff short. The clock is injectable, so the backoff is tested without waiting;
- a step that finds the engine unreachable is not the service's failure: the service keeps its last
  known status (served with an "engine unreachable since ..." note), and the engine watcher, which
  pings every RECONNECT_MAX seconds at most while the engine is away, looks at every service again
  the moment it answers;
- a periodic resync pass reads the engine once, not once per service: the first sync of the pass
  takes a snapshot of everything of this installation (`EngineSnapshot`: one list of containers,
  one of networks), and each service's resync-only sync observes through it, as long as it is young
  (SNAPSHOT_MAX_AGE) and nothing touched the service since it was taken (an event about it, an
  operator's change, a sync of it, a stop of one of its replicas: `snapshot_serves`); any other sync
  lists for itself, so what an event or a change asks about is always seen fresh;
- a deleted service is torn down on a pool of its own (TEARDOWN_WORKERS at once), so deletes never
  wait for each other or for the workers;
- what it sees and does (status changes, replicas started, exited, OOM-killed, replaced or removed,
  health changes) goes into the service's history (`backend.history`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from backend.balancer import DRAIN_WAIT, BalancerError, Balancers, ReplicaHealth
from backend.docker_driver import (
    LABEL_SERVICE,
    TEARDOWN_STOP_TIMEOUT,
    ClosableStream,
    EngineUnavailable,
    ImageUnavailable,
    PullProgress,
    ServiceRef,
    SubnetTaken,
    engine_calls,
    object_name,
)
from backend.engine import Engine, EngineSnapshot, ServiceEngine, SnapshotEngine
from backend.events import EventHub
from backend.history import History, exit_reason
from backend.models import RevisionOutcome, ServiceStatus
from backend.planner import (
    ALIVE_STATES,
    SOON,
    Desired,
    Leaving,
    Outcome,
    Plan,
    Replica,
    ReplicaView,
    crash_looping,
    plan,
    ready,
    rollout_surge,
)
from backend.settings import Settings
from backend.store import ServiceRecord, Store, rfc3339_now
from backend.workqueue import WorkQueue

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
RECONNECT_FIRST, RECONNECT_MAX = 0.05, 0.5  # seconds between pings while the engine is away
TEARDOWN_WORKERS = 16  # deleted services torn down at once (mostly waiting out a stop grace)
TEARDOWN_WAIT_ON_STOP = 15.0  # seconds a stopping backend waits for the teardowns under way
START_GRACE = 10.0  # seconds a new replica gets to start, on top of its health checks, in a rollout
PULL_WORKERS = 2  # images pulled at once (a pull may take minutes: never on a worker)
STOP_WORKERS = 8  # drained replicas stopped at once (a stop may take STOP_TIMEOUT: never on a worker)
# Seconds a resync pass's snapshot of the engine serves (capped by the resync period); a pass that
# takes longer reads the engine again. The resync is the net under missed events: a missed one is
# noticed at most one period plus this late.
SNAPSHOT_MAX_AGE = 10.0


@dataclass
class Departure:
    """A replica taken out of the balancers, on its way out."""

    deadline: float  # (reconciler clock) when it is stopped even with requests still on it
    stopping: Future[None] | None = None  # its graceful stop and removal, once under way


@dataclass(frozen=True)
class PassSnapshot:
    """A snapshot of the engine taken for a resync pass: `seq` on the reconciler's touch counter just
    before it was read, `taken` on its clock."""

    snapshot: EngineSnapshot
    seq: int
    taken: float


def snapshot_serves(
    shared: PassSnapshot | None, resync_only: bool, touched: int, now: float, max_age: float, settled: bool = True
) -> bool:
    """Whether a service's sync may observe through the pass's snapshot instead of asking the engine:
    only a sync the resync alone asked for (an event or a change wants today's engine), only while the
    snapshot is young, and only when nothing touched the service (`touched`: the counter's value at
    its last touch) since the snapshot began to be read: else it may miss a replica just made (and
    the planner make another) or show one dead that was replaced. Only for a `settled` service (its
    last look found it active): the list does not say how often a running replica was restarted nor
    when it started, which a service in trouble (a crash loop between two restarts) is judged by."""
    if shared is None or not resync_only or not settled:
        return False
    return touched < shared.seq and now - shared.taken <= max_age


@dataclass
class Pull:
    """An image pull under way (or done) for one service."""

    image: str
    done: Future[str]


class Reconciler:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        hub: EventHub,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.engine = engine
        self.hub = hub
        self.history = History(store, hub, engine)  # each service's story, kept in the store
        self.resync_seconds = settings.resync_seconds
        self.replace_down_after = settings.replace_down_after
        self.rollout_parallelism = settings.rollout_parallelism
        self.slots = settings.max_replicas + 1  # server lines per balancer (backend.balancer)
        workers = settings.workers
        self.balancers = Balancers(
            engine,
            settings.lb_image,
            settings.max_replicas + 1,
            self._on_health,
            fallback_image=settings.lb_fallback_image,
            on_notice=lambda message: hub.publish("backend", "notice", Message=message),
            rollout_parallelism=settings.rollout_parallelism,
        )
        self._owners: dict[str, dict[str, tuple[str, str]]] = {}  # service uid -> slot -> (container id, name)
        # service uid -> replacement container id -> why it was made ("replica X ...; replacing"),
        # until the replacement is ready: the service's message while it heals
        self._healing: dict[str, dict[str, str]] = {}
        self._departures: dict[str, dict[str, Departure]] = {}  # service uid -> leaving replica id -> ...
        self._pulls: dict[str, Pull] = {}  # service name -> the pull of its image
        self._pull_slots = threading.BoundedSemaphore(PULL_WORKERS)
        self._stop_pool = ThreadPoolExecutor(max_workers=STOP_WORKERS, thread_name_prefix="reconciler-stop")
        self._clock = clock  # monotonic seconds: backoff deadlines
        self.queue = WorkQueue(clock)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._failures: dict[str, int] = {}  # consecutive failed steps per service
        self._retry_at: dict[str, float] = {}  # when a failed service is due again (monotonic)
        self._events_stream: ClosableStream[dict[str, Any]] | None = None
        self._engine_lock = threading.Lock()
        self.engine_error: str | None = None  # why the engine can't be reached, None when it can
        self.engine_down_since: str | None = None  # since when (RFC 3339), None when it can
        self._teardowns = ThreadPoolExecutor(max_workers=TEARDOWN_WORKERS, thread_name_prefix="teardown")
        self._teardown_lock = threading.Lock()
        self._tearing_down: set[str] = set()  # uids of the services whose teardown runs now
        self._teardown_futures: set[Future[None]] = set()
        self.orphan_grace = settings.orphan_grace_seconds
        self.clock: Callable[[], float] = time.monotonic  # for the orphan grace period (tests move it)
        self._unknown_since: dict[str, float] = {}  # uid of objects the store does not know -> first seen
        self._orphans_lock = threading.Lock()  # the resync loop and a direct call never interleave
        # service uid -> (revision rolled back to, why): the service's message once it is active again
        self._rolled_back: dict[str, tuple[int, str]] = {}
        # The resync's shared snapshot (see snapshot_serves): each touch of a service (an event, a
        # change, a sync, a stop) takes the next number of one counter, and so does a snapshot.
        self._touch_lock = threading.Lock()
        self._touch_counter = itertools.count(1)
        self._touched: dict[str, int] = {}  # service name -> counter at its last touch
        self._resync_asked: set[str] = set()  # names the resync marked dirty, not synced since
        self._pass_snapshot: PassSnapshot | None = None
        self._pass_snapshot_lock = threading.Lock()  # one worker reads the engine, the others wait for it
        self.snapshot_max_age = min(SNAPSHOT_MAX_AGE, self.resync_seconds)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        targets = [self._work] * self._workers + [self._watch_events, self._resync_loop]
        for index, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"reconciler-{target.__name__}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        self.balancers.stop()
        self.queue.shutdown()
        self._stop_pool.shutdown(wait=False, cancel_futures=True)  # a stop under way finishes (STOP_TIMEOUT)
        # Teardowns under way finish (bounded: a stop grace each); those not started yet are left
        # to the next backend, which finds the services marked deleting.
        self._teardowns.shutdown(wait=False, cancel_futures=True)
        with self._teardown_lock:
            running = list(self._teardown_futures)
        wait(running, timeout=TEARDOWN_WAIT_ON_STOP)
        stream = self._events_stream
        if stream is not None:
            # closing a half-dead HTTP stream may fail in several ways; it's closed either way
            with contextlib.suppress(Exception):
                stream.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def enqueue(self, name: str) -> None:
        """Look at a service now: the operator changed it, so a running backoff no longer applies."""
        self._touch(name, asked=True)
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
        self.queue.add(name)

    def mark_dirty(self, name: str, background: bool = False) -> None:
        """Something about a service changed (an event, the resync): look at it, unless it is
        waiting out a backoff after a failure (its retry is queued already). `background`: behind
        everything else (the resync: with hundreds of services a pass takes the workers a while)."""
        if not background:
            self._touch(name, asked=True)
        if self._retry_at.get(name, 0.0) <= self._clock():
            self.queue.add(name, background=background)

    def resync_all(self) -> None:
        with self._pass_snapshot_lock:
            self._pass_snapshot = None  # a new pass reads the engine anew (once, at its first sync)
        for name in self.store.names():
            with self._touch_lock:
                self._resync_asked.add(name)
            self.mark_dirty(name, background=True)

    def _touch(self, name: str, asked: bool = False) -> None:
        """Something happened to the service (or is about to): a snapshot read before now no longer
        tells its state. `asked`: an event or a change asks for a look at it, so its next sync is not
        the resync's alone (it reads the engine itself)."""
        with self._touch_lock:
            self._touched[name] = next(self._touch_counter)
            if asked:
                self._resync_asked.discard(name)

    def _snapshot_for(self, record: ServiceRecord, resync_only: bool) -> EngineSnapshot | None:
        """The resync pass's snapshot of the engine when it may stand for this service's own look (see
        snapshot_serves), taking one when the pass has none or its one is too old; None: look fresh."""
        if not resync_only or not isinstance(self.engine, SnapshotEngine) or isinstance(self.engine, ServiceEngine):
            return None  # (swarm's scheduler owns the replicas: it converges each service itself)
        with self._pass_snapshot_lock:
            shared = self._pass_snapshot
            if shared is None or self._clock() - shared.taken > self.snapshot_max_age:
                with self._touch_lock:
                    seq = next(self._touch_counter)  # before the read: a touch during it counts as after
                taken = self._clock()
                shared = self._pass_snapshot = PassSnapshot(self.engine.snapshot(), seq, taken)
        with self._touch_lock:
            touched = self._touched.get(record.name, 0)
        settled = record.status == ServiceStatus.active
        if not snapshot_serves(shared, resync_only, touched, self._clock(), self.snapshot_max_age, settled):
            return None
        return shared.snapshot if shared.snapshot.covers(record.uid) else None

    # -- threads -----------------------------------------------------------------------------

    def _work(self) -> None:
        while (name := self.queue.get()) is not None:
            again_in: float | None = None
            try:
                with engine_calls():
                    again_in = self.sync(name)
            except EngineUnavailable as exc:
                # Not the service's failure: it keeps its last known status (see _engine_trouble).
                self._engine_trouble(name, str(exc))
            except Exception as exc:  # any failure of a step: report it on the service, retry later
                if self._stopping.is_set():
                    # The backend is closing under this step (its pools refuse work): not the
                    # service's failure; the next backend looks at it again.
                    log.debug("sync of %s cut short by the backend stopping: %s", name, exc)
                    continue
                log.warning("sync of %s failed: %s", name, exc, exc_info=not isinstance(exc, docker.errors.APIError))
                self.report(name, ServiceStatus.error, describe_failure(exc))
                again_in = self._backoff(name)
            finally:
                self.queue.done(name)
            if again_in is not None:
                self.queue.add_after(name, again_in)

    def _backoff(self, name: str) -> float:
        failures = self._failures.get(name, 0) + 1
        self._failures[name] = failures
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1))
        self._retry_at[name] = self._clock() + delay
        return delay

    def _watch_events(self) -> None:
        """Follow Docker's event stream; every event of ours marks its service dirty.

        Also the engine watcher: when the stream ends (the engine went away, or a worker found it
        unreachable and closed the stream), ping with a short backoff capped at RECONNECT_MAX, so
        the engine's return is noticed within about that long; then look at every service again.
        """
        delay = RECONNECT_FIRST
        while not self._stopping.is_set():
            try:
                with engine_calls():
                    self.engine.ping()
                    stream = self.engine.events()
                self._events_stream = stream
                self._engine_up()
                delay = RECONNECT_FIRST
                self.resync_all()  # whatever happened while we were not listening
                for event in stream:  # ends quietly when the connection breaks
                    self._on_docker_event(event)
            except EngineUnavailable as exc:
                if self._stopping.is_set():
                    return
                self._engine_down(str(exc))
            except Exception as exc:  # the engine answered, with an error: try again shortly
                if self._stopping.is_set():
                    return
                log.warning("Docker event stream failed: %s", exc)
            self._stopping.wait(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def _on_docker_event(self, event: dict[str, Any]) -> None:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get(LABEL_SERVICE)
        if not name:
            return
        self.mark_dirty(name)  # (a touch: the next look at it is fresh)
        if event.get("Type") == "container":
            self.history.on_docker_event(event)
            action = str(event.get("Action") or event.get("status") or "")
            self.hub.publish(
                "container",
                action.split(":")[0],
                Service=name,
                Id=(event.get("Actor") or {}).get("ID", ""),
                Name=attributes.get("name", ""),
            )

    def slot_owners(self, uid: str) -> dict[str, str]:
        """slot -> name of the serving replica in it, as of the service's last reconcile."""
        return {slot: name for slot, (_, name) in self._owners.get(uid, {}).items()}

    def _on_health(self, name: str, slot: str, health: ReplicaHealth) -> None:
        """A replica's health changed as its balancer sees it (slot "" : the balancer's log ended)."""
        self.mark_dirty(name)
        if not slot:
            return
        record = self.store.get(name)
        owner = self._owners.get(record.uid, {}).get(slot) if record else None
        if owner:
            self.hub.publish(
                "container", "health", Service=name, Id=owner[0], Name=owner[1], Health=health.health,
                HealthSince=health.since.isoformat().replace("+00:00", "Z"),
            )
            what = {"UP": "passes its health check", "DOWN": "fails its health check"}.get(health.health)
            if what:  # "starting" is no news: the replica's start says it
                self.history.record(
                    name=name, type="health", action=health.health, replica=owner[1],
                    message=f"{owner[1]} {health.health} ({what})", if_changed=True,
                )

    def _resync_loop(self) -> None:
        while not self._stopping.wait(self.resync_seconds):
            if self.engine_error is not None:
                continue  # the engine watcher looks at everything the moment the engine is back
            try:
                with engine_calls():
                    self.resync_all()
                    self.collect_orphans()
            except EngineUnavailable as exc:
                self._engine_trouble(None, str(exc))
            except Exception as exc:  # keep the loop alive whatever a resync hits
                log.warning("resync failed: %s", exc)

    def _engine_trouble(self, name: str | None, why: str) -> None:
        """A call found the engine unreachable. Away for real: say so, and leave the service be (the
        watcher resyncs every service on the engine's return). Only a hiccup: look again soon."""
        try:
            self.engine.ping()
        except EngineUnavailable as exc:
            self._engine_down(str(exc))
            return
        log.info("a call to the Docker engine failed, the engine answers again: %s", why)
        if name is not None:
            self.queue.add_after(name, self._backoff(name))

    def _engine_down(self, why: str) -> None:
        with self._engine_lock:
            if self.engine_error is not None:
                self.engine_error = why  # the latest reason; the news is out already
                return
            self.engine_error, since = why, rfc3339_now()
            self.engine_down_since = since
        log.warning("%s", why)
        self.hub.publish("engine", "down", Message=why, Since=since)
        stream = self._events_stream
        if stream is not None:  # a worker noticed first: the watcher must start pinging now
            with contextlib.suppress(Exception):
                stream.close()
        for record in self.store.all():  # each keeps its status; the note says why nothing moves
            self.hub.publish("service", "status", Name=record.name, Status=record.status,
                             Message=engine_note(record.message, since))

    def _engine_up(self) -> None:
        with self._engine_lock:
            if self.engine_error is None:
                return
            self.engine_error = self.engine_down_since = None
        log.info("Docker engine reachable again")
        self.hub.publish("engine", "up", Message="Docker engine reachable")
        for record in self.store.all():
            self.hub.publish("service", "status", Name=record.name, Status=record.status, Message=record.message)

    # -- one step ----------------------------------------------------------------------------

    def sync(self, name: str) -> float | None:
        """Take the next step for one service; answer when to look again (None: when told)."""
        with self._touch_lock:
            resync_only = name in self._resync_asked
            self._resync_asked.discard(name)
        try:
            return self._sync(name, resync_only)
        finally:
            self._touch(name)  # what this step did is not in a snapshot read before its end

    def _sync(self, name: str, resync_only: bool) -> float | None:
        record = self.store.get(name)
        if record is None:
            return None
        if record.deleting:
            self._start_teardown(record)
            return None
        outcome = self._converge(record, resync_only)
        if outcome is None:  # nothing to say yet (an image pull reports its own progress)
            return None
        if outcome.status == ServiceStatus.active:
            self.store.revision_ready(record.uid, record.revision)
            note = self._rolled_back.get(record.uid)
            if note and note[0] == record.revision:
                outcome.message = note[1]
        self.report(name, outcome.status, outcome.message, record.generation)
        return self._backoff(name) if outcome.backoff else outcome.again_in

    def _converge(self, record: ServiceRecord, resync_only: bool = False) -> Outcome | None:
        """One step for a live service: observe -> plan (backend.planner: pure) -> apply (through the
        engine); `sync` reports the outcome (None: nothing to report yet). `resync_only`: only the
        periodic resync asked for this step (it may observe through the pass's snapshot)."""
        snapshot = self._snapshot_for(record, resync_only)
        network = self._ensure_network(record, snapshot)
        try:
            if not self._image_ready(record, snapshot):
                self._pull(record)  # it reports its own progress; the service is looked at again after it
                return None
        except ImageUnavailable as exc:
            return Outcome(ServiceStatus.error, str(exc), backoff=True)
        if isinstance(self.engine, ServiceEngine):  # swarm places, heals and rolls the replicas itself
            ref = ServiceRef(record.name, record.uid)
            current = self.store.revision(record.uid, record.revision)
            rolling = current is not None and current.Outcome == RevisionOutcome.rolling
            outcome = self.engine.converge(ref, record.spec, record.revision, network, rolling=rolling)
            reverted = self.engine.rolled_back(ref, record.revision)
            if reverted is not None:
                return self._engine_rolled_back(record, *reverted) or outcome
            running = [r.id for r in self.engine.replicas(ref) if r.state == "running"]
            if running != record.containers:
                self.store.update(record.name, containers=running)
            return outcome
        observed = self._observe(record, snapshot)
        rolled_back = self._check_rollout(record, observed)
        if rolled_back is not None:
            return rolled_back
        surge = rollout_surge(self.rollout_parallelism, record.spec.Replicas, self.slots)
        desired = Desired(
            record.spec.Image, record.spec.Replicas, record.revision, self.replace_down_after, surge, self.slots,
            health_deadline=rollout_deadline(record),
        )
        healing = self._healing.get(record.uid, {})
        step = plan(desired, observed, healing, active=record.status == ServiceStatus.active)
        listed = snapshot.balancers.get(record.uid, []) if snapshot is not None else None
        self._apply(record, object_name(network), step, {view.replica.id: view for view in observed}, listed)
        return step.outcome

    def _engine_rolled_back(self, record: ServiceRecord, to: int, reason: str) -> Outcome | None:
        """The engine (swarm) rolled the revision being rolled out back to revision `to` by itself: the
        store follows (as after a rollback of our own), so the service converges on `to` again."""
        why = f"revision {record.revision}'s replicas failed ({reason})"
        if self.store.roll_back(record.uid, record.revision, to, why) is None:
            return None  # the service changed meanwhile, or `to` is unknown: the outcome says what runs
        good = self.store.revision(record.uid, to)
        message = f"rolled back to revision {to} ({good.Image if good else '?'}): {why}"
        log.warning("service %s: %s", record.name, message)
        self._rolled_back[record.uid] = (to, message)
        self.history.record(name=record.name, type="action", action="rollback", by="auto", message=message)
        self.hub.publish("service", "updated", Name=record.name)
        self.report(record.name, ServiceStatus.updating, message)
        return Outcome(ServiceStatus.updating, message, again_in=SOON)

    def _observe(self, record: ServiceRecord, snapshot: EngineSnapshot | None = None) -> list[ReplicaView]:
        """Each replica as the planner sees it: the engine's facts (from `snapshot` when given), its
        health at the balancer and, for one taken out of the balancers, how far it is on its way out."""
        found = (snapshot.replicas.get(record.uid, []) if snapshot is not None
                 else self.engine.replicas(ServiceRef(record.name, record.uid)))
        replicas = {replica.id: replica for replica in found}
        departures = self._departures.setdefault(record.uid, {})
        for gone in set(departures) - set(replicas):
            del departures[gone]
        busy = self._busy_slots(record, [replicas[i].slot for i, d in departures.items() if d.stopping is None])
        now, views = datetime.now(UTC), []
        for replica in replicas.values():
            known = self.balancers.health(record.uid, replica.slot, replica.id)
            health = known.health if known else ""
            down_for = (now - known.since).total_seconds() if known and known.health == "DOWN" else 0.0
            started = docker_time(replica.started) if replica.state == "running" else None
            running_for = (now - started).total_seconds() if started else None
            leaving = Leaving.NO
            if (departure := departures.get(replica.id)) is not None:
                leaving = self._leaving(departure, replica, busy)
            views.append(
                ReplicaView(replica, health=health, down_for=down_for, running_for=running_for, leaving=leaving)
            )
        return views

    def _apply(
        self, record: ServiceRecord, network: str, step: Plan, observed: dict[str, ReplicaView],
        listed: list[Container] | None = None,
    ) -> None:
        """Take the planned step; nothing here waits for a drain, a stop or a pull. `listed`: the
        service's balancers as the pass's snapshot has them (None: the balancers list them)."""
        if step.heals:
            self._heal(record, step)
        port = record.spec.ContainerPort or record.spec.ServicePort
        # The balancers are made (or checked) while the new replicas start, not after them: they start
        # with the staying replicas, and the new ones join through the gate below once they run.
        with ThreadPoolExecutor(max_workers=1) as pool:
            balancers_ready = pool.submit(self.balancers.ensure, record, _servers(step.serving, port), listed)
            try:
                created = self._create_replicas(record, network, list(step.create_in))
            except Exception:
                with contextlib.suppress(Exception):
                    balancers_ready.result()
                raise
            balancers = balancers_ready.result()
        serving = [*step.serving, *created]
        self.store.update(record.name, containers=[r.id for r in serving])
        self._owners[record.uid] = {r.slot: (r.id, r.name) for r in serving}
        replaced = [heal for heal in step.heals if heal.replaced]
        self._healing[record.uid] = {
            **step.healing, **{new.id: heal.message for new, heal in zip(created, replaced, strict=False)}
        }
        # The balancers carry exactly the serving replicas, each slot gated for the replica now in it
        # (a replacement often gets its predecessor's slot and address); the ones taken out drain
        # there until a later step stops them; the dead ones serve nothing and go at once.
        owners = {r.slot: r.id for r in serving if r.slot}
        self.balancers.set_servers(record, balancers, _servers(serving, port), owners)
        departures = self._departures.setdefault(record.uid, {})
        for replica in step.drain:
            departures[replica.id] = Departure(deadline=self._clock() + DRAIN_WAIT)
        self._record_removals(record, step, observed)
        for replica in step.stop:
            departures[replica.id].stopping = self._stop_later(record.name, replica)
        self.engine.remove_replicas(step.replace, graceful=False)

    def _leaving(self, departure: Departure, replica: Replica, busy: set[str]) -> Leaving:
        stopping = departure.stopping
        if stopping is None:
            drained = replica.state != "running" or replica.slot not in busy or self._clock() >= departure.deadline
            return Leaving.DRAINED if drained else Leaving.DRAINING
        if stopping.done() and (error := stopping.exception()) is not None:
            departure.stopping = None  # the next step tries again (after the backoff)
            raise error
        return Leaving.STOPPING

    def _check_rollout(self, record: ServiceRecord, observed: list[ReplicaView]) -> Outcome | None:
        """A rollout whose new replicas fail is rolled back to the last revision that was ever ready:
        when a replica of the revision being rolled out keeps exiting, or is not ready within
        `rollout_deadline`. The store makes that revision current again, with its image; its replicas,
        which a rolling update never removes before a new one is ready, serve on, and the failed ones
        are outdated now and go. None when there is nothing to roll back."""
        ours = [v for v in observed if v.leaving == Leaving.NO and v.replica.revision == str(record.revision)]
        if not ours:
            return None  # nothing of this revision runs yet (e.g. its image is being pulled)
        revision = self.store.revision(record.uid, record.revision)
        if revision is None or revision.Outcome != RevisionOutcome.rolling:
            return None
        reason = rollout_failure(ours, rollout_deadline(record))
        if reason is None:
            return None
        good = self.store.last_good(record.uid, record.revision)
        if good is None:
            return None  # nothing to go back to: the replicas are healed, the service says why
        why = f"revision {record.revision}'s {reason}"
        if self.store.roll_back(record.uid, record.revision, good.Number, why) is None:
            return None  # the service changed meanwhile: the next look sees it
        message = f"rolled back to revision {good.Number} ({good.Image}): {why}"
        log.warning("service %s: %s", record.name, message)
        self._rolled_back[record.uid] = (good.Number, message)
        self.history.record(name=record.name, type="action", action="rollback", by="auto", message=message)
        self.hub.publish("service", "updated", Name=record.name)
        # said now: the sync's own report is for the generation before the rollback, so it is dropped
        self.report(record.name, ServiceStatus.updating, f"Rolling back to revision {good.Number} ({good.Image}): {why}")
        return Outcome(ServiceStatus.updating, message, again_in=SOON)  # converge on the revision rolled back to

    def _busy_slots(self, record: ServiceRecord, slots: list[str]) -> set[str]:
        """Which of the draining replicas' `slots` some balancer still has a request on (one question
        to each balancer; one that does not answer counts as busy: the drain deadline holds)."""
        if not slots:
            return set()
        balancers = self.balancers.containers(ServiceRef(record.name, record.uid))
        try:
            return self.balancers.busy_slots([b for b in balancers if b.status == "running"], slots)
        except (BalancerError, docker.errors.APIError) as exc:
            log.info("service %s: drain not checked: %s", record.name, exc)
            return set(slots)

    def _stop_later(self, name: str, replica: Replica) -> Future[None]:
        """Stop (StopSignal, then kill after the stop timeout) and remove a drained replica on the
        stop pool; the service is looked at again once that is done."""
        self._touch(name)
        stopping = self._stop_pool.submit(self.engine.remove_replicas, [replica])
        stopping.add_done_callback(lambda _: self._stopped(name))
        return stopping

    def _stopped(self, name: str) -> None:
        self._touch(name)  # a replica of it is gone: a snapshot read before now still has it
        self.queue.add(name)

    def _image_ready(self, record: ServiceRecord, snapshot: EngineSnapshot | None = None) -> bool:
        """Whether the engine has the service's image (a pull of it that ended is taken in: a
        failed one is raised, as ImageUnavailable). With a snapshot, asked once per image for it."""
        pull = self._pulls.get(record.name)
        if pull is not None and pull.image == record.spec.Image:
            if not pull.done.done():
                return False
            del self._pulls[record.name]
            pull.done.result()  # raises what the pull raised
            return True
        if snapshot is None:
            return self.engine.has_image(record.spec.Image)
        known = snapshot.images.get(record.spec.Image)
        if known is None:
            known = snapshot.images[record.spec.Image] = self.engine.has_image(record.spec.Image)
        return known

    def _pull(self, record: ServiceRecord) -> None:
        """Pull the service's image on the pull pool, unless that runs already; the service is looked
        at again when it ends. The pull reports its own progress (`_pulling`); a failed one is an
        error, retried with backoff."""
        pull = self._pulls.get(record.name)
        if pull is not None and pull.image == record.spec.Image:
            return  # under way (a pull of an image no longer wanted just ends)
        image = record.spec.Image
        done: Future[str] = Future()
        self._pulls[record.name] = Pull(image, done)
        done.add_done_callback(lambda _: self.queue.add(record.name))
        # A thread of its own, not a pool's: a pull may outlast the backend, which must not wait for
        # it to exit; PULL_WORKERS of them pull at once, the others wait their turn.
        threading.Thread(target=self._pull_image, args=(record, image, done), name=f"pull-{record.name}", daemon=True).start()

    def _pull_image(self, record: ServiceRecord, image: str, done: Future[str]) -> None:
        with self._pull_slots:
            if self._stopping.is_set() or not done.set_running_or_notify_cancel():
                return
            try:
                with engine_calls():
                    done.set_result(
                        self.engine.ensure_image(image, on_progress=lambda progress: self._pulling(record, progress))
                    )
            except BaseException as exc:  # the sync that looks next raises it
                done.set_exception(exc)

    def _pulling(self, record: ServiceRecord, progress: PullProgress) -> None:
        """A pull of the service's image got further: say so in its status message and as a `pull`
        event (bytes and layers, for a progress bar). A service in `error` (its image could not be
        pulled before) keeps that status until the engine reports layers coming in."""
        if not progress.layers and record.status == ServiceStatus.error:
            return
        status = ServiceStatus.updating if record.status == ServiceStatus.updating else ServiceStatus.scaling
        self.report(record.name, status, progress.describe())
        self.hub.publish(
            "pull", "progress", Name=record.name, Image=progress.reference, Done=progress.done,
            Total=progress.total, Percent=progress.percent, Layers=progress.layers, LayersDone=progress.layers_done,
        )

    def _record_removals(self, record: ServiceRecord, step: Plan, observed: dict[str, ReplicaView]) -> None:
        """Tell the history why replicas go (their `die` is then no trouble): the dead ones as they
        are removed, the drained ones as they are stopped."""
        self.history.expect_removal(r.id for r in (*step.replace, *step.stop))
        for replica in step.replace:
            if replica.state in ALIVE_STATES:  # alive, but DOWN for too long
                down_for = observed[replica.id].down_for
                reason, exit_code, oom = f"DOWN for {down_for:.0f} s", None, False
            else:
                exit_code, oom = replica.exit_code, replica.oom_killed
                reason = exit_reason(exit_code, oom)
            self.history.record(
                name=record.name, type="replica", action="replace", replica=replica.name,
                message=f"replaced {replica.name} ({reason})", exit_code=exit_code, oom_killed=oom,
            )
        for replica in step.stop:
            why = (f"rolled to {record.spec.Image}" if replica.revision != str(record.revision)
                   else f"scaled down to {record.spec.Replicas}")
            self.history.record(
                name=record.name, type="replica", action="remove", replica=replica.name,
                message=f"removed {replica.name} ({why})",
            )

    def _heal(self, record: ServiceRecord, step: Plan) -> None:
        """Replicas that died or stopped answering are replaced (or only removed, when the service
        shrank meanwhile): one event each, and the service says so at once, before the replacements
        are even created (the planner's outcome keeps saying it until they are ready)."""
        for heal in step.heals:
            self.hub.publish(
                "service", "heal", Name=record.name, Replica=heal.replica.name, Id=heal.replica.id,
                Reason=heal.reason, Replaced=heal.replaced, Message=heal.message,
            )
        messages = [heal.message for heal in step.heals if heal.replaced]
        if messages:
            self.report(record.name, ServiceStatus.degraded, "; ".join(messages))

    def _ensure_network(self, record: ServiceRecord, snapshot: EngineSnapshot | None = None) -> Network:
        """The service's network on its own subnet of the network pool; when someone else on the engine
        took that subnet meanwhile (another installation, a kept network), move to a free one."""
        ref = ServiceRef(record.name, record.uid)
        existing = snapshot.networks.get(record.uid) if snapshot is not None else None
        existing = existing or self.engine.find_network(ref)
        if existing is not None:
            return existing
        subnet = record.subnet or self.store.assign_subnet(record.name)
        try:
            return self.engine.ensure_network(ref, subnet)
        except SubnetTaken:
            subnet = self.store.assign_subnet(record.name, avoid=self.engine.used_subnets())
            log.info("service %s: subnet taken on the engine, moving to %s", record.name, subnet)
            return self.engine.ensure_network(ref, subnet)

    def _create_replicas(self, record: ServiceRecord, network: str, slots: list[str]) -> list[Replica]:
        """Create and start a replica in each of `slots`, all at once."""
        if not slots:
            return []
        ref = ServiceRef(record.name, record.uid)
        with ThreadPoolExecutor(max_workers=min(16, len(slots))) as pool:
            futures = [
                pool.submit(self.engine.start_replica, ref, record.spec, record.revision, network, slot)
                for slot in slots
            ]
            errors = [error for f in futures if (error := f.exception()) is not None]
            created = [f.result() for f in futures if f.exception() is None]
        if errors:
            self.history.expect_removal(r.id for r in created)
            self.engine.remove_replicas(created, graceful=False)  # nothing half-created
            raise errors[0]
        return created

    def _start_teardown(self, record: ServiceRecord) -> None:
        """Tear the service down on the teardown pool, unless that runs already."""
        with self._teardown_lock:
            if record.uid in self._tearing_down:
                return
            self._tearing_down.add(record.uid)
        try:
            future = self._teardowns.submit(self._run_teardown, record)
        except RuntimeError:  # stopping: the next backend carries on
            with self._teardown_lock:
                self._tearing_down.discard(record.uid)
            return
        with self._teardown_lock:
            self._teardown_futures.add(future)
        future.add_done_callback(self._teardown_finished)

    def _teardown_finished(self, future: Future[None]) -> None:
        with self._teardown_lock:
            self._teardown_futures.discard(future)

    def _run_teardown(self, record: ServiceRecord) -> None:
        try:
            with engine_calls():
                self.teardown(record)
        except EngineUnavailable as exc:
            self._engine_trouble(record.name, str(exc))
        except Exception as exc:  # still deleting: say why, retry with backoff
            if self._stopping.is_set():
                return  # the store may be closed under us; the next backend carries on
            log.warning("teardown of %s failed: %s", record.name, exc)
            delay = self._backoff(record.name)
            message = f"Deleting failed: {describe_failure(exc)}; retrying in {delay:g} s"
            if self.store.set_status(record.name, ServiceStatus.deleting, message):
                self.hub.publish("service", "status", Name=record.name, Status=ServiceStatus.deleting.value, Message=message)
            self.queue.add_after(record.name, delay)
        finally:
            with self._teardown_lock:
                self._tearing_down.discard(record.uid)

    def teardown(self, record: ServiceRecord) -> None:
        """Remove what a deleted service owned (with keep: all but its replicas), then forget it.

        Replicas get TEARDOWN_STOP_TIMEOUT seconds after their StopSignal, then they are killed."""
        ref = ServiceRef(record.name, record.uid)
        if isinstance(self.engine, ServiceEngine):
            self.engine.remove_services(ref, keep_replicas=record.keep)  # its front first, as below
        self.balancers.remove_all(ref)  # the address stops answering first
        if not record.keep:
            self.history.expect_removal(r.id for r in self.engine.replicas(ref))  # their exits are no trouble
            self.engine.remove_containers(ref, stop_timeout=TEARDOWN_STOP_TIMEOUT)
            self.engine.remove_network(ref)
            if record.remove_volumes:  # only when the delete asked for it: volumes hold the data
                self.engine.remove_service_volumes(record.name)
        self._owners.pop(record.uid, None)
        self._healing.pop(record.uid, None)
        self._departures.pop(record.uid, None)
        self._pulls.pop(record.name, None)
        with self._touch_lock:
            self._touched.pop(record.name, None)
            self._resync_asked.discard(record.name)
        self.store.forget(record)
        self.hub.publish("service", "deleted", Name=record.name)

    def collect_orphans(self) -> None:
        """Remove objects of ours whose service the store does not know, once that is proven.

        An unknown uid is not proof: the state file may be an older copy (restored from a backup) that
        never saw a service created since. So objects of an unknown uid are first reported (log and an
        `orphan` event), and removed only after `orphan_grace_seconds` during which the uid stayed
        unknown; a uid that becomes known meanwhile starts from scratch if it is ever unknown again.
        Volumes are never collected.
        """
        with self._orphans_lock:
            self._collect_orphans()

    def _collect_orphans(self) -> None:
        owned = self.engine.owned_uids()
        known = self.store.known_uids()
        now = self.clock()
        for uid in list(self._unknown_since):
            if uid in known or uid not in owned:
                del self._unknown_since[uid]
        for uid, name in owned.items():
            if uid in known:
                continue
            if uid not in self._unknown_since:
                self._unknown_since[uid] = now
                log.warning(
                    "objects of service %s (uid %s) are unknown to the state file; removing them in %g s "
                    "unless the service is known by then", name, uid, self.orphan_grace,
                )
                self.hub.publish("orphan", "found", Name=name, Uid=uid, RemoveIn=self.orphan_grace)
            if now - self._unknown_since[uid] < self.orphan_grace:
                continue
            log.info("removing orphaned objects of service %s (uid %s)", name, uid)
            ref = ServiceRef(name, uid)
            self.engine.remove_containers(ref, graceful=False)
            self.engine.remove_network(ref)
            del self._unknown_since[uid]
            self.hub.publish("orphan", "removed", Name=name, Uid=uid)

    def report(self, name: str, status: str, message: str, generation: int | None = None) -> None:
        if status != ServiceStatus.error:
            self._failures.pop(name, None)  # the next failure starts the backoff afresh
            self._retry_at.pop(name, None)
        if self.store.set_status(name, str(status), message, generation):
            self.hub.publish("service", "status", Name=name, Status=str(status), Message=message)
            self.history.record(name=name, type="status", action=str(status), message=message)


def engine_note(message: str, since: str) -> str:
    """A service's last known message while the engine is away."""
    return f"{message} (Docker engine unreachable since {since}; waiting for it)"


def _servers(replicas: Sequence[Replica], port: int) -> dict[str, str]:
    """slot -> ip:port of the replicas that have both (a replica just created has both)."""
    return {r.slot: f"{r.ip}:{port}" for r in replicas if r.slot and r.ip}


def rollout_deadline(record: ServiceRecord) -> float:
    """Seconds a replica of a new revision gets to be ready: its health checks' rise, a fall's worth
    more and two intervals of slack, after START_GRACE."""
    spec = record.spec
    return (spec.HealthCheckRise + spec.HealthCheckFall + 2) * spec.HealthCheckInterval + START_GRACE


def rollout_failure(replicas: list[ReplicaView], deadline: float, now: datetime | None = None) -> str | None:
    """Why the replicas of a revision being rolled out failed ("replicas kept exiting (code 1)"),
    or None while they may still come up."""
    now = now or datetime.now(UTC)
    for view in replicas:
        replica = view.replica
        exited = replica.state in ("exited", "dead") and replica.exit_code not in (None, 0)
        if replica.oom_killed and (exited or crash_looping(replica)):
            return "replicas ran out of memory"
        if exited or crash_looping(replica):
            return f"replicas kept exiting (code {replica.exit_code})"
    for view in replicas:
        created = docker_time(view.replica.created)
        overdue = created is not None and (now - created).total_seconds() > deadline
        if view.replica.state == "running" and overdue and not ready(view):
            return f"replica {view.replica.name} was not UP within {deadline:g} s"
    return None


def docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 time with nanoseconds ('2024-05-01T12:00:00.123456789Z') as a datetime."""
    found = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6})\d*)?(Z|[+-]\d\d:\d\d)$", text or "")
    if not found:
        return None
    seconds, fraction, zone = found.groups()
    return datetime.fromisoformat(f"{seconds}.{(fraction or '0').ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}")


def describe_failure(exc: Exception) -> str:
    """A failed step, in words a person can act on."""
    if isinstance(exc, docker.errors.APIError):
        text = str(exc.explanation or exc)
        taken = re.search(r"listen tcp4? ([0-9.:]+): bind: address already in use", text) or re.search(
            r"Bind for ([0-9.:]+) failed: port is already allocated", text
        )
        if taken:
            return f"address {taken.group(1)} already in use"
        return text.strip()[:300]
    return str(exc)[:300] or exc.__class__.__name__
