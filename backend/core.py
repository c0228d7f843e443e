"""The backend's operations, UI-free and HTTP-free: what the API routes call.

`Backend` owns the pieces (store, Docker driver, reconciler, change feed) and offers one method per
operation: create, list_services, get, update, delete, containers, logs. Requests are validated before they
get here (the API does it with the models); errors are raised as the exceptions below, which the API
maps to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Generic, TypedDict, TypeVar

import docker.errors
from docker.models.containers import Container

from backend.balancer import LABEL_SLOT
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_TENANT,
    LABEL_UID,
    LABEL_VOLUME,
    ROLE_REPLICA,
    ClosableStream,
    DockerDriver,
    EngineUnavailable,
    ReplicaLimits,
    ServiceRef,
    object_id,
    object_name,
    replica_address,
    volume_label,
    volume_name,
)
from backend.engines.docker import DockerEngine
from backend.events import EventHub
from backend.models import (
    ContainerInfo,
    FieldError,
    Service,
    ServiceSpec,
    ServiceStatus,
    ServiceUpdate,
    VolumeInfo,
)
from backend.reconciler import Reconciler
from backend.settings import Settings
from backend.store import (
    AddressPoolExhausted,
    FipTaken,
    NameTaken,
    NetworkPoolExhausted,
    ServiceDeleting,
    ServiceRecord,
    Store,
)

log = logging.getLogger(__name__)

DELETE_WAIT = 120.0  # seconds a DELETE waits for the teardown before answering


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
            self.driver = DockerEngine(self.store.tenant, docker_client, limits)
            self.hub = EventHub()
            self.reconciler = Reconciler(self.store, self.driver, self.hub, settings)
        except BaseException:
            self.store.close()  # a backend that did not come up holds no lock
            raise
        self._started = False
        self._lock = threading.Lock()

    @property
    def tenant(self) -> str:
        return self.store.tenant

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
        self.store.close()

    @property
    def validation_context(self) -> dict[str, Any]:
        """What the models need to know of this backend's settings."""
        return {"max_replicas": self.settings.max_replicas}

    # -- operations --------------------------------------------------------------------------

    def create(self, spec: ServiceSpec) -> Service:
        try:
            record = self.store.insert(spec, ServiceStatus.created, "Service is created")
        except (AddressPoolExhausted, NetworkPoolExhausted) as exc:
            raise Conflict(str(exc)) from None
        except NameTaken:
            raise Conflict(
                f"a service named {spec.Name} already exists",
                [FieldError(field="Name", message=f"{spec.Name} is taken by an existing service")],
            ) from None
        self.hub.publish("service", "created", Name=record.name, Status=record.status, Message=record.message)
        self.reconciler.enqueue(record.name)
        return self.service_object(record)

    def list_services(self) -> list[Service]:
        return [self.service_object(record) for record in self.store.all()]

    def get(self, name: str) -> Service:
        return self.service_object(self._record(name))

    def update(self, name: str, change: ServiceUpdate) -> Service:
        """Apply the change in one transaction on the fields it names (nothing else is rewritten)."""
        before = self._record(name)
        if change.Replicas is not None and before.subnet and change.Replicas > subnet_capacity(before.subnet):
            reason = (
                f"must be at most {subnet_capacity(before.subnet)}: the service's network {before.subnet} was "
                "sized for the replica limit in force when it was created"
            )
            raise Invalid(f"invalid request: Replicas: {reason}", [FieldError(field="Replicas", message=reason)])
        if change.FIP:
            self._check_fip_pool(change.FIP)
        try:
            record = self.store.apply_update(name, replicas=change.Replicas, image=change.Image, fip=change.FIP)
        except ServiceDeleting:
            raise Conflict(f"service {name} is being deleted") from None
        except FipTaken as exc:
            reason = f"{change.FIP} is attached to service {exc.holder}; detach it there first"
            raise Conflict(reason, [FieldError(field="FIP", message=reason)]) from None
        if record is None:
            raise NotFound(f"no service named {name}")
        if change.FIP is not None and before.fip != change.FIP:
            what = f"Attaching floating IP {change.FIP}" if change.FIP else f"Detaching floating IP {before.fip}"
            self.reconciler.report(name, ServiceStatus.updating, what)
        if change.Image is not None:
            self.reconciler.report(name, ServiceStatus.updating, f"Rolling out {change.Image}")
        elif change.Replicas is not None and change.Replicas != before.spec.Replicas:
            self.reconciler.report(name, ServiceStatus.scaling, f"Scaling to {change.Replicas} replicas")
        self.hub.publish("service", "updated", Name=name)
        self.reconciler.enqueue(name)
        return self.get(name)

    def _check_fip_pool(self, fip: str) -> None:
        pool = self.settings.fip_addresses
        if fip not in pool:
            allowed = ", ".join(pool) if pool else "none: set HYPERSERVICE_FIP_POOL"
            reason = f"{fip} is not in the floating IP pool (allowed: {allowed})"
            raise Invalid(f"invalid request: FIP: {reason}", [FieldError(field="FIP", message=reason)])

    def floating_ips(self) -> list[dict[str, str]]:
        owners = self.store.fip_owners()
        return [{"Address": address, "Service": owners.get(address, "")} for address in self.settings.fip_addresses]

    def delete(self, name: str, keep: bool = False, volumes: bool = False) -> None:
        """Mark the service deleted and wait (bounded) for the reconciler to tear it down.

        Its named volumes stay (the data outlives the service; a service of the same name mounts them
        again) unless `volumes`; that cannot go with `keep` (the kept replicas still mount them), nor
        while a container outside this service instance mounts one (e.g. kept by an earlier delete).
        """
        if keep and volumes:
            reason = "cannot remove the volumes while keeping the replicas that mount them (keep=true)"
            raise Invalid(f"invalid request: volumes: {reason}", [FieldError(field="volumes", message=reason)])
        record = self._record(name)
        if volumes:
            self._check_volumes_free(record)
        self.store.mark_deleting(name, keep, volumes)
        self.hub.publish("service", "status", Name=name, Status=ServiceStatus.deleting.value, Message="Deleting")
        self.reconciler.enqueue(name)
        deadline = time.monotonic() + DELETE_WAIT
        while time.monotonic() < deadline:
            current = self.store.get(name)
            if current is None or current.uid != record.uid:
                return
            time.sleep(0.05)
        raise TimeoutError(f"service {name} is still being deleted; the backend keeps trying")

    def _check_volumes_free(self, record: ServiceRecord) -> None:
        for volume in self.driver.service_volumes(record.name):
            for user in self.driver.volume_users(volume):
                ours = user.labels.get(LABEL_UID) == record.uid and user.labels.get(LABEL_TENANT) == self.tenant
                if not ours:
                    raise Conflict(
                        f"volume {volume_label(volume)} is still mounted by container {user.name}, which is not "
                        f"part of service {record.name}; remove that container first, or delete without volumes=true"
                    )

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
        return [self._container_info(record, c) for c in self.driver.containers(ServiceRef(record.name, record.uid), ROLE_REPLICA)]

    def all_containers(self) -> dict[str, list[ContainerInfo]]:
        """Every service's replicas, from one listing of the engine (the console's start-up)."""
        records = {record.uid: record for record in self.store.all()}
        result: dict[str, list[ContainerInfo]] = {record.name: [] for record in records.values()}
        for container in self.driver.all_replicas():
            record = records.get(container.labels.get(LABEL_UID, ""))
            if record is not None:
                result[record.name].append(self._container_info(record, container))
        return result

    def _container_info(self, record: ServiceRecord, container: Container) -> ContainerInfo:
        state = container.attrs.get("State") or {}
        started = state.get("StartedAt", "")
        current = container.labels.get(LABEL_REVISION) == str(record.revision)
        health = self.reconciler.balancers.health(record.uid, container.labels.get(LABEL_SLOT))
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

    def log_sources(self, name: str, container: str | None) -> list[tuple[str, str]]:
        """(replica name, container id) of the replicas whose logs are asked for."""
        record = self._record(name)
        replicas = self.driver.containers(ServiceRef(record.name, record.uid), ROLE_REPLICA)
        if container:
            replicas = [c for c in replicas if container in (c.name, c.id) or object_id(c).startswith(container)]
            if not replicas:
                raise NotFound(f"service {name} has no replica {container}")
        return [(object_name(c), object_id(c)) for c in replicas]

    def logs(self, name: str, container: str | None, tail: int | None) -> str:
        """The replicas' logs, each line labelled with its replica, interleaved by time."""
        streams: list[list[tuple[str, str, str]]] = []
        for replica_name, replica_id in self.log_sources(name, container):
            try:
                raw = self.driver.logs(replica_id, tail)
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
        return LogFollower(self.driver, self.log_sources(name, container), tail)

    def follow_stats(self, name: str) -> StatsFollower:
        """CPU and memory of every replica, about once a second each, pushed by Docker."""
        return StatsFollower(self.driver, self.log_sources(name, None))

    # -- helpers -----------------------------------------------------------------------------

    def _record(self, name: str) -> ServiceRecord:
        record = self.store.get(name)
        if record is None:
            raise NotFound(f"no service named {name}")
        return record

    def service_object(self, record: ServiceRecord) -> Service:
        return Service.from_spec(
            record.spec,
            IP=record.ip,
            Tenant=self.tenant,
            FIP=record.fip,
            Message=record.message,
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


_Item = TypeVar("_Item")


class _Follower(Generic[_Item]):
    """Reads one blocking Docker stream per replica on threads and hands items to an asyncio loop."""

    def __init__(self, driver: DockerDriver, sources: list[tuple[str, str]]) -> None:
        self._driver = driver
        self._sources = sources
        self._streams: list[ClosableStream[_Item]] = []
        self._closed = threading.Event()

    def _open(self, replica_id: str) -> ClosableStream[_Item]:  # the blocking stream of one replica
        raise NotImplementedError

    def _items(self, replica_name: str, replica_id: str, stream: Iterable[_Item]) -> Iterator[str]:
        """What that stream yields, as text."""
        raise NotImplementedError

    async def lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        for replica_name, replica_id in self._sources:
            threading.Thread(
                target=self._pump, args=(loop, queue, replica_name, replica_id), daemon=True, name=f"follow-{replica_name}"
            ).start()
        running = len(self._sources)
        while running:
            line = await queue.get()
            if line is None:
                running -= 1
                continue
            yield line

    def _pump(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None], replica_name: str, replica_id: str
    ) -> None:
        try:
            stream = self._open(replica_id)
            self._streams.append(stream)
            for item in self._items(replica_name, replica_id, stream):
                if self._closed.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except Exception as exc:  # the replica went away, or the engine did: end this stream
            log.debug("stream of %s ended: %s", replica_name, exc)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, None)

    def close(self) -> None:
        self._closed.set()
        for stream in self._streams:
            with contextlib.suppress(Exception):  # closing a stream the engine already ended
                stream.close()


class StatsFollower(_Follower[dict[str, Any]]):
    """One JSON line per replica and sample: {"Id", "Name", "CPUPercent", "MemoryBytes", "MemoryLimit"}."""

    def _open(self, replica_id: str) -> ClosableStream[dict[str, Any]]:
        return self._driver.stats(replica_id)

    def _items(self, replica_name: str, replica_id: str, stream: Iterable[dict[str, Any]]) -> Iterator[str]:
        import json

        for sample in stream:
            yield json.dumps({"Id": replica_id, "Name": replica_name, **stats_figures(sample)}) + "\n"


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


class LogFollower(_Follower[bytes]):
    """Labelled log lines ("<time> <replica> | <text>") of several replicas as they are written."""

    def __init__(self, driver: DockerDriver, sources: list[tuple[str, str]], tail: int | None) -> None:
        super().__init__(driver, sources)
        self._tail = tail if tail is not None else 100

    def _open(self, replica_id: str) -> ClosableStream[bytes]:
        return self._driver.logs(replica_id, self._tail, follow=True)

    def _items(self, replica_name: str, replica_id: str, stream: Iterable[bytes]) -> Iterator[str]:
        pending = b""
        for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                when, _, text = raw.decode("utf-8", "replace").partition(" ")
                yield f"{when} {replica_name} | {text}\n"
