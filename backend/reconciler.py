"""The reconciler: drives what runs on Docker towards what the store says each service should be.

Controller-style, as in Kubernetes' sample-controller:
- Docker events, API calls and a periodic resync only mark a service dirty (add its name to a queue);
- `sync(name)` compares the desired state (store) with the observed one (Docker) and takes the next
  idempotent step: create the network, pull the image, replace dead replicas, scale up or down, roll
  outdated replicas to the new image one at a time (one extra replica at most, never fewer ready
  replicas than asked for), tear a deleted service down;
- a step that waits for something asks to be looked at again shortly; a step that fails is retried
  with exponential backoff, and the service shows `error` with the reason meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from backend.balancer import LABEL_SLOT, Balancers, ReplicaHealth
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_SERVICE,
    ROLE_REPLICA,
    DockerDriver,
    EngineUnavailable,
    ImageUnavailable,
    ServiceRef,
    SubnetTaken,
    replica_address,
)
from backend.events import EventHub
from backend.haproxy import slot_name
from backend.models import ServiceStatus
from backend.settings import Settings
from backend.store import ServiceRecord, Store
from backend.workqueue import WorkQueue

log = logging.getLogger(__name__)

SOON = 0.25  # seconds before looking again at a service whose step is still under way
WAIT_FOR_HEALTH = 2.0  # ... whose replicas wait for their health checks (health events come sooner)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
CRASH_LOOP_RESTARTS = 3  # a replica restarted this often without staying up is reported
ALIVE_STATES = ("running", "restarting", "created", "paused")


@dataclass
class Outcome:
    """What one sync found: the status to report, and when to look again (None: when told)."""

    status: str
    message: str
    again_in: float | None = None


class Reconciler:
    def __init__(self, store: Store, driver: DockerDriver, hub: EventHub, settings: Settings) -> None:
        self.store = store
        self.driver = driver
        self.hub = hub
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
        self.queue = WorkQueue()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._failures: dict[str, int] = {}  # consecutive failed steps per service
        self._retry_at: dict[str, float] = {}  # when a failed service is due again (monotonic)
        self._events_stream = None
        self.engine_error: str | None = None  # why the engine can't be reached, None when it can

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
        if self._retry_at.get(name, 0.0) <= time.monotonic():
            self.queue.add(name)

    def resync_all(self) -> None:
        for name in self.store.names():
            self.mark_dirty(name)

    # -- threads -----------------------------------------------------------------------------

    def _work(self) -> None:
        while (name := self.queue.get()) is not None:
            again_in: float | None = None
            try:
                again_in = self.sync(name)
            except EngineUnavailable as exc:
                self._engine_down(str(exc))
                again_in = self._backoff(name)
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
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
        self._retry_at[name] = time.monotonic() + delay
        return delay

    def _watch_events(self) -> None:
        """Follow Docker's event stream; every event of ours marks its service dirty."""
        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                self.driver.ping()
                self._events_stream = self.driver.events()
                self._engine_up()
                delay = BACKOFF_FIRST
                self.resync_all()  # whatever happened while we were not listening
                for event in self._events_stream:
                    self._on_docker_event(event)
            except Exception as exc:  # the engine went away, or never was there
                if self._stopping.is_set():
                    return
                self._engine_down(str(exc) if isinstance(exc, EngineUnavailable) else f"event stream lost: {exc}")
            self._stopping.wait(delay)
            delay = min(BACKOFF_MAX / 4, delay * 2)

    def _on_docker_event(self, event: dict) -> None:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get(LABEL_SERVICE)
        if not name:
            return
        self.mark_dirty(name)
        if event.get("Type") == "container":
            action = str(event.get("Action") or event.get("status") or "")
            self.hub.publish(
                "container",
                action.split(":")[0],
                Service=name,
                Id=(event.get("Actor") or {}).get("ID", ""),
                Name=attributes.get("name", ""),
            )

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

    def _resync_loop(self) -> None:
        while not self._stopping.wait(self.resync_seconds):
            try:
                self.resync_all()
                self.collect_orphans()
            except EngineUnavailable as exc:
                self._engine_down(str(exc))
            except Exception as exc:  # keep the loop alive whatever a resync hits
                log.warning("resync failed: %s", exc)

    def _engine_down(self, why: str) -> None:
        if self.engine_error != why:
            self.engine_error = why
            log.warning("%s", why)
            self.hub.publish("engine", "down", Message=why)

    def _engine_up(self) -> None:
        if self.engine_error is not None:
            self.engine_error = None
            self.hub.publish("engine", "up", Message="Docker engine reachable")

    # -- one step ----------------------------------------------------------------------------

    def sync(self, name: str) -> float | None:
        """Take the next step for one service; answer when to look again (None: when told)."""
        record = self.store.get(name)
        if record is None:
            return None
        if record.deleting:
            self.teardown(record)
            return None
        outcome = self._converge(record)
        self.report(name, outcome.status, outcome.message, record.generation)
        return outcome.again_in

    def _converge(self, record: ServiceRecord) -> Outcome:
        spec, ref = record.spec, ServiceRef(record.name, record.uid)
        network = self._ensure_network(record)
        if record.status == ServiceStatus.created and not self.driver.has_image(spec.Image):
            self.report(record.name, ServiceStatus.scaling, f"Pulling image {spec.Image}")
        try:
            self.driver.ensure_image(spec.Image)
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

        # Roll: at most one replica above `desired`, never fewer ready replicas than `desired`.
        limit = desired + 1 if outdated else desired
        to_create = max(0, min(desired - len(current), limit - len(current) - len(outdated)))
        excess_outdated = max(0, len(ready_now) + len(outdated) - desired) if outdated else 0
        excess_current = max(0, len(current) - desired)
        leaving = _least_useful(outdated, ready)[:excess_outdated] + _least_useful(current, ready)[:excess_current]

        staying = [c for c in alive if c not in leaving]
        created = self._create_replicas(record, network.name, to_create, _free_slots(staying, to_create))
        serving = staying + created
        self.store.update(record.name, containers=[c.id for c in serving])
        self._owners[record.uid] = {c.labels.get(LABEL_SLOT, ""): (c.id, c.name) for c in serving}

        # The balancers carry exactly the serving replicas; the leaving ones are drained, then stopped.
        servers = {
            c.labels[LABEL_SLOT]: address
            for c in serving
            if c.labels.get(LABEL_SLOT) and (address := replica_address(c, spec.ContainerPort or spec.ServicePort))
        }
        balancers = self.balancers.ensure(record, servers)
        self.balancers.set_servers(record, balancers, servers)
        if leaving:
            self.balancers.wait_drained(balancers, [c.labels.get(LABEL_SLOT, "") for c in leaving])
        if dead or leaving:
            self.driver.remove_many(dead, graceful=False)
            self.driver.remove_many(leaving)

        crashing = [c for c in current if _crash_looping(c)]
        if crashing:
            return Outcome(ServiceStatus.error, describe_crash(crashing[0]), again_in=self._backoff(record.name))
        if created or leaving or dead:
            return self._progress(record, len(ready_now), outdated, again_in=SOON)
        down = [c for c in current if self._health(record, c) == "DOWN"]
        if not outdated and len(current) == desired and down:
            names = ", ".join(c.name for c in down[:3]) + (" ..." if len(down) > 3 else "")
            return Outcome(
                ServiceStatus.degraded,
                f"{len(down)} of {desired} replicas DOWN (failing their health check: {names}); "
                f"replaced if still DOWN after {self.replace_down_after:g} s",
                again_in=WAIT_FOR_HEALTH,
            )
        if outdated or len(ready_now) < desired:
            # Waiting for health checks: the balancer's health events wake us sooner.
            return self._progress(record, len(ready_now), outdated, again_in=WAIT_FOR_HEALTH)
        return Outcome(ServiceStatus.active, "Scaling complete")

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
        known = self.balancers.health(record.uid, container.labels.get(LABEL_SLOT))
        return known.health if known else ""

    def _down_too_long(self, record: ServiceRecord, container: Container) -> bool:
        known = self.balancers.health(record.uid, container.labels.get(LABEL_SLOT))
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
            errors = [f.exception() for f in futures if f.exception() is not None]
            created = [f.result() for f in futures if f.exception() is None]
        if errors:
            self.driver.remove_many(created, graceful=False)  # nothing half-created
            raise errors[0]
        return created

    def teardown(self, record: ServiceRecord) -> None:
        """Remove what a deleted service owned (with keep: all but its replicas), then forget it."""
        ref = ServiceRef(record.name, record.uid)
        self.balancers.remove_all(ref)  # the address stops answering first
        if not record.keep:
            self.driver.remove_many(self.driver.containers(ref))
            self.driver.remove_network(ref)
        self._owners.pop(record.uid, None)
        self.store.forget(record)
        self.hub.publish("service", "deleted", Name=record.name)

    def collect_orphans(self) -> None:
        """Remove objects of ours whose service is gone (e.g. a backend died half-way through a delete)."""
        owned = self.driver.owned_uids()
        known = self.store.known_uids()
        for uid, name in owned.items():
            if uid in known:
                continue
            log.info("removing orphaned objects of service %s (uid %s)", name, uid)
            ref = ServiceRef(name, uid)
            self.driver.remove_many(self.driver.containers(ref), graceful=False)
            self.driver.remove_network(ref)

    def report(self, name: str, status: str, message: str, generation: int | None = None) -> None:
        if status != ServiceStatus.error:
            self._failures.pop(name, None)  # the next failure starts the backoff afresh
            self._retry_at.pop(name, None)
        if self.store.set_status(name, str(status), message, generation):
            self.hub.publish("service", "status", Name=name, Status=str(status), Message=message)


def _free_slots(staying: list[Container], count: int) -> list[str]:
    """The lowest `count` balancer slots no staying replica occupies."""
    used = {c.labels.get(LABEL_SLOT) for c in staying}
    free = (slot_name(index) for index in itertools.count(1) if slot_name(index) not in used)
    return list(itertools.islice(free, count))


def _least_useful(containers: list[Container], is_ready) -> list[Container]:
    """Removal order: not-ready replicas first, then the newest (keep the proven ones)."""
    newest_first = sorted(containers, key=lambda c: c.attrs.get("Created", ""), reverse=True)
    return sorted(newest_first, key=is_ready)  # stable: among equals, newest stays first


def _crash_looping(container: Container) -> bool:
    state = container.attrs.get("State") or {}
    return container.status == "restarting" or (
        container.attrs.get("RestartCount", 0) >= CRASH_LOOP_RESTARTS and state.get("Status") != "running"
    )


def describe_crash(container: Container) -> str:
    state = container.attrs.get("State") or {}
    return (
        f"replica {container.name} keeps exiting (exit code {state.get('ExitCode')}, "
        f"{container.attrs.get('RestartCount', 0)} restarts); see its logs"
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
