#!/usr/bin/env python3
"""Benchmark of the console with many services: first paint, live update latency, idle CPU, memory.

The console runs headless (Textual's test driver) on an in-process backend whose store knows
`--services` services of `--replicas` replicas each. The Docker engine is replaced by an in-memory
driver (the reconciler is not started), so the figures are the console's and the API's own, not the
engine's, and the run leaves nothing behind. Printed:

- start → first full paint: from creating the app until every service row is on screen (with its
  "Up" count), and the HTTP requests the console made for it (one `GET /replicas`, not one per service);
- container change → row updated: a replica stops (the backend publishes the container event as the
  reconciler does on a Docker event) until its service's "Up" cell shows one fewer;
- health change → cell updated: the balancer's health event (as the reconciler publishes it) until the
  replica's Health cell in an open service view says DOWN;
- CPU over N idle seconds (goal: near zero, no busy polling);
- CPU with a service view open: its replicas' stats stream (one sample per replica and second, as
  Docker sends them) drawn into the CPU / memory columns;
- the process's peak RSS.

Usage: python bench/console.py [--services 100] [--replicas 5] [--idle 30] [--changes 20] [--view 10]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.balancer import LABEL_SLOT, ReplicaHealth  # noqa: E402
from backend.core import Backend  # noqa: E402
from backend.docker_driver import LABEL_REVISION, LABEL_UID  # noqa: E402
from backend.models import ServiceSpec, ServiceStatus  # noqa: E402
from backend.settings import Settings  # noqa: E402


class MemoryDriver:
    """The part of DockerDriver the API's read routes use, over containers kept in memory.

    Its containers and stats samples have what the backend reads from real ones: held to that by
    tests/test_bench_stand_in.py against a real container."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[SimpleNamespace]] = {}
        self.health: dict[tuple[str, str], ReplicaHealth] = {}  # (service uid, slot) -> as a balancer says

    def health_of(self, uid: str, slot: str | None, container_id: str = "") -> ReplicaHealth | None:
        return self.health.get((uid, slot or ""))

    def set_health(self, replica: SimpleNamespace, health: str) -> None:
        from datetime import UTC, datetime

        self.health[(replica.labels[LABEL_UID], replica.labels[LABEL_SLOT])] = ReplicaHealth(health, datetime.now(UTC))

    def add(self, service: str, uid: str, count: int) -> list[str]:
        replicas = []
        for index in range(count):
            container_id = f"{abs(hash((uid, index))):016x}".ljust(64, "0")[:64]
            replicas.append(SimpleNamespace(
                id=container_id, name=f"{service}-{index:05d}", status="running",
                labels={LABEL_REVISION: "1", LABEL_UID: uid, LABEL_SLOT: f"s{index + 1}"},
                attrs={"State": {"StartedAt": "2025-01-01T00:00:00.000000000Z"}, "RestartCount": 0,
                       "NetworkSettings": {"Networks": {"n": {"IPAddress": f"172.30.{index}.{len(self.replicas) % 250}"}}},
                       "Config": {"Image": "bench/web:1"}},
            ))
        self.replicas[service] = replicas
        return [r.id for r in replicas]

    def containers(self, ref, role=None):
        return list(self.replicas.get(ref.name, []))

    def all_replicas(self):
        return [replica for replicas in self.replicas.values() for replica in replicas]

    def stats(self, container_id: str):
        """Like Docker's stats stream: a sample about every second, until closed."""
        return StatsStream()

    def ping(self) -> None:
        pass


class StatsStream:
    def __init__(self) -> None:
        self.closed = False
        self.total = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        time.sleep(1.0)
        if self.closed:
            raise StopIteration
        self.total += 10_000_000
        return {"cpu_stats": {"cpu_usage": {"total_usage": self.total}, "system_cpu_usage": self.total * 50, "online_cpus": 2},
                "precpu_stats": {"cpu_usage": {"total_usage": self.total - 10_000_000},
                                 "system_cpu_usage": (self.total - 10_000_000) * 50},
                "memory_stats": {"usage": 40 * 2**20, "limit": 512 * 2**20,  # page cache: cgroup v1 and v2 names
                                 "stats": {"cache": 4 * 2**20, "inactive_file": 4 * 2**20}}}

    def close(self) -> None:
        self.closed = True


def build_backend(services: int, replicas: int, data_dir: Path) -> tuple[Backend, MemoryDriver]:
    backend = Backend(Settings(data_dir=data_dir, max_replicas=100))
    driver = MemoryDriver()
    backend.driver = driver  # type: ignore[assignment]
    backend.reconciler.engine = driver  # type: ignore[assignment]
    backend.reconciler.balancers.health = driver.health_of  # type: ignore[method-assign]
    for index in range(services):
        spec = ServiceSpec.model_validate({"Name": f"svc-{index:03d}", "Image": "bench/web:1", "ServicePort": 80,
                                           "Replicas": replicas, "Protocol": ("tcp", "http")[index % 2]})
        record = backend.store.insert(spec, ServiceStatus.active.value, "Scaling complete")
        backend.store.update(record.name, containers=driver.add(record.name, record.uid, replicas))
    return backend, driver


async def run(args: argparse.Namespace) -> dict[str, str]:
    from textual.widgets import DataTable

    from tui.app import ConsoleApp

    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        backend, driver = build_backend(args.services, args.replicas, Path(tmp))
        results: dict[str, str] = {}
        from tui.client import ApiClient

        requests: list[str] = []

        async def record(request) -> None:
            requests.append(request.url.path)

        client = ApiClient.in_process(backend)
        client.http.event_hooks["request"].append(record)
        started = time.perf_counter()
        app = ConsoleApp(backend=backend, client=client)
        async with app.run_test(size=(200, 50)) as pilot:
            table = app.screen.query_one("#services", DataTable)

            def up_of(name: str) -> str:
                value = table.get_cell(name, "Up")
                return getattr(value, "plain", str(value))

            full = f"{args.replicas}/{args.replicas}"
            names = [f"svc-{i:03d}" for i in range(args.services)]
            while not (table.row_count == args.services and all(up_of(n) == full for n in names)):
                await asyncio.sleep(0.002)
            await pilot.pause()  # the frame with every row is drawn
            paint = (time.perf_counter() - started) * 1000
            per_service = sum(1 for path in requests if path.endswith("/containers"))
            results["start → first full paint"] = (
                f"{paint:.0f} ms; {len(requests)} requests ({requests.count('/replicas')} × /replicas, "
                f"{per_service} × /services/…/containers)"
            )
            await asyncio.sleep(1)

            latencies = []
            for change in range(args.changes):
                name = f"svc-{(change * 7) % args.services:03d}"
                replica = driver.replicas[name][change % args.replicas]
                replica.status = "exited"
                expected = f"{args.replicas - 1}/{args.replicas}"
                began = time.perf_counter()
                backend.hub.publish("container", "die", Service=name, Id=replica.id, Name=replica.name)
                while up_of(name) != expected:
                    await asyncio.sleep(0.001)
                latencies.append((time.perf_counter() - began) * 1000)
                replica.status = "running"
                backend.hub.publish("container", "start", Service=name, Id=replica.id, Name=replica.name)
                while up_of(name) != full:
                    await asyncio.sleep(0.001)
            results["container change → row updated"] = (
                f"median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms ({len(latencies)} changes)"
            )

            await asyncio.sleep(1)
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.idle)  # hands off: whatever runs now is the console's own doing
            cpu = time.process_time() - cpu_before
            wall = time.perf_counter() - wall_before
            results[f"CPU over {args.idle:g} idle seconds"] = f"{cpu:.2f} s CPU = {cpu / wall * 100:.2f}% of one core"

            # A service view: health changes from the balancer, and the stats stream of its replicas.
            from tui.screens.service import ServiceScreen

            name = "svc-001"
            app.screen.query_one("#services", DataTable).move_cursor(row=1)
            await pilot.press("enter")
            while not isinstance(app.screen, ServiceScreen):
                await asyncio.sleep(0.005)
            replicas_table = app.screen.query_one("#containers", DataTable)
            while replicas_table.row_count != args.replicas:
                await asyncio.sleep(0.005)
            health_latencies = []
            for change in range(args.changes):
                replica = driver.replicas[name][change % args.replicas]
                health = ("DOWN", "UP")[change % 2]
                began = time.perf_counter()
                driver.set_health(replica, health)  # what the balancer's log said, then its event
                backend.hub.publish("container", "health", Service=name, Id=replica.id, Name=replica.name, Health=health)
                while not str(getattr(replicas_table.get_cell(replica.id, "Health"), "plain", "")).startswith(health):
                    await asyncio.sleep(0.001)
                health_latencies.append((time.perf_counter() - began) * 1000)
                if health == "DOWN":  # back to UP before the next replica
                    driver.set_health(replica, "UP")
                    backend.hub.publish("container", "health", Service=name, Id=replica.id, Name=replica.name, Health="UP")
                    while not str(getattr(replicas_table.get_cell(replica.id, "Health"), "plain", "")).startswith("UP"):
                        await asyncio.sleep(0.001)
            results["health change → cell updated"] = (
                f"median {statistics.median(health_latencies):.1f} ms, max {max(health_latencies):.1f} ms "
                f"({len(health_latencies)} changes)"
            )
            first_id = driver.replicas[name][0].id
            began = time.perf_counter()
            while "%" not in str(getattr(replicas_table.get_cell(first_id, "CPU"), "plain", "")):
                await asyncio.sleep(0.005)
            first_sample = (time.perf_counter() - began) * 1000
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.view)
            cpu = time.process_time() - cpu_before
            wall = time.perf_counter() - wall_before
            results[f"service view open, {args.view:g} s of stats"] = (
                f"{cpu / wall * 100:.2f}% of one core ({args.replicas} replicas × 1 sample/s; "
                f"first figures ≤ {first_sample:.0f} ms after the replicas were listed)"
            )
        await client.aclose()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results["peak memory (RSS, whole process)"] = f"{peak_kib / 1024:.0f} MiB"
        backend.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the hyperservice console.")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--changes", type=int, default=20, help="container changes to time")
    parser.add_argument("--view", type=float, default=10.0, help="seconds of CPU measurement with a service view open")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(f"hyperservice console, {args.services} services × {args.replicas} replicas, 200x50, headless")
    for what, figure in results.items():
        print(f"  {what:<38} {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
