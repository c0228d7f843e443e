"""Benchmark: a rolling image update of N replicas under steady load, hyperservice beside Docker Swarm.

Per repetition, interleaved:

- hyperservice: an in-process backend on the machine's main Docker engine (reached through httpx's
  ASGI transport, as the console reaches it) with HYPERSERVICE_ROLLOUT_PARALLELISM = `--parallelism`.
  A service of N replicas of hyperservice-test/web:1 (Protocol http, health check GET / every
  `--interval` s, rise `--rise`, fall `--fall`) is made active, then, under steady load through its
  address, `POST /services/NAME/update {"Image": "hyperservice-test/web:2"}`. Time to complete: from
  the POST until the service reads `active` with N replicas, all of web:2.
- swarm: `docker service update --image hyperservice-test/web:2` of a service of N replicas of web:1
  on ONE node of the project's lab (scripts/swarm-lab: node1, the manager; the service is constrained
  to it, so it is a single-node swarm as far as the service goes). The same health check as a Docker
  HEALTHCHECK (`wget` of / every `--interval` s, `--fall` retries; swarm has no rise: one success
  makes a task healthy), `--update-parallelism` = `--parallelism`, `--update-delay 0`,
  `--update-order` = `--order` (start-first: like hyperservice, a new replica before an old one goes;
  stop-first is swarm's default). The lab's kernel has no IPVS, so swarm's routing mesh and VIPs do
  not work there: the service is `--endpoint-mode dnsrr`, each task published in host mode on a port
  of its own, and the same steady load is spread over the tasks swarm lists as running (desired and
  actual, refreshed every 0.2 s), as a client of a dnsrr service does it. Time to complete: from the spawn of the CLI until the swarm API shows
  N running tasks, all of web:2, and no other task still running (and, for reference, until the CLI
  returns: it waits out `--update-monitor`, 5 s by default, after the last task).

The main engine is never made a swarm (other tests use it): the swarm half runs on the lab.
Failed requests: connection errors, timeouts and non-200 answers of the steady load (tests'
`SteadyLoad`: `--threads` threads, a new connection per request). Medians over `--repeat` runs.

    python -m bench.rolling_update                    # 6 replicas, parallelism 1, 3 repetitions
    python -m bench.rolling_update --parallelism 2 --repeat 5
    python -m bench.rolling_update --no-swarm         # hyperservice only

Needs root for the lab and the offline test images (tests/images/build.sh). Everything it creates is
named `hbx-roll-`; it is removed at the end, also on error or Ctrl-C (the lab itself is left up, as
`scripts/swarm-lab up` found or made it; `scripts/swarm-lab down` removes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import docker.errors
import httpx
import requests

from backend.api import create_app
from backend.balancer import LABEL_SLOT
from backend.core import Backend
from backend.docker_driver import LABEL_SERVICE, LABEL_TENANT
from backend.haproxy import slot_index
from backend.settings import Settings
from bench import polling
from bench.lab import Lab, parse_env, swarm_lab
from bench.load import SteadyLoad

OLD_IMAGE = "hyperservice-test/web:1"
NEW_IMAGE = "hyperservice-test/web:2"
LB_IMAGE = "hyperservice-test/haproxy:2.6"
PREFIX = "hbx-roll-"
LAB_NODE = "node1"  # the lab's manager: the swarm half runs on this one node only
TRIAL_TIMEOUT = 300.0  # seconds a rollout may take before the trial counts as failed
POLL = 0.2  # seconds between looks at the rollout's progress
ATTEMPTS = 3  # tries of a swarm trial (the lab is shared: another session may take it down meanwhile)


@dataclass
class Trial:
    """One rolling update: how long it took and what the load saw meanwhile."""

    seconds: float | None  # None: not complete within TRIAL_TIMEOUT
    ok: int
    failed: int
    errors: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


eventually = functools.partial(polling.eventually, interval=POLL)  # (bench/polling.py)


# -- hyperservice ------------------------------------------------------------------------------------


class HyperserviceCase:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.last = ""  # the service's last status and message seen
        self.data_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.backend = Backend(
            Settings(
                data_dir=self.data_dir,
                lb_image=LB_IMAGE,
                address_pool=f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24",
                network_pool=f"10.{random.randint(100, 250)}.0.0/16",
                rollout_parallelism=args.parallelism,
            )
        )
        self.backend.start()
        self.docker = docker.from_env()
        self.highest_slot = 0
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.backend)), base_url="http://hyperservice", timeout=120
        )

    async def trial(self, tag: str) -> Trial:
        args, name = self.args, f"{PREFIX}hs-{tag}"
        body = {
            "Name": name, "Image": OLD_IMAGE, "ServicePort": 80, "Replicas": args.replicas, "Protocol": "http",
            "HealthCheckInterval": args.interval, "HealthCheckRise": args.rise, "HealthCheckFall": args.fall,
        }
        created = await self.api.post("/services/create", json=body)
        if created.status_code != 201:
            raise RuntimeError(f"create answered {created.status_code}: {created.text}")
        address = created.json()["IP"]
        self.highest_slot = 0
        try:
            try:
                await eventually(lambda: self._status(name, "active"), 180, f"{name} to be active")
            except RuntimeError as exc:
                raise RuntimeError(f"{exc} (it said {self.last!r})") from None
            with SteadyLoad(address, 80, threads=args.threads, max_seconds=TRIAL_TIMEOUT + 60) as load:
                await eventually(lambda: load.result.ok >= 20, 30, "the load to get going")
                started = time.monotonic()
                response = await self.api.post(f"/services/{name}/update", json={"Image": NEW_IMAGE})
                if response.status_code != 200:
                    raise RuntimeError(f"update answered {response.status_code}: {response.text}")
                seconds: float | None = None
                with contextlib.suppress(RuntimeError):
                    await eventually(lambda: self._rolled(name), TRIAL_TIMEOUT, f"{name} rolled to {NEW_IMAGE}")
                    seconds = time.monotonic() - started
                await asyncio.sleep(1.0)  # a second of load on the new replicas alone
            slots = {"highest_slot": float(self.highest_slot)}
            return Trial(seconds, load.result.ok, load.result.failed, list(load.result.errors), slots)
        finally:
            await self.api.delete(f"/services/{name}")
            with contextlib.suppress(RuntimeError):
                await eventually(lambda: self._gone(name), 60, f"{name} deleted")

    async def _status(self, name: str, status: str) -> bool:
        body = (await self.api.get(f"/services/{name}")).json()
        self.last = f"{body.get('Status')}: {body.get('Message')}"
        if body.get("Status") == "error":
            say(f"  ! {name}: {body.get('Message')}")
        return body.get("Status") == status

    async def _rolled(self, name: str) -> bool:
        self._note_slots(name)
        if not await self._status(name, "active"):
            return False
        containers = (await self.api.get(f"/services/{name}/containers")).json()
        return len(containers) == self.args.replicas and all(c["Image"] == NEW_IMAGE for c in containers)

    def _note_slots(self, name: str) -> None:
        """The highest balancer slot a replica of the service occupies now (how far a rollout strays
        above the lowest slots: a slot beyond the balancer's armed ones waits out a check interval)."""
        filters = {"label": [f"{LABEL_TENANT}={self.backend.tenant}", f"{LABEL_SERVICE}={name}", f"{LABEL_SLOT}"]}
        for container in self.docker.api.containers(all=True, filters=filters):  # no inspect: no race
            index = slot_index((container.get("Labels") or {}).get(LABEL_SLOT, "")) or 0
            self.highest_slot = max(self.highest_slot, index)

    async def _gone(self, name: str) -> bool:
        return (await self.api.get(f"/services/{name}")).status_code == 404

    async def close(self) -> None:
        await self.api.aclose()
        tenant = self.backend.tenant
        self.backend.close()
        client = docker.from_env()
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_TENANT}={tenant}"}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in client.networks.list(filters={"label": f"{LABEL_TENANT}={tenant}"}):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# -- swarm (one node of the lab) ------------------------------------------------------------------


class SwarmCase:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.host = lab.docker_host(LAB_NODE)
        self.address = lab.address(LAB_NODE)
        self.client = lab.engine(LAB_NODE)
        for image in (OLD_IMAGE, NEW_IMAGE):
            self.client.images.get(image)  # the lab copies them from the main engine

    def _docker(self, *argv: str, timeout: float = TRIAL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "DOCKER_HOST": self.host}
        return subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=timeout, env=environment)

    def _tasks(self, name: str) -> list[dict]:
        return self.client.api.tasks(filters={"service": name})

    def _converged(self, name: str, image: str) -> bool:
        running = [t for t in self._tasks(name) if t["Status"]["State"] == "running"]
        images = {t["Spec"]["ContainerSpec"]["Image"].split("@")[0] for t in running}
        return len(running) == self.args.replicas and images == {image}

    async def trial(self, tag: str) -> Trial:
        """One rollout; tried again (at most `ATTEMPTS` times) when the lab went away under it: the lab
        is shared, and `scripts/swarm-lab up` brings it back."""
        for attempt in range(1, ATTEMPTS + 1):
            swarm_lab("up")  # idempotent: a healthy lab is left as it is
            try:
                return await self._trial(f"{tag}{attempt}")
            except (docker.errors.DockerException, requests.exceptions.ConnectionError, RuntimeError) as exc:
                if attempt == ATTEMPTS:
                    raise
                say(f"  ! swarm trial failed ({str(exc)[:200]}); the lab may have gone away: again")
        raise AssertionError("unreachable")

    async def _trial(self, tag: str) -> Trial:
        args, name = self.args, f"{PREFIX}sw-{tag}"
        health = [
            "--health-cmd", "wget -q -O /dev/null http://127.0.0.1/", f"--health-interval={args.interval}s",
            f"--health-retries={args.fall}", "--health-timeout=2s", "--health-start-period=0s",
        ]
        created = self._docker(
            "service", "create", "--detach", "--name", name, "--replicas", str(args.replicas),
            "--constraint", f"node.hostname=={LAB_NODE}", "--endpoint-mode", "dnsrr",
            "--publish", "mode=host,target=80", "--update-parallelism", str(args.parallelism),
            "--update-delay", "0s", "--update-order", args.order, "--stop-grace-period", "10s", *health, OLD_IMAGE,
        )
        if created.returncode != 0:
            raise RuntimeError(f"docker service create failed: {created.stderr}")
        try:
            await eventually(lambda: self._converged(name, OLD_IMAGE), 180, f"{name}: {args.replicas} tasks running")
            with TaskLoad(self, name, threads=args.threads, max_seconds=TRIAL_TIMEOUT + 60) as load:
                await eventually(lambda: load.result.ok >= 20, 30, "the load to get going")
                started = time.monotonic()
                cli = await asyncio.create_subprocess_exec(
                    "docker", "service", "update", "--image", NEW_IMAGE, name,
                    env={**os.environ, "DOCKER_HOST": self.host},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )
                seconds: float | None = None
                with contextlib.suppress(RuntimeError):
                    await eventually(lambda: self._converged(name, NEW_IMAGE), TRIAL_TIMEOUT, f"{name} on {NEW_IMAGE}")
                    seconds = time.monotonic() - started
                extra: dict[str, float] = {}
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(cli.wait(), TRIAL_TIMEOUT)
                    extra["cli"] = time.monotonic() - started
                await asyncio.sleep(1.0)
            return Trial(seconds, load.result.ok, load.result.failed, list(load.result.errors), extra)
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                self._docker("service", "rm", name, timeout=60)
            label = {"label": f"com.docker.swarm.service.name={name}"}
            with contextlib.suppress(RuntimeError, docker.errors.DockerException, requests.exceptions.ConnectionError):
                await eventually(lambda: not self.client.containers.list(all=True, filters=label), 60, f"{name} gone")

    def running_ports(self, name: str) -> list[int]:
        """The host ports of the service's tasks swarm wants running and reports running."""
        ports = []
        for task in self.client.api.tasks(filters={"service": name, "desired-state": "running"}):
            if task["Status"]["State"] == "running":
                published = (task["Status"].get("PortStatus") or {}).get("Ports") or []
                ports += [p["PublishedPort"] for p in published[:1] if p.get("PublishedPort")]
        return ports


class TaskLoad(SteadyLoad):
    """SteadyLoad spread over a swarm service's running tasks, the way a client of a `dnsrr` service
    does it (the lab's kernel has no IPVS, so swarm's routing mesh and VIPs do not work there): each
    request goes, on a new connection, to the next task swarm lists as running (desired and actual),
    the list refreshed every POLL seconds."""

    def __init__(self, case: SwarmCase, name: str, threads: int, max_seconds: float) -> None:
        super().__init__(case.address, 0, threads=threads, max_seconds=max_seconds)
        self.case, self.name = case, name
        self.ports: list[int] = case.running_ports(name)
        self._turn = 0
        self._refresher = threading.Thread(target=self._refresh, daemon=True)

    def _refresh(self) -> None:
        while not self._stop.wait(POLL) and time.monotonic() < self.deadline:
            with contextlib.suppress(Exception):  # a slow answer of the manager: keep the last list
                self.ports = self.case.running_ports(self.name)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            ports = self.ports
            if not ports:
                self._count(None, "no task running")
                time.sleep(0.005)
                continue
            with self._lock:
                self._turn += 1
                port = ports[self._turn % len(ports)]
            try:
                connection = http.client.HTTPConnection(self.host, port, timeout=10)
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read().decode()
                connection.close()
                self._count(body, None if response.status == 200 else f"status {response.status}")
            except Exception as exc:  # every failure counts
                self._count(None, repr(exc))
            time.sleep(0.005)

    def __enter__(self) -> TaskLoad:
        self._refresher.start()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._refresher.join(timeout=5)


# -- the run ---------------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = " s") -> str:
    return "—" if value is None else f"{value:.1f}{unit}"


async def run(args: argparse.Namespace) -> None:
    cases: dict[str, HyperserviceCase | SwarmCase] = {}
    hs = HyperserviceCase(args)
    cases["hyperservice"] = hs
    if not args.no_swarm:
        lab = Lab(parse_env(swarm_lab("up")))
        cases["swarm"] = SwarmCase(args, lab)
    trials: dict[str, list[Trial]] = {kind: [] for kind in cases}
    loads: list[float] = []
    run_id = uuid.uuid4().hex[:4]
    try:
        for rep in range(args.repeat):
            order = list(cases)[rep % len(cases):] + list(cases)[: rep % len(cases)]
            for kind in order:
                loads.append(os.getloadavg()[0])
                trial = await cases[kind].trial(f"{run_id}{rep}")
                trials[kind].append(trial)
                cli = f", CLI returned {fmt(trial.extra['cli'])}" if "cli" in trial.extra else ""
                if "highest_slot" in trial.extra:
                    cli = f", highest balancer slot s{trial.extra['highest_slot']:.0f}"
                say(f"  run {rep + 1}/{args.repeat} {kind:<12} {fmt(trial.seconds)}{cli}; requests ok {trial.ok}, "
                    f"failed {trial.failed} {trial.errors[:3] if trial.failed else ''}   [load {loads[-1]:.1f}]")
    finally:
        await hs.close()
    swarm_case = cases.get("swarm")
    report(args, trials, loads, swarm_case.client.version().get("Version", "?") if isinstance(swarm_case, SwarmCase) else "")


def report(args: argparse.Namespace, trials: dict[str, list[Trial]], loads: list[float], lab_version: str) -> None:
    print(f"# Rolling update benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print(f"{args.replicas} replicas rolled from {OLD_IMAGE} to {NEW_IMAGE}, parallelism {args.parallelism}, "
          f"health check every {args.interval} s (rise {args.rise}, fall {args.fall}), steady load of "
          f"{args.threads} threads (a new connection per request); machine: {os.cpu_count()} cores, "
          f"1-min load average {min(loads):.1f}–{max(loads):.1f} (median {statistics.median(loads):.1f}).")
    if "swarm" in trials:
        print(f"swarm: Docker {lab_version} on node {LAB_NODE} of the project's lab "
              f"(scripts/swarm-lab; the service constrained to that node: a single-node swarm), "
              f"--update-order {args.order}, --update-delay 0s, dnsrr (no IPVS in the lab's "
              f"kernel, so no routing mesh): the load goes to the tasks swarm lists as running, refreshed every {POLL} s.")
    print(f"\nMedians of {args.repeat} run(s):\n")
    print("| | time to complete | failed requests | requests ok | runs (s) |")
    print("|---|---:|---:|---:|---|")
    medians: dict[str, float | None] = {}
    for kind, runs in trials.items():
        times = [t.seconds for t in runs if t.seconds is not None]
        medians[kind] = median(times)
        label = kind if kind == "hyperservice" else f"docker service update ({LAB_NODE} of the lab)"
        print(f"| {label} | {fmt(medians[kind])} | {median([float(t.failed) for t in runs]):g} "
              f"(total {sum(t.failed for t in runs)}) | {median([float(t.ok) for t in runs]):g} | "
              f"{', '.join(fmt(t.seconds, '') for t in runs)} |")
    cli = [t.extra["cli"] for t in trials.get("swarm", []) if "cli" in t.extra]
    if cli:
        print(f"\nswarm CLI returned after {fmt(median(cli))} (median; it waits out --update-monitor after the last task)")
    hs_time, swarm_time = medians.get("hyperservice"), medians.get("swarm")
    if hs_time and swarm_time:
        print(f"\nhyperservice / swarm: {hs_time / swarm_time:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=int, default=1, help="health check interval, seconds")
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--fall", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads of steady load")
    parser.add_argument("--order", choices=("start-first", "stop-first"), default="start-first")
    parser.add_argument("--no-swarm", action="store_true", help="hyperservice only")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
