#!/usr/bin/env python3
"""Benchmark at real scale: hundreds of real services on the engine, then the console over all of them.

Unlike bench/console.py (an in-memory stand-in for the engine), everything here is real: a backend
with its reconciler on the local Docker engine, N services of one busybox replica each (and their
balancers), created one after another. Printed:

- create → active per service as the count grows (medians per block of 50: flat, not growing), beside
  the engine's own floor at the same count: every 10th service, one `docker network create` + `docker
  run` of the same image on it until the container answers HTTP (what any service costs the engine as
  networks and containers pile up), and the ratio of the two per block;
- with all of them live: the reconciler's resync pass (one pass over every service by its workers, as
  the periodic resync runs it: wall time, CPU of this process and of dockerd + containerd, and the
  container lists it sent the engine), beside the same services each synced fresh, one after
  another (its own lists: what a pass cost before the pass's shared snapshot); the console's start →
  first full paint, a replica killed → its row's Up cell changed, CPU over idle seconds (the whole
  process: console + backend + reconciler), threads and file descriptors;
- memory: the process's RSS, dockerd's and containerd's RSS, and the containers' own.

Everything it made is removed at the end (services deleted through the API, then by tenant label),
also when it fails or is stopped with Ctrl-C (SIGINT, SIGTERM: it stops measuring and cleans up; a
second Ctrl-C while it cleans up is ignored).
Usage: python -m bench.scale_services [--services 300] [--idle 30] [--changes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.api import create_app  # noqa: E402
from backend.core import Backend  # noqa: E402
from backend.docker_driver import LABEL_TENANT  # noqa: E402
from backend.settings import Settings  # noqa: E402
from bench.polling import eventually  # noqa: E402

WEB_IMAGE = "hyperservice-test/web:1"
LB_IMAGE = "hyperservice-test/haproxy:2.6"


def rss_mib(pid: int | str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_of(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU seconds (user + system) used so far by every process named one of `names`."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
    return ticks / os.sysconf("SC_CLK_TCK")


def engine_cpu_seconds() -> float:
    """CPU seconds used so far by the engine this bench talks to: the dockerd of /var/run/docker.pid
    and its containerd (not another dockerd on the host, e.g. a swarm test bed's); every dockerd and
    containerd when there is no such pid file."""
    try:
        dockerd = int(Path("/var/run/docker.pid").read_text().strip())
    except (OSError, ValueError):
        return cpu_seconds(("dockerd", "containerd"))
    pids = [dockerd]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == dockerd and (entry / "comm").read_text().strip() == "containerd":
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM): stop measuring and clean up."""


STOP = threading.Event()  # set by SIGINT / SIGTERM


async def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """bench/polling's `eventually`, stopped by Ctrl-C at the next look."""

    def checked() -> Any:
        if STOP.is_set():
            raise Interrupted
        return check()

    return await eventually(checked, timeout, interval=interval)


async def pause(seconds: float) -> None:
    """Sleep, cut short by Ctrl-C (Interrupted)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if STOP.is_set():
            raise Interrupted
        await asyncio.sleep(min(0.2, left))
    if STOP.is_set():
        raise Interrupted


FLOOR_EVERY = 10  # services between two probes of the engine's own floor
FLOOR_LABEL = "hbx-bench-scale-floor"


def engine_floor(client: docker.DockerClient, probe: int) -> float:
    """Seconds for the engine alone to make a bridge network and a container of the service image on
    it answering HTTP: the same work a one-replica service asks of it, without hyperservice."""
    began = time.perf_counter()
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=f"10.215.{probe % 250}.0/24")])
    network = client.networks.create(f"hbx-floor-{probe}", driver="bridge", ipam=ipam, labels={FLOOR_LABEL: "1"})
    container = None
    try:
        container = client.containers.run(WEB_IMAGE, detach=True, network=network.name, labels={FLOOR_LABEL: "1"})
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        deadline = began + 60
        while time.perf_counter() < deadline:
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection(address, 80, timeout=0.5)
                try:
                    connection.request("GET", "/")
                    if connection.getresponse().status == 200:
                        return time.perf_counter() - began
                finally:
                    connection.close()
            time.sleep(0.01)
        raise RuntimeError(f"the floor's container at {address} never answered")
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()


async def create_all(api: httpx.AsyncClient, count: int, client: docker.DockerClient) -> tuple[list[float], list[float]]:
    """Create services one after another; each: POST → status active (seconds). Every FLOOR_EVERY
    services, the engine's floor at that count (seconds)."""
    times: list[float] = []
    floors: list[float] = []
    for index in range(count):
        if STOP.is_set():
            raise Interrupted
        name = f"scale{index:03d}"
        body = {"Name": name, "Image": WEB_IMAGE, "ServicePort": 80, "Replicas": 1,
                "HealthCheckInterval": 2, "HealthCheckRise": 1}
        began = time.perf_counter()
        answer = await api.post("/services/create", json=body)
        if answer.status_code != 201:
            raise RuntimeError(f"create {name}: {answer.status_code} {answer.text}")

        async def active(name: str = name) -> bool:
            status = (await api.get(f"/services/{name}")).json()
            if status["Status"] == "error":
                raise RuntimeError(f"{name}: {status['Message']}")
            return status["Status"] == "active"

        await wait_for(active, timeout=120, interval=0.05)
        times.append(time.perf_counter() - began)
        if (index + 1) % FLOOR_EVERY == 0:
            floors.append(await asyncio.to_thread(engine_floor, client, len(floors)))
        if (index + 1) % 50 == 0:
            print(f"  {index + 1} services: last 50 median {statistics.median(times[-50:]):.2f} s, engine floor "
                  f"{statistics.median(floors[-50 // FLOOR_EVERY:]):.2f} s", flush=True)
    return times, floors


async def console_figures(backend: Backend, args: argparse.Namespace, client: docker.DockerClient) -> dict[str, str]:
    from textual.widgets import DataTable

    from tui.app import ConsoleApp
    from tui.client import ApiClient

    results: dict[str, str] = {}
    names = [f"scale{i:03d}" for i in range(args.services)]
    api_client = ApiClient.in_process(backend)
    started = time.perf_counter()
    app = ConsoleApp(backend=backend, client=api_client)
    async with app.run_test(size=(200, 50)) as pilot:
        table = app.screen.query_one("#services", DataTable)

        def up_of(name: str) -> str:
            try:
                value = table.get_cell(name, "Up")
            except Exception:
                return ""
            return getattr(value, "plain", str(value))

        await wait_for(lambda: table.row_count == len(names) and all(up_of(n) == "1/1" for n in names), 120, 0.005)
        await pilot.pause()
        results["console: start → first full paint"] = f"{(time.perf_counter() - started) * 1000:.0f} ms"

        latencies = []
        for _ in range(args.changes):
            if STOP.is_set():
                raise Interrupted
            name = random.choice(names)
            replica_id = backend.store.get(name).containers[0]  # type: ignore[union-attr]
            began = time.perf_counter()
            client.containers.get(replica_id).kill()
            await wait_for(lambda name=name: up_of(name) != "1/1", 30, 0.001)
            latencies.append((time.perf_counter() - began) * 1000)
            await wait_for(lambda name=name: up_of(name) == "1/1", 60, 0.05)  # replaced
        results["console: replica killed → row updated"] = (
            f"median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms ({len(latencies)} kills)"
        )

        await pause(2)
        cpu, wall = time.process_time(), time.perf_counter()
        balancers_cpu, engine_cpu = cpu_seconds(("haproxy",)), engine_cpu_seconds()
        await pause(args.idle)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        balancers_cpu, engine_cpu = cpu_seconds(("haproxy",)) - balancers_cpu, engine_cpu_seconds() - engine_cpu
        results[f"idle CPU over {args.idle:g} s (console + backend)"] = f"{cpu / wall * 100:.1f}% of one core"
        results["idle CPU: every balancer's HAProxy"] = f"{balancers_cpu / wall * 100:.1f}% of one core"
        results["idle CPU: dockerd + containerd"] = f"{engine_cpu / wall * 100:.1f}% of one core"
    await api_client.aclose()
    return results


def count_container_lists(client: docker.DockerClient) -> Callable[[], int]:
    """Count the container lists sent to the engine through `client` (every one, sparse or not, is the
    low-level `containers` call); answers the count so far."""
    api: Any = client.api
    original = api.containers
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    api.containers = counted
    return lambda: calls[0]


async def resync_pass(backend: Backend, lists: Callable[[], int]) -> str:
    """One resync pass as the periodic resync runs it: every service marked, the workers sync each (the
    pass's first sync reads the engine once for all); from the mark to the last service's sync."""
    reconciler: Any = backend.reconciler
    names = set(backend.store.names())
    synced: set[str] = set()
    original = reconciler.sync

    def recorded(name: str) -> float | None:
        try:
            return original(name)  # type: ignore[no-any-return]
        finally:
            synced.add(name)

    reconciler.sync = recorded
    try:
        lists_before, engine_cpu, cpu, wall = lists(), engine_cpu_seconds(), time.process_time(), time.perf_counter()
        reconciler.resync_all()
        await wait_for(lambda: synced >= names, timeout=600, interval=0.01)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        engine_cpu, sent = engine_cpu_seconds() - engine_cpu, lists() - lists_before
    finally:
        del reconciler.sync
    return (f"{wall:.2f} s wall, {cpu:.2f} s CPU (process), dockerd + containerd {engine_cpu:.2f} s CPU, "
            f"{sent} container lists for {len(names)} services")


def fresh_syncs(backend: Backend, lists: Callable[[], int]) -> str:
    """Every service synced fresh, one after another on this thread: each lists its own replicas and
    balancers (what a resync pass did before it shared one snapshot of the engine)."""
    names = backend.store.names()
    lists_before, engine_cpu = lists(), engine_cpu_seconds()
    cpu, wall = time.thread_time(), time.perf_counter()
    for name in names:
        if STOP.is_set():
            raise Interrupted
        backend.reconciler.sync(name)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    engine_cpu, sent = engine_cpu_seconds() - engine_cpu, lists() - lists_before
    return (f"{wall:.1f} s wall, {cpu:.1f} s CPU in this thread, dockerd + containerd {engine_cpu:.1f} s CPU, "
            f"{sent} container lists for {len(names)} services ({wall / len(names) * 1000:.0f} ms each)")


async def run(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="hs-scale-") as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data", lb_image=LB_IMAGE, max_replicas=4,
            address_pool="127.79.0.0/16", network_pool="10.214.0.0/16",
        )
        backend = Backend(settings)
        backend.start()
        tenant = backend.tenant
        lists = count_container_lists(backend.driver.client)
        threads_before, fds_before = threading.active_count(), open_fds()
        try:
            transport = httpx.ASGITransport(app=create_app(backend))
            async with httpx.AsyncClient(transport=transport, base_url="http://hyperservice", timeout=120) as api:
                print(f"creating {args.services} services one after another ...", flush=True)
                times, floors = await create_all(api, args.services, client)
                blocks = [times[i:i + 50] for i in range(0, len(times), 50)]
                per_block = 50 // FLOOR_EVERY
                print("\ncreate → active, per block of 50 services (median, max; the engine's floor at that "
                      "count, median; hyperservice / floor):")
                for number, block in enumerate(blocks):
                    floor = floors[number * per_block:(number + 1) * per_block]
                    ratio = f"{statistics.median(block) / statistics.median(floor):.2f}x" if floor else "-"
                    floor_text = f"{statistics.median(floor):.2f} s" if floor else "-"
                    print(f"  services {number * 50 + 1:>3}-{number * 50 + len(block):<3} "
                          f"{statistics.median(block):.2f} s  {max(block):.2f} s   floor {floor_text}   {ratio}")
                figures = {
                    "backend threads (before → with all)": f"{threads_before} → {threading.active_count()}",
                    "open file descriptors": f"{fds_before} → {open_fds()}",
                    "reconciler: one resync pass (workers)": await resync_pass(backend, lists),
                    "reconciler: each service synced fresh": fresh_syncs(backend, lists),
                    "reconciler: one resync pass again": await resync_pass(backend, lists),
                }
                figures.update(await console_figures(backend, args, client))
                containers = client.containers.list(filters={"label": f"{LABEL_TENANT}={tenant}"})
                figures["containers running"] = str(len(containers))
                figures["process RSS now / peak"] = (
                    f"{rss_mib('self'):.0f} MiB / {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
                )
                figures["dockerd RSS"] = f"{sum(rss_mib(p) for p in pids_of('dockerd')):.0f} MiB"
                figures["containerd + shims RSS"] = (
                    f"{sum(rss_mib(p) for p in pids_of('containerd') + pids_of('containerd-shim')):.0f} MiB"
                )
                usage = sum(
                    (c.stats(stream=False).get("memory_stats") or {}).get("usage", 0) for c in containers[:30]
                ) / max(1, min(30, len(containers)))
                figures["memory per container (mean of 30)"] = f"{usage / 2**20:.1f} MiB"
                print(f"\nwith {args.services} services live:")
                for what, figure in figures.items():
                    print(f"  {what:<44} {figure}")
                print("\ndeleting ...", flush=True)
                for index in range(args.services):
                    if STOP.is_set():
                        raise Interrupted
                    await api.delete(f"/services/scale{index:03d}")
        finally:
            print("cleaning up ...", file=sys.stderr, flush=True)
            backend.close()
            clean_up(client, tenant)


def clean_up(client: docker.DockerClient, tenant: str) -> None:
    """Remove every container and network of the bench's tenant (gone already is fine)."""
    label = {"label": f"{LABEL_TENANT}={tenant}"}

    def remove(container: Any) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    with ThreadPoolExecutor(max_workers=8) as pool:  # hundreds of containers: not one after another
        list(pool.map(remove, client.containers.list(all=True, filters=label, sparse=True)))
    floors = {"label": FLOOR_LABEL}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, client.containers.list(all=True, filters=floors, sparse=True)))
    for network in client.networks.list(filters=label) + client.networks.list(filters=floors):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
    print(f"removed everything of tenant {tenant[:8]}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="hyperservice with hundreds of real services.")
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()

    def stop(signum: int, frame: object) -> None:
        if STOP.is_set():
            print("still cleaning up; please wait", file=sys.stderr, flush=True)
            return
        print(f"\n{signal.Signals(signum).name}: stopping, then cleaning up ...", file=sys.stderr, flush=True)
        STOP.set()

    # A flag, not KeyboardInterrupt: raised at a random await (inside the console, or the backend's
    # workers' handoff), it was swallowed or left the cleanup half done. Every wait looks at the flag.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        asyncio.run(run(args))
    except Interrupted:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
