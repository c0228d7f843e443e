"""The backend's operations, UI-free and HTTP-free: what the API routes call.

`Backend` owns the pieces (store, Docker driver, reconciler, change feed) and offers one method per
operation: create, list_services, get, update, delete, containers, logs, service_history. Requests are validated before they
get here (the API does it with the models); errors are raised as the exceptions below, which the API
maps to status codes. Reads of the engine raise EngineUnavailable when it cannot be reached (503);
operations on the store (create, update, delete) are accepted whether or not it can.

The followers (live logs, stats) own the threads that read Docker's blocking streams; they hold a
bounded buffer for a slow client and end every thread and stream when the client goes.

The operator's operations take `by` (who asked: "local" until callers are named) and are recorded in
the service's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict

import docker.errors
from docker.models.containers import Container

from backend import haproxy
from backend.balancer import LABEL_SLOT
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_TENANT,
    LABEL_UID,
    LABEL_VOLUME,
    MAX_IMAGE_TAGS,
    ROLE_REPLICA,
    DockerDriver,
    EngineUnavailable,
    ReplicaLimits,
    ServiceRef,
    engine_calls,
    object_id,
    object_name,
    replica_address,
    volume_label,
    volume_name,
)
from backend.engines.docker import DockerEngine
from backend.engines.swarm import SwarmEngine
from backend.events import EventHub
from backend.history import DEFAULT_WINDOW, History
from backend.models import (
    BalancerFront,
    BalancerReplica,
    BalancerView,
    ContainerInfo,
    FieldError,
    Revision,
    RevisionOutcome,
    Service,
    ServiceHistory,
    ServiceSpec,
    ServiceStatus,
    ServiceUpdate,
    VolumeInfo,
)
from backend.reconciler import Reconciler, engine_note
from backend.settings import Settings
from backend.store import (
    AddressPoolExhausted,
    FipTaken,
    NameTaken,
    NetworkPoolExhausted,
    ServiceDeleting,
    ServiceRecord,
    Store,
    rfc3339_now,
)

LOCAL = "local"  # who asked, for an operation without a named caller (the console, an untokened API)

log = logging.getLogger(__name__)

DEFAULT_LOG_TAIL = 1000  # lines per replica a plain (not follow) logs request answers by default
FOLLOW_LOG_TAIL = 100  # ... a follow request starts with
MAX_PENDING_LINES = 1000  # lines a follower holds for a client reading slower than replicas write
MAX_PENDING_BYTES = 1024 * 1024  # ... and bytes
MAX_LINE_BYTES = 64 * 1024  # a longer log line is cut (a replica writing without newlines)


class NotFound(Exception):
    pass


class Conflict(Exception):
    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Invalid(Exception):
    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def subnet_capacity(subnet: str) -> int:
    """How many replicas a service network holds: all its addresses but the network, broadcast and
    gateway ones, its two balancers, and the extra replica of a rolling update."""
    return ipaddress.ip_network(subnet).num_addresses - 3 - 2 - 1


class Backend:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        settings.check_network_pool()
        self.store = Store(  # takes the data dir's lock
            settings.state_file, settings.address_pool, settings.network_pool, settings.subnet_prefix
        )
        try:
            limits = ReplicaLimits(settings.pids_limit, settings.log_max_size, settings.log_max_file)
            self.driver = choose_engine(settings, self.store.tenant, docker_client, limits)
            self.swarm = self.driver if isinstance(self.driver, SwarmEngine) else None
            self.hub = EventHub()
            self.reconciler = Reconciler(self.store, self.driver, self.hub, settings)
            self.followers = Followers()
        except BaseException:
            self.store.close()  # a backend that did not come up holds no lock
            raise
        self._started = False
        self._lock = threading.Lock()

    @property
    def tenant(self) -> str:
        return self.store.tenant

    @property
    def engine_name(self) -> str:
        """Which engine runs the services: "docker" or "swarm" (chosen at start, HYPERSERVICE_ENGINE)."""
        return "swarm" if self.swarm is not None else "docker"

    def _not_on_swarm(self, field: str, reason: str) -> None:
        """Refuse (400, nothing changed) what the swarm engine cannot do, naming the reason."""
        if self.swarm is not None:
            reason = f"not available on the swarm engine: {reason}"
            raise Invalid(f"invalid request: {field}: {reason}", [FieldError(field=field, message=reason)])

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self.reconciler.start()

    def close(self) -> None:
        with self._lock:
            if self._started:
                self.reconciler.stop()
                self._started = False
        for follower in self.followers.live():
            follower.close()
        self.store.close()

    @property
    def validation_context(self) -> dict[str, Any]:
        """What the models need to know of this backend's settings."""
        return {"max_replicas": self.settings.max_replicas}

    # -- operations --------------------------------------------------------------------------

    def create(self, spec: ServiceSpec, by: str = LOCAL) -> Service:
        if spec.Protocol == "httpsTerm":
            self._not_on_swarm("Protocol", "httpsTerm (its balancers do not carry a certificate yet); use https")
        try:
            record = self.store.insert(spec, ServiceStatus.created, "Service is created", by=by)
        except (AddressPoolExhausted, NetworkPoolExhausted) as exc:
            raise Conflict(str(exc)) from None
        except NameTaken:
            raise Conflict(
                f"a service named {spec.Name} already exists",
                [FieldError(field="Name", message=f"{spec.Name} is taken by an existing service")],
            ) from None
        self.hub.publish("service", "created", Name=record.name, Status=record.status, Message=record.message)
        self.history.record(
            name=record.name, type="action", action="create", by=by,
            message=f"created: {spec.Image}, {spec.Replicas} replica{'s' if spec.Replicas != 1 else ''}, "
                    f"size {spec.ContainerSize}",
        )
        self.reconciler.enqueue(record.name)
        return self.service_object(record)

    def list_services(self) -> list[Service]:
        return [self.service_object(record) for record in self.store.all()]

    def get(self, name: str) -> Service:
        return self.service_object(self._record(name))

    def update(self, name: str, change: ServiceUpdate, by: str = LOCAL) -> Service:
        """Apply the change in one transaction on the fields it names (nothing else is rewritten)."""
        before = self._record(name)
        if change.Replicas is not None and before.subnet and change.Replicas > subnet_capacity(before.subnet):
            reason = (
                f"must be at most {subnet_capacity(before.subnet)}: the service's network {before.subnet} was "
                "sized for the replica limit in force when it was created"
            )
            raise Invalid(f"invalid request: Replicas: {reason}", [FieldError(field="Replicas", message=reason)])
        if change.FIP is not None:
            self._not_on_swarm("FIP", "the fronts publish ServicePort on the edge nodes' own addresses; "
                                      "a floating IP is not one of them")
        if change.FIP:
            self._check_fip_pool(change.FIP)
        try:
            record = self.store.apply_update(
                name, replicas=change.Replicas, image=change.Image, fip=change.FIP, by=by
            )
        except ServiceDeleting:
            raise Conflict(f"service {name} is being deleted") from None
        except FipTaken as exc:
            reason = f"{change.FIP} is attached to service {exc.holder}; detach it there first"
            raise Conflict(reason, [FieldError(field="FIP", message=reason)]) from None
        if record is None:
            raise NotFound(f"no service named {name}")
        self._record_update(name, before, change, by)
        if change.FIP is not None and before.fip != change.FIP:
            what = f"Attaching floating IP {change.FIP}" if change.FIP else f"Detaching floating IP {before.fip}"
            self.reconciler.report(name, ServiceStatus.updating, what)
        if change.Image is not None:
            self.reconciler.report(name, ServiceStatus.updating, f"Rolling out {change.Image}")
        elif change.Replicas is not None and change.Replicas != before.spec.Replicas:
            self.reconciler.report(name, ServiceStatus.scaling, f"Scaling to {change.Replicas} replica{'' if change.Replicas == 1 else 's'}")
        self.hub.publish("service", "updated", Name=name)
        self.reconciler.enqueue(name)
        return self.get(name)

    def revisions(self, name: str) -> list[Revision]:
        """The service's revisions, newest first."""
        found = self.store.revisions(name)
        if found is None:
            raise NotFound(f"no service named {name}")
        return found

    def rollback(self, name: str, revision: int | None = None, by: str = LOCAL) -> Service:
        """Roll back by hand: a new revision with the image of `revision` (default: the last one whose
        replicas were all ready, before the current one), rolled out like any image update; the
        revision left ends `rolled back`. Invalid for an unknown revision, the current one, or when
        there is nothing to go back to; Conflict while the service is being deleted."""
        record = self._record(name)
        if record.deleting:
            raise Conflict(f"service {name} is being deleted")
        if revision is None:
            target = self.store.last_good(record.uid, record.revision)
            if target is None:
                raise Invalid(f"service {name} has no earlier revision that was ever ready: nothing to roll back to")
        else:
            target = self.store.revision(record.uid, revision)
            if target is None:
                reason = f"service {name} has no revision {revision}"
                raise Invalid(f"invalid request: Revision: {reason}", [FieldError(field="Revision", message=reason)])
            if target.Number == record.revision:
                reason = f"revision {revision} is the current revision of {name}"
                raise Invalid(f"invalid request: Revision: {reason}", [FieldError(field="Revision", message=reason)])
        why = f"rollback to revision {target.Number}"
        try:
            updated = self.store.apply_update(
                name, image=target.Image, by=by, reason=why,
                ending=(RevisionOutcome.rolled_back, f"rolled back by {by or 'hand'} to revision {target.Number}"),
            )
        except ServiceDeleting:
            raise Conflict(f"service {name} is being deleted") from None
        if updated is None:
            raise NotFound(f"no service named {name}")
        self.history.record(
            name=name, type="action", action="rollback", by=by,
            message=f"rollback from revision {record.revision} ({record.spec.Image}) to revision {target.Number} "
                    f"({target.Image}), as revision {updated.revision}",
        )
        self.reconciler.report(name, ServiceStatus.updating, f"Rolling back to revision {target.Number} ({target.Image})")
        self.hub.publish("service", "updated", Name=name)
        self.reconciler.enqueue(name)
        return self.get(name)

    def _record_update(self, name: str, before: ServiceRecord, change: ServiceUpdate, by: str) -> None:
        """The operator's update in the service's history: one entry per field that changed (a new
        Image always does: the same reference again is a redeploy)."""
        if change.Replicas is not None and change.Replicas != before.spec.Replicas:
            self.history.record(
                name=name, type="action", action="scale", by=by,
                message=f"scale from {before.spec.Replicas} to {change.Replicas} replicas",
            )
        if change.Image is not None:
            what = (f"redeploy {change.Image}" if change.Image == before.spec.Image
                    else f"image update: {before.spec.Image} → {change.Image}")
            self.history.record(name=name, type="action", action="image", by=by, message=what)
        if change.FIP is not None and before.fip != change.FIP:
            if change.FIP:
                self.history.record(
                    name=name, type="action", action="fip-attach", by=by, message=f"attach floating IP {change.FIP}"
                )
            else:
                self.history.record(
                    name=name, type="action", action="fip-detach", by=by, message=f"detach floating IP {before.fip}"
                )

    def _check_fip_pool(self, fip: str) -> None:
        pool = self.settings.fip_addresses
        if fip not in pool:
            allowed = ", ".join(pool) if pool else "none: set HYPERSERVICE_FIP_POOL"
            reason = f"{fip} is not in the floating IP pool (allowed: {allowed})"
            raise Invalid(f"invalid request: FIP: {reason}", [FieldError(field="FIP", message=reason)])

    def floating_ips(self) -> list[dict[str, str]]:
        owners = self.store.fip_owners()
        return [{"Address": address, "Service": owners.get(address, "")} for address in self.settings.fip_addresses]

    def delete(self, name: str, keep: bool = False, volumes: bool = False, by: str = LOCAL) -> bool:
        """Mark the service deleted; the reconciler tears it down in the background.

        Answers at once: False while the teardown is under way, True when the service is gone
        already (deleted before). A repeated DELETE while it runs changes nothing: the first `keep`
        holds. An unknown name is NotFound.

        Its named volumes stay (the data outlives the service; a service of the same name mounts them
        again) unless `volumes`; that cannot go with `keep` (the kept replicas still mount them), nor
        while a container outside this service instance mounts one (e.g. kept by an earlier delete).
        """
        if volumes:
            self._not_on_swarm("volumes", "named volumes live on each node the replicas ran on; remove them there")
        if keep and volumes:
            reason = "cannot remove the volumes while keeping the replicas that mount them (keep=true)"
            raise Invalid(f"invalid request: volumes: {reason}", [FieldError(field="volumes", message=reason)])
        record = self.store.get(name)
        if record is None:
            if self.store.was_deleted(name):
                return True
            raise NotFound(f"no service named {name}")
        if volumes and not record.deleting:
            self._check_volumes_free(record)
        if self.store.mark_deleting(name, keep, volumes):
            self.history.record(
                name=name, type="action", action="delete", by=by,
                message="delete" + (", keeping the containers" if keep else "") + (", with its volumes" if volumes else ""),
            )
            self.hub.publish("service", "status", Name=name, Status=ServiceStatus.deleting.value, Message="Deleting")
        elif self.store.get(name) is None:  # its teardown finished in the meantime
            return True
        self.reconciler.enqueue(name)  # an operator's DELETE also cuts a retry's backoff short
        return False

    def _check_volumes_free(self, record: ServiceRecord) -> None:
        for volume in self.driver.service_volumes(record.name):
            for user in self.driver.volume_users(volume):
                ours = user.labels.get(LABEL_UID) == record.uid and user.labels.get(LABEL_TENANT) == self.tenant
                if not ours:
                    raise Conflict(
                        f"volume {volume_label(volume)} is still mounted by container {user.name}, which is not "
                        f"part of service {record.name}; remove that container first, or delete without volumes=true"
                    )

    @property
    def history(self) -> History:
        return self.reconciler.history

    def service_history(self, name: str, limit: int = 100, window: int = DEFAULT_WINDOW) -> ServiceHistory:
        """The service's last `limit` history entries and its trouble of the last `window` s, grouped."""
        found = self.history.read(name, limit, window)
        if found is None:
            raise NotFound(f"no service named {name}")
        return found

    def volumes(self, name: str) -> list[VolumeInfo]:
        """The service's named volumes: those its spec mounts (created or not yet), then any other
        volume left on the engine for this service name (by an earlier service of that name)."""
        record = self._record(name)
        found = {(v.attrs.get("Labels") or {}).get(LABEL_VOLUME, ""): v for v in self.driver.service_volumes(record.name)}
        result: list[VolumeInfo] = []
        mounted: set[str] = set()
        for item in record.spec.Volumes or []:
            given, target, *mode = item.split(":")
            volume = found.get(given)
            mounted.add(given)
            result.append(VolumeInfo(
                Name=given,
                Volume=volume_name(self.tenant, record.name, given),
                Target=target,
                ReadOnly=mode == ["ro"],
                Created=volume.attrs.get("CreatedAt", "") if volume else "",
            ))
        for given, volume in sorted(found.items()):
            if given in mounted:
                continue
            result.append(VolumeInfo(
                Name=given, Volume=volume.name, Target="", ReadOnly=False, Created=volume.attrs.get("CreatedAt", "")
            ))
        return result

    def containers(self, name: str) -> list[ContainerInfo]:
        record = self._record(name)
        if self.swarm is not None:
            with engine_calls():
                return self._task_infos(record)
        with engine_calls():
            replicas = self.driver.containers(ServiceRef(record.name, record.uid), ROLE_REPLICA)
            return [self._container_info(record, c) for c in replicas]

    def all_containers(self) -> dict[str, list[ContainerInfo]]:
        """Every service's replicas, from one listing of the engine (the console's start-up)."""
        records = {record.uid: record for record in self.store.all()}
        if self.swarm is not None:
            with engine_calls():
                return {record.name: self._task_infos(record) for record in records.values()}
        result: dict[str, list[ContainerInfo]] = {record.name: [] for record in records.values()}
        with engine_calls():
            replicas = self.driver.all_replicas()
        for container in replicas:
            record = records.get(container.labels.get(LABEL_UID, ""))
            if record is not None:
                result[record.name].append(self._container_info(record, container))
        return result

    def _task_infos(self, record: ServiceRecord) -> list[ContainerInfo]:
        """The replicas of a swarm service: its tasks, each with the node it runs on."""
        assert self.swarm is not None
        port = record.spec.ContainerPort or record.spec.ServicePort
        return self.swarm.container_infos(ServiceRef(record.name, record.uid), record.revision, record.spec.Image, port,
                                          record.spec)

    def _container_info(self, record: ServiceRecord, container: Container) -> ContainerInfo:
        state = container.attrs.get("State") or {}
        started = state.get("StartedAt", "")
        current = container.labels.get(LABEL_REVISION) == str(record.revision)
        health = self.reconciler.balancers.health(record.uid, container.labels.get(LABEL_SLOT), object_id(container))
        return ContainerInfo(
            Id=object_id(container),
            Name=object_name(container),
            State=container.status,
            Health=health.health if health else "",
            HealthSince=health.since.isoformat().replace("+00:00", "Z") if health else "",
            Address=replica_address(container, record.spec.ContainerPort or record.spec.ServicePort),
            Started="" if started.startswith("0001-") else started,
            Restarts=int(container.attrs.get("RestartCount", 0)),
            Image=record.spec.Image if current else container.attrs.get("Config", {}).get("Image", ""),
            Outdated=not current,
        )

    def balancer(self, name: str) -> BalancerView:
        """What the service's balancers count: per front and per replica (HAProxy's runtime stats)."""
        record = self._record(name)
        if self.swarm is not None:
            raise Invalid("the balancer view is not available on the swarm engine: the balancers run on the edge "
                          "nodes, whose HAProxy runtime API the manager cannot reach")
        ref = ServiceRef(record.name, record.uid)
        owners = self.reconciler.slot_owners(record.uid)
        with engine_calls():
            answers = self.reconciler.balancers.traffic(ref)
            if not owners:  # not reconciled yet since this backend started: the replicas' slot labels say
                owners = {
                    c.labels[LABEL_SLOT]: object_name(c)
                    for c in self.driver.containers(ref, ROLE_REPLICA)
                    if c.status == "running" and c.labels.get(LABEL_SLOT)
                }
        return balancer_view(record.name, record.spec.ServicePort, answers, owners)

    def images(self, prefix: str = "", limit: int = MAX_IMAGE_TAGS) -> list[str]:
        """The image references (repository:tag) on the engine starting with `prefix`, sorted, at most `limit`."""
        return self.driver.image_tags(prefix, limit)

    def log_sources(self, name: str, container: str | None) -> list[tuple[str, str]]:
        """(replica name, container id) of the replicas whose logs are asked for."""
        record = self._record(name)
        if self.swarm is not None:  # the task logs, through the manager
            with engine_calls():
                tasks = self.swarm.tasks(ServiceRef(record.name, record.uid))
            if container:
                tasks = [t for t in tasks if container in (t.name, t.id) or t.id.startswith(container)]
                if not tasks:
                    raise NotFound(f"service {name} has no replica {container}")
            return [(t.name, t.id) for t in tasks]
        with engine_calls():
            replicas = self.driver.containers(ServiceRef(record.name, record.uid), ROLE_REPLICA)
        if container:
            replicas = [c for c in replicas if container in (c.name, c.id) or object_id(c).startswith(container)]
            if not replicas:
                raise NotFound(f"service {name} has no replica {container}")
        return [(object_name(c), object_id(c)) for c in replicas]

    def logs(self, name: str, container: str | None, tail: int | None) -> str:
        """The replicas' logs (the last DEFAULT_LOG_TAIL lines of each unless `tail` says otherwise),
        each line labelled with its replica, interleaved by time."""
        streams: list[list[tuple[str, str, str]]] = []
        for replica_name, replica_id in self.log_sources(name, container):
            try:
                with engine_calls():
                    raw = self.driver.logs(replica_id, tail if tail is not None else DEFAULT_LOG_TAIL)
            except docker.errors.NotFound:
                continue  # removed since it was listed (replaced, scaled down)
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # "dead or marked for removal": being replaced right now
                    continue
                raise
            # Split at "\n" only, as the follower does: splitlines() would also cut at CR, FF, VT, NEL...
            # and mislabel the pieces. Escape sequences stay in their line; showing them is the console's job.
            decoded = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            lines = decoded.removesuffix("\n").split("\n") if decoded else []
            streams.append([(line.partition(" ")[0], replica_name, line.partition(" ")[2]) for line in lines])
        merged = heapq.merge(*streams)
        return "".join(f"{when} {who} | {text}\n" for when, who, text in merged)

    def follow_logs(self, name: str, container: str | None, tail: int | None) -> LogFollower:
        """Live logs of the chosen replicas, labelled, as they are written (see LogFollower)."""
        return LogFollower(self.driver, self.log_sources(name, container), tail, self.followers)

    def follow_stats(self, name: str) -> StatsFollower:
        """CPU and memory of every replica, about once a second each, pushed by Docker. Not on swarm
        (Invalid: a 400): a task's stats are kept by its own node's engine, which the manager does not
        relay, and the backend talks to the manager only."""
        if self.swarm is not None:
            self._record(name)  # an unknown service is still a 404
            raise Invalid(SWARM_NO_STATS)
        return StatsFollower(self.driver, self.log_sources(name, None), self.followers)

    # -- helpers -----------------------------------------------------------------------------

    def _record(self, name: str) -> ServiceRecord:
        record = self.store.get(name)
        if record is None:
            raise NotFound(f"no service named {name}")
        return record

    def service_object(self, record: ServiceRecord) -> Service:
        since = self.reconciler.engine_down_since
        fronts = self.swarm.front_ips() if self.swarm is not None else [record.ip]
        return Service.from_spec(
            record.spec,
            IP=fronts[0] if fronts else "",
            Tenant=self.tenant,
            FIP=record.fip,
            Message=record.message if since is None else engine_note(record.message, since),
            Created=record.created,
            Status=record.status,
            Containers=record.containers,
        )

    def engine_status(self) -> str | None:
        """None when the Docker engine answers, else why not (checked now)."""
        try:
            self.driver.ping()
            return None
        except EngineUnavailable as exc:
            return str(exc)


SWARM_NO_STATS = ("stats are not available on the swarm engine: a task's CPU and memory figures are kept by "
                  "the engine of the node it runs on, which the swarm manager does not relay")


def choose_engine(
    settings: Settings, tenant: str, docker_client: docker.DockerClient | None, limits: ReplicaLimits
) -> DockerEngine:
    """The engine HYPERSERVICE_ENGINE asks for; `auto`: swarm when the engine at DOCKER_HOST is an
    active swarm manager, else docker (also when it does not answer now)."""
    swarm = SwarmEngine(
        tenant, docker_client, limits, lb_image=settings.lb_image, lb_fallback_image=settings.lb_fallback_image,
        slots=settings.max_replicas + 1,
    )
    if settings.engine == "swarm":
        return swarm
    if settings.engine == "auto":
        try:
            with engine_calls():
                swarm.ping()
                if swarm.is_manager():
                    log.info("the engine is a swarm manager: the swarm engine runs the services")
                    return swarm
        except Exception as exc:  # unreachable, or no swarm API: the docker engine
            log.info("engine auto: docker (%s)", exc)
    return DockerEngine(tenant, docker_client, limits)


def balancer_view(
    name: str,
    service_port: int,
    answers: list[tuple[str, str, list[haproxy.TrafficStats]]],
    owners: dict[str, str],
) -> BalancerView:
    """Fold the balancers' `show stat` rows (`Balancers.traffic()`: primary first) into the answer.

    Replicas: the slots a serving replica owns (`owners`: slot -> container name), plus any other
    assigned slot still holding sessions (a leaving replica finishing its requests); spare and
    parked slots are left out. Counters are summed over the balancers (a FIP balancer sends to the
    same replicas); state and check come from the first balancer that lists the slot (the primary).
    """
    fronts: list[BalancerFront] = []
    slots: dict[str, list[haproxy.TrafficStats]] = {}
    for front, address, rows in answers:
        for row in rows:
            if row.name == "FRONTEND":
                fronts.append(BalancerFront(
                    Front=front, Address=f"{address}:{service_port}", Sessions=row.sessions, Total=row.total,
                    Rate=row.rate, Http5xx=row.http_5xx, BytesIn=row.bytes_in, BytesOut=row.bytes_out,
                ))
            elif row.name in owners or (not row.spare and row.sessions > 0):
                slots.setdefault(row.name, []).append(row)
    grand_total = sum(row.total for rows in slots.values() for row in rows)
    replicas: list[BalancerReplica] = []
    for slot in sorted(slots, key=lambda slot: haproxy.slot_index(slot) or 0):
        rows, first = slots[slot], slots[slot][0]
        total = sum(row.total for row in rows)
        replicas.append(BalancerReplica(
            Slot=slot, Replica=owners.get(slot, ""), State=first.state, Check=first.check, CheckMs=first.check_ms,
            Sessions=sum(row.sessions for row in rows), Total=total, Rate=sum(row.rate for row in rows),
            Share=total / grand_total if grand_total else 0.0,
            Http5xx=sum(row.http_5xx for row in rows), BytesIn=sum(row.bytes_in for row in rows),
            BytesOut=sum(row.bytes_out for row in rows),
        ))
    return BalancerView(Name=name, Fronts=fronts, Replicas=replicas)


class Followers:
    """The followers streaming now (for shutdown and for tests to check nothing is left)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[_Follower] = set()

    def add(self, follower: _Follower) -> None:
        with self._lock:
            self._live.add(follower)

    def discard(self, follower: _Follower) -> None:
        with self._lock:
            self._live.discard(follower)

    def live(self) -> list[_Follower]:
        with self._lock:
            return list(self._live)


class _Follower:
    """Reads one blocking Docker stream per replica on its own thread and hands what they yield to
    an asyncio consumer (`lines()`), through one bounded buffer.

    A consumer slower than the replicas (a client that does not read) never makes the buffer grow
    past `max_pending` items or MAX_PENDING_BYTES: the oldest items are dropped and the consumer
    gets a marker line in their place saying how many. `close()` (the client went) ends every
    thread and closes every stream, also one that was still being opened.
    """

    max_pending = MAX_PENDING_LINES

    def __init__(self, driver: DockerDriver, sources: list[tuple[str, str]], registry: Followers | None = None) -> None:
        self._driver = driver
        self._sources = sources
        self._registry = registry
        self._lock = threading.Lock()
        self._pending: deque[str] = deque()
        self._pending_bytes = 0
        self._dropped = 0  # dropped since the consumer last took an item
        self.dropped_total = 0
        self._streams: list[Any] = []
        self.threads: list[threading.Thread] = []
        self._running = 0  # pump threads not finished yet
        self._closed = False
        self._asleep = False  # the consumer waits for the next item
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    def _open(self, replica_id: str) -> Any:  # the blocking stream of one replica
        raise NotImplementedError

    def _items(self, replica_name: str, replica_id: str, stream: Any) -> Iterator[str]:  # that stream, as text
        raise NotImplementedError

    def _marker(self, dropped: int) -> str:  # the line standing for `dropped` lost items
        raise NotImplementedError

    def pending(self) -> int:
        """Items held for the consumer now."""
        with self._lock:
            return len(self._pending)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    async def lines(self) -> AsyncIterator[str]:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        with self._lock:
            if self._closed:
                return
            self._running = len(self._sources)
            self.threads = [
                threading.Thread(target=self._pump, args=(name, cid), daemon=True, name=f"follow-{name}")
                for name, cid in self._sources
            ]
        if self._registry is not None:
            self._registry.add(self)
        try:
            for thread in self.threads:
                thread.start()
            while True:
                self._wakeup.clear()
                with self._lock:
                    item: str | None = None
                    if self._dropped:
                        item, self._dropped = self._marker(self._dropped), 0
                    elif self._pending:
                        item = self._pending.popleft()
                        self._pending_bytes -= len(item)
                    elif self._running == 0 or self._closed:
                        return
                    else:
                        self._asleep = True
                if item is None:
                    await self._wakeup.wait()
                    continue
                yield item
        finally:
            self.close()

    def _pump(self, replica_name: str, replica_id: str) -> None:
        stream = None
        try:
            stream = self._open(replica_id)
            with self._lock:
                if self._closed:  # the client went while the stream was being opened
                    return
                self._streams.append(stream)
            for item in self._items(replica_name, replica_id, stream):
                if not self._offer(item):
                    break
        except Exception as exc:  # the replica went away, or the engine did: end this stream
            log.debug("stream of %s ended: %s", replica_name, exc)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # closed already by close(), or by the engine
                    stream.close()
            with self._lock:
                if stream is not None and stream in self._streams:
                    self._streams.remove(stream)
                self._running -= 1
                wake, self._asleep = self._asleep, False
            if wake:
                self._wake()

    def _offer(self, item: str) -> bool:
        """Buffer one item for the consumer, dropping the oldest past the bounds; False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._pending.append(item)
            self._pending_bytes += len(item)
            while len(self._pending) > self.max_pending or self._pending_bytes > MAX_PENDING_BYTES:
                self._pending_bytes -= len(self._pending.popleft())
                self._dropped += 1
                self.dropped_total += 1
            wake, self._asleep = self._asleep, False
        if wake:
            self._wake()
        return True

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(wakeup.set)

    def close(self) -> None:
        """End it all: every pump stops, every stream is closed (idempotent)."""
        with self._lock:
            already, self._closed = self._closed, True
            streams = list(self._streams)
            self._pending.clear()
            self._pending_bytes = 0
        if self._registry is not None:
            self._registry.discard(self)
        if already:
            return
        for stream in streams:
            with contextlib.suppress(Exception):  # closing a stream the engine already ended
                stream.close()
        self._wake()


class StatsFollower(_Follower):
    """One JSON line per replica and sample: {"Id", "Name", "CPUPercent", "MemoryBytes", "MemoryLimit"}.

    A client too slow for the samples gets {"Dropped": n, "Message": "..."} in place of the lost ones.
    """

    max_pending = 200

    def _open(self, replica_id: str) -> Any:
        return self._driver.stats(replica_id)

    def _items(self, replica_name: str, replica_id: str, stream: Any) -> Iterator[str]:
        for sample in stream:
            yield json.dumps({"Id": replica_id, "Name": replica_name, **stats_figures(sample)}) + "\n"

    def _marker(self, dropped: int) -> str:
        return json.dumps({"Dropped": dropped, "Message": f"… {dropped} samples dropped (client too slow)"}) + "\n"


class StatsFigures(TypedDict):
    CPUPercent: float  # 100 = one CPU busy
    MemoryBytes: int  # without the page cache, as `docker stats`
    MemoryLimit: int


def stats_figures(sample: dict[str, Any]) -> StatsFigures:
    """CPU percent (of one CPU, as `docker stats` shows it) and memory from one Docker stats sample."""
    cpu, pre = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    percent = (cpu_delta / system_delta) * online * 100.0 if system_delta > 0 and cpu_delta >= 0 else 0.0
    memory = sample.get("memory_stats") or {}
    details = memory.get("stats") or {}
    cache = details.get("cache", details.get("inactive_file", 0))  # cgroup v1 / v2, as `docker stats`
    return {
        "CPUPercent": round(percent, 2),
        "MemoryBytes": max(0, memory.get("usage", 0) - cache),
        "MemoryLimit": memory.get("limit", 0),
    }


class LogFollower(_Follower):
    """Labelled log lines ("<time> <replica> | <text>") of several replicas as they are written."""

    def __init__(
        self, driver: DockerDriver, sources: list[tuple[str, str]], tail: int | None, registry: Followers | None = None
    ) -> None:
        super().__init__(driver, sources, registry)
        self._tail = tail if tail is not None else FOLLOW_LOG_TAIL

    def _open(self, replica_id: str) -> Any:
        return self._driver.logs(replica_id, self._tail, follow=True)

    def _marker(self, dropped: int) -> str:
        return f"{rfc3339_now()} - | … {dropped} lines dropped (client too slow)\n"

    def _items(self, replica_name: str, replica_id: str, stream: Any) -> Iterator[str]:
        pending = b""
        for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            while len(pending) > MAX_LINE_BYTES:  # no newline for that long: cut, memory stays bounded
                complete.append(pending[:MAX_LINE_BYTES])
                pending = pending[MAX_LINE_BYTES:]
            for raw in complete:
                when, _, text = raw.decode("utf-8", "replace").partition(" ")
                yield f"{when} {replica_name} | {text}\n"
