"""The reconciler: drives what runs on Docker towards what the store says each service should be.

Controller-style, as in Kubernetes' sample-controller:
- Docker events, API calls and a periodic resync only mark a service dirty (add its name to a queue);
- `sync(name)` compares the desired state (store) with the observed one (Docker) and takes the next
  idempotent step: create the network, pull the image, replace dead replicas, scale up or down, roll
  outdated replicas to the new image one at a time (one extra replica at most, never fewer ready
  replicas than asked for), tear a deleted service down;
- a step that waits for something asks to be looked at again shortly; a step that fails is retried
  with exponential backoff, and the service shows `error` with the reason meanwhile. Events and the
  resync leave a service alone while it waits out its backoff; an operator's change (`enqueue`)
  cuts the backoff short. The clock is injectable, so the backoff is tested without waiting;
- a step that finds the engine unreachable is not the service's failure: the service keeps its last
  known status (served with an "engine unreachable since ..." note), and the engine watcher, which
  pings every RECONNECT_MAX seconds at most while the engine is away, looks at every service again
  the moment it answers;
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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import CancellableStream

from backend.balancer import LABEL_SLOT, Balancers, ReplicaHealth
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_SERVICE,
    ROLE_REPLICA,
    TEARDOWN_STOP_TIMEOUT,
    DockerDriver,
    EngineUnavailable,
    ImageUnavailable,
    PullProgress,
    ServiceRef,
    SubnetTaken,
    engine_calls,
    object_id,
    object_name,
    replica_address,
)
from backend.events import EventHub
from backend.haproxy import slot_name
from backend.history import History, exit_reason
from backend.models import RevisionOutcome, ServiceStatus
from backend.settings import Settings
from backend.store import ServiceRecord, Store, rfc3339_now
from backend.workqueue import WorkQueue

log = logging.getLogger(__name__)

SOON = 0.25  # seconds before looking again at a service whose step is still under way
WAIT_FOR_HEALTH = 2.0  # ... whose replicas wait for their health checks (health events come sooner)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
RECONNECT_FIRST, RECONNECT_MAX = 0.05, 0.5  # seconds between pings while the engine is away
TEARDOWN_WORKERS = 16  # deleted services torn down at once (mostly waiting out a stop grace)
TEARDOWN_WAIT_ON_STOP = 15.0  # seconds a stopping backend waits for the teardowns under way
CRASH_LOOP_RESTARTS = 3  # a replica restarted this often without staying up is reported
START_GRACE = 10.0  # seconds a new replica gets to start, on top of its health checks, in a rollout
ALIVE_STATES = ("running", "restarting", "created", "paused")


@dataclass
class Outcome:
    """What one sync found: the status to report, and when to look again (None: when told)."""

    status: str
    message: str
    again_in: float | None = None


class Reconciler:
    def __init__(
        self,
        store: Store,
        driver: DockerDriver,
        hub: EventHub,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.driver = driver
        self.hub = hub
        self.history = History(store, hub, driver)  # each service's story, kept in the store
        self.resync_seconds = settings.resync_seconds
        self.replace_down_after = settings.replace_down_after
        workers = settings.workers
        self.balancers = Balancers(
            driver,
            settings.lb_image,
            settings.max_replicas + 1,
            self._on_health,
            fallback_image=settings.lb_fallback_image,
            on_notice=lambda message: hub.publish("backend", "notice", Message=message),
        )
        self._owners: dict[str, dict[str, tuple[str, str]]] = {}  # service uid -> slot -> (container id, name)
        # service uid -> replacement container id -> why it was made ("replica X ...; replacing"),
        # until the replacement is ready: the service's message while it heals
        self._healing: dict[str, dict[str, str]] = {}
        self._clock = clock  # monotonic seconds: backoff deadlines
        self.queue = WorkQueue(clock)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._failures: dict[str, int] = {}  # consecutive failed steps per service
        self._retry_at: dict[str, float] = {}  # when a failed service is due again (monotonic)
        self._events_stream: CancellableStream[Any] | None = None
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
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
        self.queue.add(name)

    def mark_dirty(self, name: str) -> None:
        """Something about a service changed (an event, the resync): look at it, unless it is
        waiting out a backoff after a failure (its retry is queued already)."""
        if self._retry_at.get(name, 0.0) <= self._clock():
            self.queue.add(name)

    def resync_all(self) -> None:
        for name in self.store.names():
            self.mark_dirty(name)

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
                    self.driver.ping()
                    stream = self.driver.events()
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
        self.mark_dirty(name)
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
            self.driver.ping()
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
        record = self.store.get(name)
        if record is None:
            return None
        if record.deleting:
            self._start_teardown(record)
            return None
        outcome = self._converge(record)
        if outcome.status == ServiceStatus.active:
            self.store.revision_ready(record.uid, record.revision)
            note = self._rolled_back.get(record.uid)
            if note and note[0] == record.revision:
                outcome.message = note[1]
        self.report(name, outcome.status, outcome.message, record.generation)
        return outcome.again_in

    def _converge(self, record: ServiceRecord) -> Outcome:
        spec, ref = record.spec, ServiceRef(record.name, record.uid)
        network = self._ensure_network(record)
        try:
            self.driver.ensure_image(spec.Image, on_progress=lambda progress: self._pulling(record, progress))
        except ImageUnavailable as exc:
            return Outcome(ServiceStatus.error, str(exc), again_in=self._backoff(record.name))

        def ready(container: Container) -> bool:
            return container.status == "running" and self._health(record, container) == "UP"

        replicas = self.driver.containers(ref, ROLE_REPLICA)
        alive = [c for c in replicas if c.status in ALIVE_STATES and not self._down_too_long(record, c)]
        dead = [c for c in replicas if c not in alive]  # exited, stopped by hand, or DOWN for too long
        current = [c for c in alive if c.labels.get(LABEL_REVISION) == str(record.revision)]
        outdated = [c for c in alive if c.labels.get(LABEL_REVISION) != str(record.revision)]
        ready_now = [c for c in current if ready(c)]
        desired = spec.Replicas
        rolled_back = self._check_rollout(record, current, dead, ready)
        if rolled_back is not None:
            return rolled_back

        # Roll: at most one replica above `desired`, never fewer ready replicas than `desired`.
        limit = desired + 1 if outdated else desired
        to_create = max(0, min(desired - len(current), limit - len(current) - len(outdated)))
        excess_outdated = max(0, len(ready_now) + len(outdated) - desired) if outdated else 0
        excess_current = max(0, len(current) - desired)
        leaving = _least_useful(outdated, ready)[:excess_outdated] + _least_useful(current, ready)[:excess_current]

        staying = [c for c in alive if c not in leaving]
        port = spec.ContainerPort or spec.ServicePort
        heals = self._heal(record, dead, to_create) if dead else []
        # The balancers are made (or checked) while the new replicas start, not after them: they start
        # with the staying replicas, and the new ones join through the gate below once they run.
        with ThreadPoolExecutor(max_workers=1) as pool:
            balancers_ready = pool.submit(self.balancers.ensure, record, _servers(staying, port))
            try:
                created = self._create_replicas(
                    record, object_name(network), to_create, _free_slots(staying, to_create)
                )
            except Exception:
                with contextlib.suppress(Exception):
                    balancers_ready.result()
                raise
            balancers = balancers_ready.result()
        serving = staying + created
        self.store.update(record.name, containers=[object_id(c) for c in serving])
        self._owners[record.uid] = {c.labels.get(LABEL_SLOT, ""): (object_id(c), object_name(c)) for c in serving}
        healing = self._healing.setdefault(record.uid, {})
        healing.update({object_id(replacement): message for replacement, message in zip(created, heals, strict=False)})

        # The balancers carry exactly the serving replicas, each slot gated for the container now in it
        # (a replacement often gets its predecessor's slot and address); the leaving ones are drained,
        # then stopped.
        owners = {c.labels[LABEL_SLOT]: object_id(c) for c in serving if c.labels.get(LABEL_SLOT)}
        self.balancers.set_servers(record, balancers, _servers(serving, port), owners)
        if leaving:
            self.balancers.wait_drained(balancers, [c.labels.get(LABEL_SLOT, "") for c in leaving])
        if dead or leaving:
            self._record_removals(record, dead, leaving, outdated)
            self.driver.remove_many(dead, graceful=False)
            self.driver.remove_many(leaving)

        crashing = [c for c in current if _crash_looping(c)]
        if crashing:
            return Outcome(ServiceStatus.error, describe_crash(crashing[0]), again_in=self._backoff(record.name))
        changed = bool(created or leaving or dead)
        # Healing is not scaling: while a replacement is not ready, say what it replaces and why.
        for container in current:
            if object_id(container) in healing and ready(container):
                del healing[object_id(container)]
        for gone in set(healing) - {object_id(c) for c in current + created}:
            del healing[gone]
        if healing and not outdated:
            return Outcome(ServiceStatus.degraded, "; ".join(dict.fromkeys(healing.values())),
                           again_in=SOON if changed else WAIT_FOR_HEALTH)
        if changed:
            return self._progress(record, len(ready_now), outdated, again_in=SOON)
        paused = [c for c in current if c.status == "paused"]
        down = [c for c in current if self._health(record, c) == "DOWN" and c not in paused]
        if not outdated and len(current) == desired and (down or paused):
            problems = []
            if paused:
                problems.append(f"{_names(paused)} paused (not answering)")
            if down:
                problems.append(f"{len(down)} of {desired} replicas DOWN (failing their health check: {_names(down)})")
            return Outcome(
                ServiceStatus.degraded,
                "; ".join(problems) + f"; replaced if still DOWN after {self.replace_down_after:g} s",
                again_in=WAIT_FOR_HEALTH,
            )
        if not outdated and len(current) == desired and record.status == ServiceStatus.active:
            # Every replica is there and none changed, only their health is not confirmed yet (the
            # engine or a balancer restarted): nothing scales, so the service stays active.
            return Outcome(ServiceStatus.active, "Scaling complete", again_in=WAIT_FOR_HEALTH)
        if outdated or len(ready_now) < desired:
            # Waiting for health checks: the balancer's health events wake us sooner.
            return self._progress(record, len(ready_now), outdated, again_in=WAIT_FOR_HEALTH)
        return Outcome(ServiceStatus.active, "Scaling complete")

    def _check_rollout(
        self, record: ServiceRecord, current: list[Container], dead: list[Container], ready: Callable[[Container], bool]
    ) -> Outcome | None:
        """A rollout whose new replicas fail is rolled back to the last revision that was ever ready:
        when a replica of the revision being rolled out keeps exiting, or is not ready within
        `rollout_deadline`. The store makes that revision current again, with its image; its replicas,
        which a rolling update never removes before a new one is ready, serve on, and the failed ones
        are outdated now and go. None when there is nothing to roll back."""
        ours = [c for c in current + dead if c.labels.get(LABEL_REVISION) == str(record.revision)]
        if not ours:
            return None  # nothing of this revision runs yet (e.g. its image is being pulled)
        revision = self.store.revision(record.uid, record.revision)
        if revision is None or revision.Outcome != RevisionOutcome.rolling:
            return None
        reason = rollout_failure(record, ours, ready, rollout_deadline(record))
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

    def _record_removals(
        self, record: ServiceRecord, dead: list[Container], leaving: list[Container], outdated: list[Container]
    ) -> None:
        """Tell the history why replicas go (their `die` is then no trouble)."""
        self.history.expect_removal(object_id(c) for c in dead + leaving)
        for container in dead:
            state = container.attrs.get("State") or {}
            if container.status in ALIVE_STATES:  # alive, but DOWN for too long
                known = self.balancers.health(record.uid, container.labels.get(LABEL_SLOT))
                down_for = (datetime.now(UTC) - known.since).total_seconds() if known else self.replace_down_after
                reason, exit_code, oom = f"DOWN for {down_for:.0f} s", None, False
            else:
                exit_code, oom = state.get("ExitCode"), bool(state.get("OOMKilled"))
                reason = exit_reason(exit_code, oom)
            self.history.record(
                name=record.name, type="replica", action="replace", replica=object_name(container),
                message=f"replaced {object_name(container)} ({reason})", exit_code=exit_code, oom_killed=oom,
            )
        for container in leaving:
            why = (f"rolled to {record.spec.Image}" if container in outdated
                   else f"scaled down to {record.spec.Replicas}")
            self.history.record(
                name=record.name, type="replica", action="remove", replica=object_name(container),
                message=f"removed {object_name(container)} ({why})",
            )

    def _heal(self, record: ServiceRecord, dead: list[Container], replacements: int) -> list[str]:
        """Replicas that died or stopped answering are replaced (the first `replacements` of them):
        one event each, and the service says so at once, before the replacements are even created.
        Answers the message of each replaced one, in order (the service's message until its
        replacement is ready)."""
        messages = []
        for index, container in enumerate(dead):
            reason = self._why_dead(record, container)
            replaced = index < replacements
            message = f"replica {object_name(container)} {reason}; {'replacing' if replaced else 'removing'}"
            if replaced:
                messages.append(message)
            self.hub.publish(
                "service", "heal", Name=record.name, Replica=object_name(container), Id=object_id(container),
                Reason=reason,
                Replaced=replaced, Message=message,
            )
        if messages:
            self.report(record.name, ServiceStatus.degraded, "; ".join(messages))
        return messages

    def _why_dead(self, record: ServiceRecord, container: Container) -> str:
        if self._down_too_long(record, container):
            return "not answering health checks"
        state = container.attrs.get("State") or {}
        if state.get("OOMKilled"):
            return "ran out of memory"
        if container.status in ("exited", "dead"):
            return f"exited (code {state.get('ExitCode')})"
        return f"is {container.status}"

    def _ensure_network(self, record: ServiceRecord) -> Network:
        """The service's network on its own subnet of the network pool; when someone else on the engine
        took that subnet meanwhile (another installation, a kept network), move to a free one."""
        ref = ServiceRef(record.name, record.uid)
        existing = self.driver.find_network(ref)
        if existing is not None:
            return existing
        subnet = record.subnet or self.store.assign_subnet(record.name)
        try:
            return self.driver.ensure_network(ref, subnet)
        except SubnetTaken:
            subnet = self.store.assign_subnet(record.name, avoid=self.driver.used_subnets())
            log.info("service %s: subnet taken on the engine, moving to %s", record.name, subnet)
            return self.driver.ensure_network(ref, subnet)

    def _health(self, record: ServiceRecord, container: Container) -> str:
        known = self.balancers.health(record.uid, container.labels.get(LABEL_SLOT), object_id(container))
        return known.health if known else ""

    def _down_too_long(self, record: ServiceRecord, container: Container) -> bool:
        known = self.balancers.health(record.uid, container.labels.get(LABEL_SLOT), object_id(container))
        if known is None or known.health != "DOWN":
            return False
        return (datetime.now(UTC) - known.since).total_seconds() > self.replace_down_after

    def _progress(self, record: ServiceRecord, ready: int, outdated: list[Container], again_in: float) -> Outcome:
        desired = record.spec.Replicas
        if outdated:
            return Outcome(
                ServiceStatus.updating,
                f"Rolling out {record.spec.Image}: {len(outdated)} of {desired} replicas still on the old image",
                again_in,
            )
        return Outcome(ServiceStatus.scaling, f"Scaling to {desired} replicas ({ready} ready)", again_in)

    def _create_replicas(self, record: ServiceRecord, network: str, count: int, slots: list[str]) -> list[Container]:
        """Create and start `count` replicas at once, each in its own balancer slot."""
        if not count:
            return []
        ref = ServiceRef(record.name, record.uid)
        with ThreadPoolExecutor(max_workers=min(16, count)) as pool:
            futures = [
                pool.submit(self.driver.create_replica, ref, record.spec, record.revision, network, {LABEL_SLOT: slot})
                for slot in slots
            ]
            errors = [error for f in futures if (error := f.exception()) is not None]
            created = [f.result() for f in futures if f.exception() is None]
        if errors:
            self.history.expect_removal(object_id(c) for c in created)
            self.driver.remove_many(created, graceful=False)  # nothing half-created
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
        self.balancers.remove_all(ref)  # the address stops answering first
        if not record.keep:
            containers = self.driver.containers(ref)
            self.history.expect_removal(object_id(c) for c in containers)  # their exits are no trouble
            self.driver.remove_many(containers, stop_timeout=TEARDOWN_STOP_TIMEOUT)
            self.driver.remove_network(ref)
            if record.remove_volumes:  # only when the delete asked for it: volumes hold the data
                self.driver.remove_service_volumes(record.name)
        self._owners.pop(record.uid, None)
        self._healing.pop(record.uid, None)
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
        owned = self.driver.owned_uids()
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
            self.driver.remove_many(self.driver.containers(ref), graceful=False)
            self.driver.remove_network(ref)
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


def _servers(containers: list[Container], port: int) -> dict[str, str]:
    """slot -> ip:port of the replicas that have both (a replica just created has both)."""
    return {
        c.labels[LABEL_SLOT]: address
        for c in containers
        if c.labels.get(LABEL_SLOT) and (address := replica_address(c, port))
    }


def _names(containers: list[Container]) -> str:
    return ", ".join(object_name(c) for c in containers[:3]) + (" ..." if len(containers) > 3 else "")


def _free_slots(staying: list[Container], count: int) -> list[str]:
    """The lowest `count` balancer slots no staying replica occupies."""
    used = {c.labels.get(LABEL_SLOT) for c in staying}
    free = (slot_name(index) for index in itertools.count(1) if slot_name(index) not in used)
    return list(itertools.islice(free, count))


def _least_useful(containers: list[Container], is_ready: Callable[[Container], bool]) -> list[Container]:
    """Removal order: not-ready replicas first, then the newest (keep the proven ones)."""
    newest_first = sorted(containers, key=lambda c: c.attrs.get("Created", ""), reverse=True)
    return sorted(newest_first, key=is_ready)  # stable: among equals, newest stays first


def _crash_looping(container: Container) -> bool:
    state = container.attrs.get("State") or {}
    return container.status == "restarting" or (
        container.attrs.get("RestartCount", 0) >= CRASH_LOOP_RESTARTS and state.get("Status") != "running"
    )


def rollout_deadline(record: ServiceRecord) -> float:
    """Seconds a replica of a new revision gets to be ready: its health checks' rise, a fall's worth
    more and two intervals of slack, after START_GRACE."""
    spec = record.spec
    return (spec.HealthCheckRise + spec.HealthCheckFall + 2) * spec.HealthCheckInterval + START_GRACE


def rollout_failure(
    record: ServiceRecord, replicas: list[Container], ready: Callable[[Container], bool], deadline: float,
    now: datetime | None = None,
) -> str | None:
    """Why the replicas of a revision being rolled out failed ("replicas kept exiting (code 1)"),
    or None while they may still come up."""
    now = now or datetime.now(UTC)
    for container in replicas:
        state = container.attrs.get("State") or {}
        exited = container.status in ("exited", "dead") and state.get("ExitCode") not in (None, 0)
        if state.get("OOMKilled") and (exited or _crash_looping(container)):
            return "replicas ran out of memory"
        if exited or _crash_looping(container):
            return f"replicas kept exiting (code {state.get('ExitCode')})"
    for container in replicas:
        created = docker_time(container.attrs.get("Created", ""))
        overdue = created is not None and (now - created).total_seconds() > deadline
        if container.status == "running" and overdue and not ready(container):
            return f"replica {object_name(container)} was not UP within {deadline:g} s"
    return None


def docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 time with nanoseconds ('2024-05-01T12:00:00.123456789Z') as a datetime."""
    found = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6})\d*)?(Z|[+-]\d\d:\d\d)$", text or "")
    if not found:
        return None
    seconds, fraction, zone = found.groups()
    return datetime.fromisoformat(f"{seconds}.{(fraction or '0').ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}")


def describe_crash(container: Container) -> str:
    state = container.attrs.get("State") or {}
    restarts = container.attrs.get("RestartCount", 0)
    if state.get("OOMKilled"):
        limit = int((container.attrs.get("HostConfig") or {}).get("Memory") or 0) // 2**20
        return (
            f"replica {container.name} keeps exiting (exit code {state.get('ExitCode')}, OOM-killed, {restarts} "
            f"restarts): it needs more than its {limit} MiB of memory; choose a larger ContainerSize"
        )
    return (
        f"replica {container.name} keeps exiting (exit code {state.get('ExitCode')}, "
        f"{restarts} restarts); see its logs"
    )


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
