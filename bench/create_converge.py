"""Benchmark: from "create a service of N replicas" to all N replicas running and answering HTTP.

hyperservice (an in-process backend on the local Docker engine, reached through httpx's ASGI
transport as the console reaches it) is measured side by side, in the same run, with:

- `docker service create --detach` of the same image on a single-node swarm:
  (a) until the swarm API shows N tasks running, (b) until all N containers answer HTTP;
- `docker service create` without `--detach`: until the CLI returns ("converged");
- the floor: N plain `docker run -d` of the same image, in parallel, until all N answer.

Every case starts its clock just before the request (the POST, or the spawn of the CLI) and polls
the same way (every `--poll` seconds: list the replicas' addresses until all N are known, HTTP GET
each address that has not answered yet). Cases are interleaved within each repetition; the table
shows medians over `--repeat` repetitions.

Run from the repository root (needs the offline test image, see tests/images/build.sh):

    python -m bench.create_converge            # N = 1, 3, 10; 5 repetitions (~5 minutes)
    python -m bench.create_converge --quick    # N = 1, 3; 1 repetition (~1 minute)
    python -m bench.create_converge --profile  # also: where the backend spends its time

The script initialises a single-node swarm when the engine is not in one (advertised and listening
on 127.0.0.1 only) and leaves it at the end, also on error or Ctrl-C; a swarm it did not create is
used and left alone. Everything it creates is named or labelled `hbx-bench-` / `hbx-bench=1` (the
backend's own objects carry the benchmark backend's tenant label) and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import docker.errors
import httpx

from backend.api import create_app
from backend.core import Backend
from backend.docker_driver import LABEL_TENANT
from backend.settings import Settings

IMAGE = "hyperservice-test/web:1"
LB_IMAGE = "hyperservice-test/haproxy:2.6"
ADDRESS_POOL = "127.79.0.0/16"  # away from the default pool other backends on this engine use
PREFIX = "hbx-bench-"
LABEL = "hbx-bench"  # label=1 on every container/service the script creates itself
TRIAL_LABEL = "hbx-bench.trial"
SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"
TRIAL_TIMEOUT = 90.0

COLUMNS = [
    ("hs_answer", "hyperservice answering"),
    ("swarm_running", "swarm running"),
    ("swarm_answer", "swarm answering"),
    ("swarm_cli", "swarm CLI converged"),
    ("run_answer", "docker-run floor"),
]


# -- small helpers -----------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "—"
    return f"{value:.2f} {unit}" if unit else f"{value:.2f}"


def docker_cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Timings:
    """One trial: seconds from the request to each milestone (None: not reached)."""

    kind: str
    n: int
    returned: float | None = None  # the POST answered / the CLI returned
    running: float | None = None  # N replicas running, as the case's own API says
    answer: float | None = None  # N replicas answered HTTP 200
    extra: dict = field(default_factory=dict)


class Prober:
    """HTTP GETs replica addresses straight from the host (no proxy from the environment)."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(
            trust_env=False, timeout=httpx.Timeout(1.0, connect=0.5), limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def answers(self, address: str) -> bool:
        try:
            response = await self.client.get(f"http://{address}/")
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        await self.client.aclose()


async def converge(
    n: int,
    fetch: Callable[[], Awaitable[tuple[int, list[str]]]],
    prober: Prober,
    t0: float,
    poll: float,
    timings: Timings,
    timeout: float = TRIAL_TIMEOUT,
) -> Timings:
    """Poll until N replicas are running and all N addresses answer.

    `fetch()` gives (how many replicas are running as the system under test reports it, the
    addresses known so far); it is called until both are complete, then only the HTTP probes run.
    """
    addresses: list[str] = []
    answered: set[str] = set()
    deadline = t0 + timeout
    while now() < deadline:
        if timings.running is None or len(addresses) < n:
            running, addresses = await fetch()
            if running >= n and timings.running is None:
                timings.running = now() - t0
        pending = [a for a in addresses if a not in answered]
        if pending:
            results = await asyncio.gather(*(prober.answers(a) for a in pending))
            answered.update(a for a, ok in zip(pending, results, strict=False) if ok)
            if answered and "first_answer" not in timings.extra:
                timings.extra["first_answer"] = now() - t0
            if len(answered) >= n:
                timings.answer = now() - t0
        if timings.answer is not None and timings.running is not None:
            return timings
        await asyncio.sleep(poll)
    say(f"  ! {timings.kind} N={n}: timed out after {timeout:.0f}s ({len(answered)}/{n} answered)")
    return timings


# -- hyperservice --------------------------------------------------------------------------------


class HyperserviceCase:
    def __init__(self, client: docker.DockerClient, resync_seconds: float) -> None:
        self.client = client
        self.data_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
        lb_image = LB_IMAGE if _has_image(client, LB_IMAGE) else Settings().lb_image
        self.backend = Backend(
            Settings(
                data_dir=self.data_dir, resync_seconds=resync_seconds, lb_image=lb_image, address_pool=ADDRESS_POOL
            )
        )
        self.backend.start()
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.backend)), base_url="http://hyperservice", timeout=180
        )

    async def trial(self, n: int, prober: Prober, poll: float, tag: str, profile: Profile | None = None) -> Timings:
        """POST the create; time the replicas answering (the measure), then the service's own address
        (its balancer, IP:ServicePort) answering and its Status reading active; delete it."""
        name = f"{PREFIX}hs{n}-{tag}"
        body = {"Name": name, "Image": IMAGE, "ServicePort": 80, "Replicas": n}
        timings = Timings("hyperservice", n)

        async def fetch() -> tuple[int, list[str]]:
            response = await self.api.get(f"/services/{name}/containers")
            response.raise_for_status()
            replicas = response.json()
            running = [r for r in replicas if r["State"] == "running"]
            return len(running), [r["Address"] for r in running if r["Address"]]

        def mark(step: str, since_t0: float | None = None) -> None:
            if profile is not None:
                at = now() if since_t0 is None else t0 + since_t0
                profile.add(at, at, step)

        t0 = now()
        if profile is not None:
            profile.reset(t0)
        response = await self.api.post("/services/create", json=body)
        timings.returned = now() - t0
        mark("POST /services/create answered")
        if response.status_code != 201:
            raise RuntimeError(f"POST /services/create answered {response.status_code}: {response.text}")
        address = f"{response.json()['IP']}:{body['ServicePort']}"
        try:
            await converge(n, fetch, prober, t0, poll, timings)
            if "first_answer" in timings.extra:
                mark("bench: first replica answered", timings.extra["first_answer"])
            if timings.answer is not None:
                mark(f"bench: all {n} replicas answered", timings.answer)
            # then the service's own address, and its status (neither is on the replicas' path)
            while now() - t0 < TRIAL_TIMEOUT and ("service" not in timings.extra or "active" not in timings.extra):
                if "service" not in timings.extra and response.json()["IP"] and await prober.answers(address):
                    timings.extra["service"] = now() - t0
                    mark(f"bench: service address {address} answered")
                if "active" not in timings.extra:
                    service = (await self.api.get(f"/services/{name}")).json()
                    if service["Status"] == "active":
                        timings.extra["active"] = now() - t0
                        mark("bench: service Status reads active")
                    elif service["Status"] == "error":
                        say(f"  ! {name}: {service['Message']}")
                        break
                await asyncio.sleep(poll)
        finally:
            cut = len(profile.records) if profile is not None else 0
            t1 = now()
            response = await self.api.delete(f"/services/{name}")
            timings.extra["delete"] = now() - t1
            if profile is not None:
                del profile.records[cut:]  # the teardown is not part of the profile
            if response.status_code != 204:
                say(f"  ! DELETE {name} answered {response.status_code}: {response.text}")
        return timings

    async def aclose(self) -> None:
        await self.api.aclose()

    def close(self) -> None:
        """Synchronous, for the cleanup path: stop the backend, remove whatever it left."""
        tenant = self.backend.tenant
        with contextlib.suppress(Exception):
            self.backend.close()
        label = f"{LABEL_TENANT}={tenant}"
        for container in self.client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# -- swarm ----------------------------------------------------------------------------------------


class Swarm:
    """A single-node swarm: joined when there is none, left at the end only if we joined it."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.initialised = False
        self.gwbridge_existed = True

    def ensure(self) -> None:
        state = self.client.info().get("Swarm", {}).get("LocalNodeState")
        if state == "active":
            say("using the engine's existing swarm (it will be left as it is)")
            return
        if state != "inactive":
            raise RuntimeError(f"the engine's swarm is '{state}'; expected inactive or active")
        self.gwbridge_existed = bool(self.client.networks.list(names=["docker_gwbridge"]))
        t0 = now()
        self.initialised = True  # from here on, leave on the way out even if init fails half-way
        docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
        say(f"swarm initialised in {now() - t0:.2f} s (single node, 127.0.0.1)")

    def leave(self) -> None:
        if not self.initialised:
            return
        result = docker_cli("swarm", "leave", "--force", check=False)
        if result.returncode != 0:
            say(f"  ! docker swarm leave --force: {result.stderr.strip()}")
        else:
            say("left the swarm the benchmark had initialised")
        self.initialised = False
        if not self.gwbridge_existed:  # swarm made it for us; drop it when nothing uses it
            for network in self.client.networks.list(names=["docker_gwbridge"]):
                network.reload()
                if not network.attrs.get("Containers"):
                    with contextlib.suppress(docker.errors.APIError):
                        network.remove()


class SwarmCase:
    def __init__(self, client: docker.DockerClient, image_id: str) -> None:
        self.client = client
        self.image_id = image_id

    def _create_args(self, name: str, n: int) -> list[str]:
        return [
            "service", "create", "--name", name, "--replicas", str(n),
            "--publish", "mode=host,target=80", "--no-resolve-image",
            "--label", f"{LABEL}=1", "--container-label", f"{LABEL}=1",
            self.image_id,
        ]  # fmt: skip

    async def trial(self, n: int, prober: Prober, poll: float, tag: str) -> Timings:
        """`--detach`: (a) N tasks running per the swarm API, (b) N containers answering."""
        name = f"{PREFIX}sw{n}-{tag}"
        timings = Timings("swarm", n)
        api = self.client.api

        def fetch_sync() -> tuple[int, list[str]]:
            tasks = api.tasks(filters={"service": name})
            running = sum(1 for t in tasks if t["Status"]["State"] == "running" and t["DesiredState"] == "running")
            containers = api.containers(filters={"label": f"{SWARM_SERVICE_LABEL}={name}", "status": "running"})
            return running, _addresses(containers)

        async def fetch() -> tuple[int, list[str]]:
            return await asyncio.to_thread(fetch_sync)

        t0 = now()
        process = await asyncio.create_subprocess_exec(
            "docker", *self._create_args(name, n)[:2], "--detach", *self._create_args(name, n)[2:],
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await process.communicate()
        timings.returned = now() - t0
        try:
            if process.returncode != 0:
                raise RuntimeError(f"docker service create --detach failed: {stderr.decode().strip()}")
            await converge(n, fetch, prober, t0, poll, timings)
        finally:
            await asyncio.to_thread(self.remove, name)
        return timings

    async def trial_cli(self, n: int, tag: str) -> Timings:
        """Without `--detach`: until the CLI says the service converged (and returns)."""
        name = f"{PREFIX}cli{n}-{tag}"
        timings = Timings("swarm-cli", n)
        t0 = now()
        process = await asyncio.create_subprocess_exec(
            "docker", *self._create_args(name, n), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), TRIAL_TIMEOUT)
            if process.returncode == 0:
                timings.answer = now() - t0
            else:
                say(f"  ! docker service create {name}: {stderr.decode().strip()}")
        except TimeoutError:
            process.kill()
            say(f"  ! docker service create {name}: no convergence within {TRIAL_TIMEOUT:.0f}s")
        finally:
            await asyncio.to_thread(self.remove, name)
        return timings

    def remove(self, name: str) -> None:
        """Remove the service and wait until its containers are gone (so trials don't overlap)."""
        docker_cli("service", "rm", name, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.client.api.containers(all=True, filters={"label": f"{SWARM_SERVICE_LABEL}={name}"}):
                return
            time.sleep(0.1)
        say(f"  ! containers of swarm service {name} still there after 60 s")


# -- the floor: plain docker run ---------------------------------------------------------------


class RunCase:
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    async def trial(self, n: int, prober: Prober, poll: float, tag: str) -> Timings:
        trial = f"run{n}-{tag}"
        timings = Timings("docker-run", n)
        api = self.client.api

        def fetch_sync() -> tuple[int, list[str]]:
            containers = api.containers(filters={"label": f"{TRIAL_LABEL}={trial}", "status": "running"})
            return len(containers), _addresses(containers)

        async def fetch() -> tuple[int, list[str]]:
            return await asyncio.to_thread(fetch_sync)

        async def run(index: int) -> None:
            process = await asyncio.create_subprocess_exec(
                "docker", "run", "-d", "--name", f"{PREFIX}{trial}-{index}",
                "--label", f"{LABEL}=1", "--label", f"{TRIAL_LABEL}={trial}", IMAGE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, stderr = await process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"docker run failed: {stderr.decode().strip()}")

        t0 = now()
        try:
            runs = asyncio.gather(*(run(i) for i in range(n)))
            await converge(n, fetch, prober, t0, poll, timings)
            await runs
            timings.returned = now() - t0  # by then every `docker run -d` has returned
        finally:
            await asyncio.to_thread(self.remove, trial)
        return timings

    def remove(self, trial: str) -> None:
        containers = self.client.containers.list(all=True, filters={"label": f"{TRIAL_LABEL}={trial}"})
        _remove_all(containers)


def _addresses(summaries: list[dict]) -> list[str]:
    """IP:80 of each container summary (the first network with an address)."""
    found = []
    for summary in summaries:
        for settings in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if settings.get("IPAddress"):
                found.append(f"{settings['IPAddress']}:80")
                break
    return found


def _remove_all(containers: list) -> None:
    def remove(container) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)

    threads = [threading.Thread(target=remove, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def backend_version() -> str:
    """The commit the backend's code is at, and whether it has uncommitted changes (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "backend"], capture_output=True, text=True
        )
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return f"commit {head.stdout.strip()}" + (" + uncommitted changes in backend/" if dirty.stdout.strip() else "")


def _has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


# -- diagnostic floors: the backend's own Docker calls, without the backend ---------------------


class SdkFloorCase:
    """N containers created and started through the docker SDK in parallel threads, with the
    options the backend's driver uses (memory/CPU limits, restart policy), on the default bridge or
    on a bridge network created first (as the backend does per service). Used by `--profile` to
    tell the engine's share from the backend's."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    async def trial(self, n: int, prober: Prober, poll: float, tag: str, new_network: bool) -> Timings:
        trial = f"sdk{'net' if new_network else ''}{n}-{tag}"
        timings = Timings("sdk-net" if new_network else "sdk", n)
        api = self.client.api
        network_name = f"{PREFIX}{trial}"

        def create_all() -> None:
            network = "bridge"
            if new_network:
                t = now()
                network = self.client.networks.create(network_name, driver="bridge", labels={LABEL: "1"}).name
                timings.extra["network"] = now() - t

            def one(index: int) -> None:
                container = self.client.containers.create(
                    IMAGE, name=f"{PREFIX}{trial}-{index}", labels={LABEL: "1", TRIAL_LABEL: trial},
                    network=network, mem_limit=512 * 2**20, memswap_limit=512 * 2**20, nano_cpus=10**9,
                    restart_policy={"Name": "unless-stopped"}, detach=True,
                )  # fmt: skip
                container.start()

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        def fetch_sync() -> tuple[int, list[str]]:
            containers = api.containers(filters={"label": f"{TRIAL_LABEL}={trial}", "status": "running"})
            return len(containers), _addresses(containers)

        async def fetch() -> tuple[int, list[str]]:
            return await asyncio.to_thread(fetch_sync)

        t0 = now()
        try:
            creating = asyncio.ensure_future(asyncio.to_thread(create_all))
            await converge(n, fetch, prober, t0, poll, timings)
            await creating
        finally:
            await asyncio.to_thread(self.remove, trial, network_name if new_network else None)
        return timings

    def remove(self, trial: str, network: str | None) -> None:
        _remove_all(self.client.containers.list(all=True, filters={"label": f"{TRIAL_LABEL}={trial}"}))
        if network:
            for found in self.client.networks.list(names=[network]):
                with contextlib.suppress(docker.errors.APIError):
                    found.remove()


# -- profile of the backend ----------------------------------------------------------------------


class Profile:
    """Timestamps of the backend's steps during one hyperservice trial (monkeypatched wrappers).

    Only installed for the `--profile` phase, after the measured runs; it wraps the driver's Docker
    calls, the reconciler's syncs and status reports, the store's writes and the Docker events the
    reconciler receives, recording (start, end, thread, step) relative to the trial's POST.
    """

    def __init__(self) -> None:
        self.t0 = now()
        self.records: list[tuple[float, float, str, str]] = []
        self._lock = threading.Lock()
        self._undo: list[tuple[object, str, object]] = []

    def reset(self, t0: float) -> None:
        with self._lock:
            self.t0 = t0
            self.records = []

    def add(self, start: float, end: float, step: str) -> None:
        name = threading.current_thread().name
        with self._lock:
            self.records.append((start - self.t0, end - self.t0, name, step))

    def wrap(self, owner: object, attribute: str, step: str | None = None, describe=None) -> None:
        original = getattr(owner, attribute, None)
        if original is None:  # the backend changed: profile what is there
            say(f"  (profile: {getattr(owner, '__name__', owner)}.{attribute} not found, not timed)")
            return
        label = step or attribute

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = now()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(start, now(), describe(args, kwargs) if describe else label)

        self._undo.append((owner, attribute, original))
        setattr(owner, attribute, wrapper)

    def install(self) -> None:
        from docker.models.containers import Container, ContainerCollection
        from docker.models.networks import NetworkCollection

        from backend.docker_driver import DockerDriver
        from backend.reconciler import Reconciler
        from backend.store import Store

        for method in ("find_network", "ensure_network", "has_image", "ensure_image", "ncpu", "create_replica",
                       "remove_many", "remove_network"):  # fmt: skip
            self.wrap(DockerDriver, method, f"driver.{method}")
        self.wrap(
            DockerDriver,
            "containers",
            describe=lambda args, kwargs: f"driver.containers({(args[2:] or [kwargs.get('role', 'all')])[0]})",
        )
        self.wrap(ContainerCollection, "create", "docker: container create (+inspect)")
        self.wrap(Container, "start", "docker: container start")
        self.wrap(Container, "put_archive", "docker: copy files into container")
        self.wrap(Container, "exec_run", "docker: exec in container")
        try:
            from backend.balancer import Balancers
        except ImportError:
            Balancers = None
        if Balancers is not None:
            for method in ("ensure", "_create", "set_servers"):
                self.wrap(Balancers, method, f"balancers.{method}")
        self.wrap(NetworkCollection, "create", "docker: network create")
        self.wrap(Reconciler, "sync", "reconciler.sync")
        self.wrap(Reconciler, "_create_replicas", "reconciler._create_replicas (parallel)")
        self.wrap(
            Reconciler, "report", describe=lambda args, kwargs: f"reconciler.report({args[2]!s} / {args[3]!r})"
        )
        self.wrap(Store, "update", "store.update (containers)")
        self.wrap(Store, "set_status", "store.set_status")
        self.wrap(
            Reconciler,
            "_on_docker_event",
            describe=lambda args, kwargs: "docker event: {} {}".format(
                args[1].get("Type"), str(args[1].get("Action") or args[1].get("status"))
            ),
        )

    def uninstall(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)
        self._undo = []


async def profile_phase(
    case: HyperserviceCase, sizes: list[int], repeat: int, prober: Prober, poll: float
) -> tuple[dict, dict]:
    profile = Profile()
    sdk = SdkFloorCase(case.client)
    report: dict = {}
    floors: dict = {}
    for n in sizes:
        trials = []
        floors[n] = {"sdk": [], "sdk-net": []}
        for rep in range(repeat):
            profile.install()
            try:
                timings = await case.trial(n, prober, poll, f"p{rep}", profile)
            finally:
                profile.uninstall()
            trials.append((timings, sorted(profile.records)))
            say(f"  N={n:<3} profiled hyperservice: answering {fmt(timings.answer)}")
            await asyncio.sleep(0.5)
            for new_network in (False, True):
                t = await sdk.trial(n, prober, poll, f"p{rep}", new_network)
                floors[n][t.kind].append(t)
                say(f"  N={n:<3} {t.kind:<7} answering {fmt(t.answer)}")
                await asyncio.sleep(0.5)
        report[n] = trials
    return report, floors


def _profile_steps(timings: Timings, records: list[tuple[float, float, str, str]]) -> dict[str, float]:
    """One profiled trial's steps: durations, and milestones "since POST" (seconds)."""
    steps: dict[str, float] = {}

    def took(rs) -> float:
        return sum(r[1] - r[0] for r in rs)

    syncs = [r for r in records if r[3] == "reconciler.sync"]
    if not syncs:
        return steps
    first = syncs[0]
    on_sync = [r for r in records if r[2] == first[2] and first[0] <= r[0] <= first[1]]
    pool = [r for r in records if r[2].startswith("ThreadPool")]  # the parallel replica creation
    creates = [r for r in pool if r[3] == "docker: container create (+inspect)"]
    starts = [r for r in pool if r[3] == "docker: container start"]
    steps["POST → first sync starts (queue)"] = first[0]
    steps["ensure_network: list + create network"] = took(r for r in on_sync if r[3] == "driver.ensure_network")
    steps["  of which docker network create"] = took(r for r in on_sync if r[3] == "docker: network create")
    before_replicas = min((r[0] for r in creates), default=first[1])
    steps["image check (has_image + ensure_image)"] = took(
        r for r in on_sync if r[3] in ("driver.has_image", "driver.ensure_image") and r[0] < before_replicas
    )
    steps["list the replicas (list + inspect each)"] = took(
        r for r in on_sync if r[3] == "driver.containers(replica)" and r[0] < before_replicas
    )
    if creates and starts:
        steps["replica create+inspect (median per replica)"] = statistics.median(r[1] - r[0] for r in creates)
        steps["replica start (median per replica)"] = statistics.median(r[1] - r[0] for r in starts)
        steps["first replica create called (since POST)"] = min(r[0] for r in creates)
        steps["last replica start returned (since POST)"] = max(r[1] for r in starts)
    if timings.answer is not None:
        steps["bench: all N replicas answered (since POST)"] = timings.answer
    balancer = [r for r in on_sync if r[3] == "balancers._create"]
    if balancer:
        inside = [r for r in on_sync if balancer[0][0] <= r[0] <= balancer[0][1]]
        steps["balancer: create+copy config+start (after the replicas)"] = took(balancer)
        steps["  container create+inspect"] = took(r for r in inside if r[3] == "docker: container create (+inspect)")
        steps["  copy config (put_archive)"] = took(r for r in inside if r[3] == "docker: copy files into container")
        steps["  container start"] = took(r for r in inside if r[3] == "docker: container start")
    servers = [r for r in on_sync if r[3] == "balancers.set_servers"]
    if servers:
        steps["balancer: set_servers (runtime API via docker exec)"] = took(servers)
    steps["first sync ends (since POST)"] = first[1]
    if "service" in timings.extra:
        steps["bench: service address answered (since POST)"] = timings.extra["service"]
    if "active" in timings.extra:
        steps["bench: Status reads active (since POST)"] = timings.extra["active"]
    steps["reconciler syncs until active"] = float(len(syncs))
    return steps


def print_profile(report: dict, floors: dict) -> None:
    print("\n## Where hyperservice spends its time (profile, --profile)\n")
    print("The backend's Docker calls replayed without the backend (docker SDK, parallel threads, the")
    print("driver's container options), against hyperservice in the same phase; medians, seconds:\n")
    print(
        "| N | hyperservice answering | SDK create+start, default bridge "
        "| SDK network create + create+start on it | of which network create |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n, trials in report.items():
        hs = median([t.answer for t, _ in trials])
        plain = median([t.answer for t in floors[n]["sdk"]])
        net = median([t.answer for t in floors[n]["sdk-net"]])
        create = median([t.extra.get("network") for t in floors[n]["sdk-net"]])
        print(f"| {n} | {fmt(hs, '')} | {fmt(plain, '')} | {fmt(net, '')} | {fmt(create, '')} |")
    print()
    for n, trials in report.items():
        answers = [t.answer for t, _ in trials if t.answer is not None]
        pick = min(trials, key=lambda tr: abs((tr[0].answer or 0) - (statistics.median(answers) if answers else 0)))
        print(f"### N = {n}: timeline of the trial closest to the median (all N answered at {fmt(pick[0].answer)})\n")
        print("```")
        print(f"{'start':>7} {'end':>7} {'took':>7}  {'thread':<26} step")
        for start, end, thread, step in pick[1]:
            if step.startswith("driver.containers") and not thread.startswith(("reconciler", "ThreadPool")):
                continue  # the bench's own GET /containers polls: summarised below, not listed
            took = f"{(end - start) * 1000:6.0f}ms" if end > start else ""
            print(f"{start:7.3f} {end:7.3f} {took:>7}  {thread[:26]:<26} {step}")
        polls = [
            r for r in pick[1] if r[3].startswith("driver.containers") and not r[2].startswith(("reconciler", "ThreadPool"))
        ]
        if polls:
            each = statistics.median(r[1] - r[0] for r in polls) * 1000
            print(f"(+ {len(polls)} GET /containers polls by the bench, median {each:.0f} ms each)")
        print("```\n")
        # medians over the trials, step by step
        rows: dict[str, list[float]] = {}
        for timings, records in trials:
            for step, value in _profile_steps(timings, records).items():
                rows.setdefault(step, []).append(value)
        print(f"medians over {len(trials)} profiled trial(s), N = {n}:\n")
        print("| step | median |")
        print("| --- | ---: |")
        for step, values in rows.items():
            value = statistics.median(values)
            print(f"| {step} | {value:.0f} |" if "syncs" in step else f"| {step} | {value * 1000:.0f} ms |")
        print()


# -- the run -------------------------------------------------------------------------------------


def print_table(results: dict[int, dict[str, list[float]]], repeat: int, cli_repeat: int) -> None:
    cli = f" (CLI converged: {min(cli_repeat, repeat)})" if cli_repeat < repeat else ""
    print(f"\n## Create → converged, medians of {repeat} run(s){cli} (seconds)\n")
    head = ["N"] + [title for _, title in COLUMNS] + ["hs / swarm running", "hs / floor"]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join(["---:"] * len(head)) + " |")
    for n, columns in results.items():
        medians = {key: median(columns.get(key, [])) for key, _ in COLUMNS}
        hs = medians["hs_answer"]
        ratio_swarm = hs / medians["swarm_running"] if hs and medians["swarm_running"] else None
        ratio_floor = hs / medians["run_answer"] if hs and medians["run_answer"] else None
        ratios = [fmt(ratio_swarm, "×").replace(" ×", "×"), fmt(ratio_floor, "×").replace(" ×", "×")]
        cells = [str(n)] + [fmt(medians[key], "") for key, _ in COLUMNS] + ratios
        print("| " + " | ".join(cells) + " |")

    print("\nMore detail (medians; min–max of the main figure in brackets):\n")
    detail = [
        ("hs_answer", "hyperservice: all N answering"),
        ("hs_post", "hyperservice: POST answered"),
        ("hs_first", "hyperservice: first replica answering"),
        ("hs_running", "hyperservice: GET /containers shows N running"),
        ("hs_service", "hyperservice: the service's address (balancer) answering"),
        ("hs_active", "hyperservice: service Status reads active"),
        ("hs_delete", "hyperservice: DELETE (teardown) took"),
        ("swarm_cli_detach", "swarm: `service create --detach` returned"),
        ("swarm_running", "swarm: N tasks running"),
        ("swarm_answer", "swarm: all N answering"),
        ("swarm_cli", "swarm: CLI converged (no --detach)"),
        ("run_answer", "docker run: all N answering"),
        ("run_returned", "docker run: all N CLIs returned (≤ this)"),
    ]
    print("| measure | " + " | ".join(f"N={n}" for n in results) + " |")
    print("| --- | " + " | ".join("---:" for _ in results) + " |")
    for key, title in detail:
        cells = []
        for n in results:
            values = [v for v in results[n].get(key, []) if v is not None]
            if not values:
                cells.append("—")
            elif key in ("hs_answer", "swarm_running", "swarm_answer", "swarm_cli", "run_answer") and len(values) > 1:
                cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})")
            else:
                cells.append(f"{statistics.median(values):.2f}")
        print(f"| {title} | " + " | ".join(cells) + " |")


async def run(args: argparse.Namespace, client: docker.DockerClient, swarm: Swarm, state: dict) -> None:
    image_id = client.images.get(IMAGE).id
    prober = Prober()
    hs = HyperserviceCase(client, args.resync_seconds)
    state["hs"] = hs
    swarm_case = SwarmCase(client, image_id)
    floor = RunCase(client)
    sizes: list[int] = args.sizes
    results: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    run_id = uuid.uuid4().hex[:4]

    def add(n: int, key: str, value: float | None) -> None:
        results[n].setdefault(key, []).append(value)

    cases = ["hs", "swarm", "cli", "run"] if not args.no_swarm else ["hs", "run"]

    loads: list[float] = []

    async def one(kind: str, n: int, tag: str) -> None:
        loads.append(os.getloadavg()[0])
        started = now()
        if kind == "hs":
            t = await hs.trial(n, prober, args.poll, tag)
            add(n, "hs_answer", t.answer)
            add(n, "hs_post", t.returned)
            add(n, "hs_first", t.extra.get("first_answer"))
            add(n, "hs_running", t.running)
            add(n, "hs_active", t.extra.get("active"))
            add(n, "hs_service", t.extra.get("service"))
            add(n, "hs_delete", t.extra.get("delete"))
            line = (
                f"answering {fmt(t.answer)} (running {fmt(t.running)}, service address {fmt(t.extra.get('service'))}, "
                f"active {fmt(t.extra.get('active'))})"
            )
        elif kind == "swarm":
            t = await swarm_case.trial(n, prober, args.poll, tag)
            add(n, "swarm_running", t.running)
            add(n, "swarm_answer", t.answer)
            add(n, "swarm_cli_detach", t.returned)
            line = f"running {fmt(t.running)}, answering {fmt(t.answer)}"
        elif kind == "cli":
            t = await swarm_case.trial_cli(n, tag)
            add(n, "swarm_cli", t.answer)
            line = f"CLI converged {fmt(t.answer)}"
        else:
            t = await floor.trial(n, prober, args.poll, tag)
            add(n, "run_answer", t.answer)
            add(n, "run_returned", t.returned)
            line = f"answering {fmt(t.answer)}"
        say(f"  N={n:<3} {kind:<6} {line}   [trial with cleanup {now() - started:.1f} s, load {loads[-1]:.1f}]")
        await asyncio.sleep(args.settle)

    try:
        if args.warmup:
            say("warm-up (not counted) ...")
            saved = results
            results = {1: {}}
            for kind in cases:
                await one(kind, 1, f"{run_id}w")
            results = saved
        t_start = now()
        for rep in range(args.repeat):
            say(f"repetition {rep + 1}/{args.repeat}")
            order = cases[rep % len(cases):] + cases[: rep % len(cases)]  # rotate who goes first
            for n in sizes:
                for kind in order:
                    if kind == "cli" and rep >= args.cli_repeat:
                        continue  # its 5 s stability wait makes it the slowest case, and the steadiest
                    await one(kind, n, f"{run_id}r{rep}")
        say(f"measured in {now() - t_start:.0f} s")

        print(f"# hyperservice create→converge benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        info = client.info()
        print(
            f"\nmachine: {os.cpu_count()} cores, {info.get('MemTotal', 0) / 2**30:.1f} GiB; "
            f"Docker engine {info.get('ServerVersion')} ({info.get('Driver')}); image {IMAGE} ({image_id[:19]}); "
            f"poll every {args.poll * 1000:.0f} ms"
        )
        print(f"backend measured: {backend_version()}")
        print(
            f"load average (1 min) before each trial: median {statistics.median(loads):.1f}, "
            f"range {min(loads):.1f}–{max(loads):.1f} (other work on the machine slows every case alike)"
        )
        print_table(results, args.repeat, args.cli_repeat)
        report = None
        if args.profile:
            say("profiling the backend ...")
            report, floors = await profile_phase(hs, sizes, args.profile_repeat, prober, args.poll)
            print_profile(report, floors)
        if args.json:
            dump = {"sizes": sizes, "repeat": args.repeat, "results": {str(n): v for n, v in results.items()}}
            if report:
                dump["profile"] = {
                    str(n): [{"answer": t.answer, "records": r} for t, r in trials] for n, trials in report.items()
                }
            Path(args.json).write_text(json.dumps(dump, indent=1))
    finally:
        await prober.close()
        await hs.aclose()


def cleanup(client: docker.DockerClient, swarm: Swarm, state: dict) -> None:
    """Remove everything the benchmark created (runs on success, error and Ctrl-C)."""
    hs: HyperserviceCase | None = state.get("hs")
    if hs is not None:
        hs.close()
    with contextlib.suppress(Exception):
        if client.info().get("Swarm", {}).get("LocalNodeState") == "active":
            for service in client.services.list():
                if service.name.startswith(PREFIX):
                    with contextlib.suppress(docker.errors.APIError):
                        service.remove()
    with contextlib.suppress(Exception):
        _remove_all(client.containers.list(all=True, filters={"label": f"{LABEL}=1"}))
    swarm.leave()
    with contextlib.suppress(Exception):  # containers of swarm tasks linger a moment after service rm
        _remove_all(client.containers.list(all=True, filters={"label": f"{LABEL}=1"}))
    with contextlib.suppress(Exception):
        for network in client.networks.list(filters={"label": f"{LABEL}=1"}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="replica counts, comma-separated (default 1,3,10; --quick: 1,3)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of each case (default 5; --quick: 1)")
    parser.add_argument("--cli-repeat", type=int, default=3,
                        help="repetitions of the slow `docker service create` without --detach (default 3)")
    parser.add_argument("--quick", action="store_true", help="a short run: N = 1,3, one repetition")
    parser.add_argument("--poll", type=float, default=0.025, help="poll interval in seconds (default 0.025)")
    parser.add_argument("--settle", type=float, default=0.5, help="pause between trials in seconds (default 0.5)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the uncounted warm-up round")
    parser.add_argument("--no-swarm", action="store_true", help="only hyperservice and the docker-run floor")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the backend's resync period (default 30)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile hyperservice's steps (timestamps of each Docker call)")
    parser.add_argument("--profile-repeat", type=int, default=3, help="profiled trials per N (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [1, 3] if args.quick else [1, 3, 10]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.quick:
        args.profile_repeat = min(args.profile_repeat, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = docker.from_env(timeout=120)
    client.ping()
    if not _has_image(client, IMAGE):
        say(f"image {IMAGE} is missing: build it with tests/images/build.sh")
        return 2
    swarm = Swarm(client)
    state: dict = {}

    def terminate(signum, frame):  # SIGTERM: whatever Ctrl-C does now (asyncio.run cancels its task)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if not args.no_swarm:
            swarm.ensure()
        asyncio.run(run(args, client, swarm, state))
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up ...")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup(client, swarm, state)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
