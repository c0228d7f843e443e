"""The backend's operations, UI-free and HTTP-free: what the API routes call.

`Backend` owns the pieces (store, Docker driver, reconciler, change feed) and offers one method per
operation: create, list, get, update, delete, containers, logs. Requests are validated before they
get here (the API does it with the models); errors are raised as the exceptions below, which the API
maps to status codes.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time

import docker.errors

from backend.balancer import LABEL_SLOT
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_UID,
    ROLE_REPLICA,
    DockerDriver,
    EngineUnavailable,
    ServiceRef,
    replica_address,
)
from backend.events import EventHub
from backend.models import ContainerInfo, FieldError, Service, ServiceSpec, ServiceStatus, ServiceUpdate
from backend.reconciler import Reconciler
from backend.settings import Settings
from backend.store import NameTaken, ServiceRecord, Store

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


class Backend:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.state_file, settings.address_pool)
        self.driver = DockerDriver(self.store.tenant, docker_client)
        self.hub = EventHub()
        self.reconciler = Reconciler(self.store, self.driver, self.hub, settings)
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
    def validation_context(self) -> dict:
        """What the models need to know of this backend's settings."""
        return {"max_replicas": self.settings.max_replicas}

    # -- operations --------------------------------------------------------------------------

    def create(self, spec: ServiceSpec) -> Service:
        try:
            record = self.store.insert(spec, ServiceStatus.created, "Service is created")
        except NameTaken:
            raise Conflict(
                f"a service named {spec.Name} already exists",
                [FieldError(field="Name", message=f"{spec.Name} is taken by an existing service")],
            ) from None
        self.hub.publish("service", "created", Name=record.name, Status=record.status, Message=record.message)
        self.reconciler.enqueue(record.name)
        return self.service_object(record)

    def list(self) -> list[Service]:
        return [self.service_object(record) for record in self.store.all()]

    def get(self, name: str) -> Service:
        return self.service_object(self._record(name))

    def update(self, name: str, change: ServiceUpdate) -> Service:
        record = self._record(name)
        if record.deleting:
            raise Conflict(f"service {name} is being deleted")
        if change.FIP is not None:
            self._attach_fip(record, change.FIP)
        if change.Image is not None:
            record = self.store.change_image(name, change.Image) or record
            self.reconciler.report(name, ServiceStatus.updating, f"Rolling out {change.Image}")
        if change.Replicas is not None and change.Replicas != record.spec.Replicas:
            record = self.store.scale(name, change.Replicas) or record
            if change.Image is None:
                self.reconciler.report(name, ServiceStatus.scaling, f"Scaling to {change.Replicas} replicas")
        self.hub.publish("service", "updated", Name=name)
        self.reconciler.enqueue(name)
        return self.get(name)

    def _attach_fip(self, record: ServiceRecord, fip: str) -> None:
        pool = self.settings.fip_addresses
        if fip and fip not in pool:
            allowed = ", ".join(pool) if pool else "none: set HYPERSERVICE_FIP_POOL"
            reason = f"{fip} is not in the floating IP pool (allowed: {allowed})"
            raise Invalid(f"invalid request: FIP: {reason}", [FieldError(field="FIP", message=reason)])
        holder = self.store.attach_fip(record.name, fip)
        if holder is not None:
            reason = f"{fip} is attached to service {holder}; detach it there first"
            raise Conflict(reason, [FieldError(field="FIP", message=reason)])
        if fip != record.fip:
            what = f"Attaching floating IP {fip}" if fip else f"Detaching floating IP {record.fip}"
            self.reconciler.report(record.name, ServiceStatus.updating, what)

    def floating_ips(self) -> list[dict[str, str]]:
        owners = self.store.fip_owners()
        return [{"Address": address, "Service": owners.get(address, "")} for address in self.settings.fip_addresses]

    def delete(self, name: str, keep: bool = False) -> None:
        """Mark the service deleted and wait (bounded) for the reconciler to tear it down."""
        record = self._record(name)
        self.store.mark_deleting(name, keep)
        self.hub.publish("service", "status", Name=name, Status=ServiceStatus.deleting.value, Message="Deleting")
        self.reconciler.enqueue(name)
        deadline = time.monotonic() + DELETE_WAIT
        while time.monotonic() < deadline:
            current = self.store.get(name)
            if current is None or current.uid != record.uid:
                return
            time.sleep(0.05)
        raise TimeoutError(f"service {name} is still being deleted; the backend keeps trying")

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

    def _container_info(self, record: ServiceRecord, container) -> ContainerInfo:
        state = container.attrs.get("State") or {}
        started = state.get("StartedAt", "")
        current = container.labels.get(LABEL_REVISION) == str(record.revision)
        health = self.reconciler.balancers.health(record.uid, container.labels.get(LABEL_SLOT), container.id)
        return ContainerInfo(
            Id=container.id,
            Name=container.name,
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
            replicas = [c for c in replicas if container in (c.name, c.id) or c.id.startswith(container)]
            if not replicas:
                raise NotFound(f"service {name} has no replica {container}")
        return [(c.name, c.id) for c in replicas]

    def logs(self, name: str, container: str | None, tail: int | None) -> str:
        """The replicas' logs, each line labelled with its replica, interleaved by time."""
        streams = []
        for replica_name, replica_id in self.log_sources(name, container):
            raw = self.driver.logs(replica_id, tail)
            lines = raw.decode("utf-8", "replace").splitlines() if isinstance(raw, bytes) else []
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


class _Follower:
    """Reads one blocking Docker stream per replica on threads and hands items to an asyncio loop."""

    def __init__(self, driver: DockerDriver, sources: list[tuple[str, str]]) -> None:
        self._driver = driver
        self._sources = sources
        self._streams: list = []
        self._closed = threading.Event()

    def _open(self, replica_id: str):  # the blocking stream of one replica
        raise NotImplementedError

    def _items(self, replica_name: str, replica_id: str, stream):  # what that stream yields, as text
        raise NotImplementedError

    async def lines(self):
        import asyncio

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

    def _pump(self, loop, queue, replica_name: str, replica_id: str) -> None:
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


class StatsFollower(_Follower):
    """One JSON line per replica and sample: {"Id", "Name", "CPUPercent", "MemoryBytes", "MemoryLimit"}."""

    def _open(self, replica_id: str):
        return self._driver.stats(replica_id)

    def _items(self, replica_name: str, replica_id: str, stream):
        import json

        for sample in stream:
            yield json.dumps({"Id": replica_id, "Name": replica_name, **stats_figures(sample)}) + "\n"


def stats_figures(sample: dict) -> dict:
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

    def __init__(self, driver: DockerDriver, sources: list[tuple[str, str]], tail: int | None) -> None:
        super().__init__(driver, sources)
        self._tail = tail if tail is not None else 100

    def _open(self, replica_id: str):
        return self._driver.logs(replica_id, self._tail, follow=True)

    def _items(self, replica_name: str, replica_id: str, stream):
        pending = b""
        for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                when, _, text = raw.decode("utf-8", "replace").partition(" ")
                yield f"{when} {replica_name} | {text}\n"
