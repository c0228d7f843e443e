"""A fake backend client with fixed data, for snapshot tests and screenshots (deterministic output).

It is a `tui.client.ConsoleClient`, as `ApiClient` is (test_client_protocol.py holds both to it); the
/events stream says hello and then stays quiet, so the console
shows exactly the data below. Pilot tests that prove behaviour use the real backend instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from backend.history import summarise
from backend.models import (
    BalancerFront,
    BalancerReplica,
    BalancerView,
    ContainerInfo,
    Revision,
    RevisionOutcome,
    Service,
    ServiceEvent,
    ServiceHistory,
    ServiceSpec,
)
from tui.client import ApiError, FloatingIP, Limits, ReplicaStats

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
TENANT = "0123456789abcdef0123456789abcdef"


def _at(seconds_ago: int) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _service(name: str, image: str, replicas: int, status: str, message: str, ip: str, ago: int,
             containers: int, **extra: Any) -> Service:
    fip = extra.pop("FIP", "")
    spec = ServiceSpec.model_validate({"Name": name, "Image": image, "ServicePort": extra.pop("port", 80),
                                       "Replicas": replicas, **extra})
    ids = [f"{name[:2]}{index:02d}" * 16 for index in range(containers)]
    return Service.from_spec(spec, IP=ip, Tenant=TENANT, FIP=fip, Message=message,
                             Created=_at(ago), Status=status, Containers=ids or None)


def sample_services() -> list[Service]:
    return [
        _service("web", "nginx:1.27", 3, "active", "Scaling complete", "127.77.0.1", 3 * 86400 + 7200, 3,
                 Protocol="http", Labels={"team": "frontend"}, Env=["MODE=prod"]),
        _service("api", "registry.example.com/shop/api:2.4.1", 2, "error",
                 "image registry.example.com/shop/api:2.4.1 not found (pull access denied for "
                 "registry.example.com/shop/api, repository does not exist or may require 'docker login')",
                 "127.77.0.2", 5400, 0, port=8080),
        _service("cache", "redis:7-alpine", 1, "active", "Scaling complete", "127.77.0.3", 600, 1, port=6379,
                 Algorithm="leastconn", FIP="192.0.2.11"),
        _service("worker", "busybox:1.36", 4, "scaling", "Scaling to 4 replicas (2 ready)", "127.77.0.4", 45, 2,
                 port=9000, Cmd="httpd -f -p 9000"),
    ]


HEALTH_SINCE = [3500, 600, 42]  # seconds ago, per replica index


def sample_containers(service: Service) -> list[ContainerInfo]:
    health = {"web": ["UP", "UP", "DOWN"], "cache": ["UP"], "worker": ["UP", "starting"]}.get(service.Name, [])
    replicas = []
    for index, container_id in enumerate(service.Containers or []):
        replicas.append(ContainerInfo(
            Id=container_id, Name=f"{service.Name}-{'abcde'[index:] + 'xyz'[:index]}"[:len(service.Name) + 6],
            State="running", Health=health[index] if index < len(health) else "",
            HealthSince=_at(HEALTH_SINCE[index % 3]) if index < len(health) else "",
            Address=f"172.20.0.{index + 2}:{service.ContainerPort}", Started=_at(3600 * (index + 1)),
            Restarts=index, Image=service.Image))
    return replicas


def sample_stats(service: Service) -> list[ReplicaStats]:
    """A sample for every replica but the last (whose columns stay "—": no sample yet)."""
    size_mib = {"s1": 64, "s2": 128, "s3": 256, "s4": 512}.get(service.ContainerSize, 1024)
    return [
        ReplicaStats(Id=r.Id, Name=r.Name, CPUPercent=[0.4, 37.5, 102.3][i % 3],
                     MemoryBytes=int([3.2, 48.7, 131][i % 3] * 2**20), MemoryLimit=size_mib * 2**20)
        for i, r in enumerate(sample_containers(service)[:-1])
    ]


IMAGES = ["busybox:1.36", "hyperservice-test/haproxy:2.6", "hyperservice-test/web:1", "hyperservice-test/web:2",
          "nginx:1.27", "redis:7-alpine"]

FIP_POOL = [("192.0.2.10", ""), ("192.0.2.11", "cache"), ("192.0.2.12", "")]

LOG_LINES = [
    f"{_at(60 - i * 7)[:-1]}Z web-abcde | GET /index.html 200 {512 + i * 3} bytes" if i % 2 == 0
    else f"{_at(60 - i * 7)[:-1]}Z web-bcdex | GET /api/health 200 2 bytes"
    for i in range(8)
]


def sample_revisions(service: Service) -> list[Revision]:
    """Newest first: the current image active; before it one rolled back by itself (its replicas
    kept exiting), one superseded, and the first."""
    rows = [
        (4, service.Image, 600, "local", RevisionOutcome.active, ""),
        (3, "nginx:1.28-rc1", 1800, "local", RevisionOutcome.rolled_back, "revision 3's replicas kept exiting (code 1)"),
        (2, "nginx:1.26", 86400, "ci", RevisionOutcome.superseded, ""),
        (1, "nginx:1.25", 3 * 86400, "local", RevisionOutcome.superseded, ""),
    ]
    return [Revision(Number=n, Image=i, Created=_at(ago), By=by, Outcome=o, Reason=r) for n, i, ago, by, o, r in rows]


def sample_history(service: Service) -> ServiceHistory:
    """A service's story: created, scaled; for `web`, its third replica OOM-killed three times in
    the last five minutes and now DOWN (the Summary as the backend's own `summarise` groups it)."""
    replicas = [r.Name for r in sample_containers(service)]
    events: list[ServiceEvent] = []

    def add(ago: int, kind: str, action: str, message: str, replica: str = "", **extra: Any) -> None:
        events.append(ServiceEvent(Id=len(events) + 1, Time=_at(ago), Type=kind, Action=action, Replica=replica,
                                   Message=message, **extra))

    created = int((NOW - datetime.fromisoformat(service.Created)).total_seconds())
    first = replicas[:2] if service.Name == "web" else replicas
    add(created, "action", "create", f"created: {service.Image}, {len(first)} replicas, size {service.ContainerSize}",
        By="local")
    add(created - 1, "status", "scaling", f"Scaling to {len(first)} replicas (0 ready)")
    for name in first:
        add(created - 2, "replica", "start", f"{name} started", name)
    for name in first:
        add(created - 4, "health", "UP", f"{name} UP (passes its health check)", name)
    add(created - 5, "status", "active", "Scaling complete")
    if service.Name == "web":
        hog = replicas[2]
        add(3600, "action", "scale", "scale from 2 to 3 replicas", By="local")
        add(3599, "replica", "start", f"{hog} started", hog)
        add(3596, "health", "UP", f"{hog} UP (passes its health check)", hog)
        for ago in (240, 200, 120):
            add(ago, "replica", "die", f"{hog} was OOM-killed (exit code 137)", hog, ExitCode=137, OOMKilled=True)
            add(ago - 1, "replica", "restart", f"{hog} restarted by the engine", hog)
        add(42, "health", "DOWN", f"{hog} DOWN (fails its health check)", hog)
    return ServiceHistory(Name=service.Name, Window=300, Summary=summarise(events, NOW.timestamp(), 300),
                          Events=events)


def sample_balancer(service: Service) -> BalancerView:
    """The balancer's view of every replica: uneven shares, the last replica DOWN with 5xx answers."""
    replicas = sample_containers(service)
    totals = [5210, 3980, 310, 120][: len(replicas)]
    grand = sum(totals) or 1
    rows = []
    for index, replica in enumerate(replicas):
        down = replica.Health == "DOWN"
        rows.append(BalancerReplica(
            Slot=f"s{index + 1}", Replica=replica.Name, State="DOWN" if down else "UP",
            Check="L4CON" if down else ("L7OK 200" if service.Protocol in ("http", "httpsTerm") else "L4OK"),
            CheckMs=0 if down else index + 1, Sessions=0 if down else 3 - index, Total=totals[index],
            Rate=0 if down else 12 - 4 * index, Share=totals[index] / grand, Http5xx=17 if down else index,
            BytesIn=totals[index] * 80, BytesOut=totals[index] * 2300))
    fronts = [BalancerFront(Front="ip", Address=f"{service.IP}:{service.ServicePort}", Sessions=sum(r.Sessions for r in rows),
                            Total=sum(totals), Rate=sum(r.Rate for r in rows), Http5xx=sum(r.Http5xx for r in rows),
                            BytesIn=sum(r.BytesIn for r in rows), BytesOut=sum(r.BytesOut for r in rows))]
    if service.FIP:
        fronts.append(fronts[0].model_copy(update={"Front": "fip", "Address": f"{service.FIP}:{service.ServicePort}",
                                                   "Total": 40, "Sessions": 0, "Rate": 0}))
    return BalancerView(Name=service.Name, Fronts=fronts, Replicas=rows)


class FakeClient:
    description: str = "fake backend"
    backend: Any = None

    def __init__(self, services: list[Service] | None = None) -> None:
        self.services = {s.Name: s for s in (services if services is not None else sample_services())}
        self.calls: list[str] = []

    async def all_replicas(self) -> dict[str, list[ContainerInfo]]:
        self.calls.append("all_replicas")
        return {name: sample_containers(service) for name, service in self.services.items()}

    async def service_events(self, name: str, limit: int = 100, window: int | None = None) -> ServiceHistory:
        self.calls.append(f"service_events {name}")
        history = sample_history(await self.get_service(name))
        return history.model_copy(update={"Events": history.Events[-limit:]})

    async def balancer(self, name: str) -> BalancerView:
        self.calls.append(f"balancer {name}")
        return sample_balancer(await self.get_service(name))

    async def limits(self) -> Limits:
        return Limits(MaxReplicas=100)

    async def engine(self) -> str:
        return ""  # not said: the header stays as the snapshots have it

    async def images(self, prefix: str = "", limit: int | None = None) -> list[str]:
        self.calls.append("images")
        return [reference for reference in IMAGES if reference.startswith(prefix)][:limit]

    async def floating_ips(self) -> list[FloatingIP]:
        return [FloatingIP(Address=a, Service=s) for a, s in FIP_POOL]

    async def stats(self, name: str) -> AsyncIterator[ReplicaStats]:
        for sample in sample_stats(await self.get_service(name)):
            yield sample
        await asyncio.Event().wait()

    async def list_services(self) -> list[Service]:
        return sorted(self.services.values(), key=lambda s: s.Name)

    async def get_service(self, name: str) -> Service:
        if name not in self.services:
            raise ApiError(404, f"no service named {name}")
        return self.services[name]

    async def containers(self, name: str) -> list[ContainerInfo]:
        self.calls.append(f"containers {name}")
        return sample_containers(await self.get_service(name))

    async def create_service(self, body: dict[str, Any]) -> Service:
        raise ApiError(409, f"a service named {body.get('Name')} already exists")

    async def update_service(self, name: str, **changes: Any) -> Service:
        return await self.get_service(name)

    async def revisions(self, name: str) -> list[Revision]:
        self.calls.append(f"revisions {name}")
        return sample_revisions(await self.get_service(name))

    async def rollback(self, name: str, revision: int | None = None) -> Service:
        self.calls.append(f"rollback {name} {revision}")
        return await self.get_service(name)

    async def delete_service(self, name: str, keep: bool = False) -> bool:
        self.services.pop(name, None)
        return False

    async def logs(self, name: str, container: str | None = None, tail: int | None = None) -> str:
        return "\n".join(LOG_LINES) + "\n"

    async def follow_logs(self, name: str, container: str | None = None, tail: int | None = 200) -> AsyncIterator[str]:
        for line in LOG_LINES:
            if name in line and (not container or container in line):
                yield line
        await asyncio.Event().wait()
        yield ""  # never reached

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        yield {"Type": "hello", "Action": "subscribed", "Engine": "ok", "Tenant": TENANT}
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


def fake_app(services: list[Service] | None = None, engine_problem: str | None = None):
    from tui.app import ConsoleApp

    client = FakeClient(services)
    if engine_problem:
        async def events():
            yield {"Type": "hello", "Action": "subscribed", "Engine": engine_problem, "Tenant": TENANT}
            await asyncio.Event().wait()

        client.events = events  # type: ignore[method-assign]
    return ConsoleApp(client=client, clock=lambda: NOW)
