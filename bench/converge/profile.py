"""Where hyperservice spends its time (`--profile`): timestamps of the backend's steps in a trial.

`Profile` wraps the driver's Docker calls, the reconciler's syncs and status reports, the store's
writes and the Docker events the reconciler receives (monkeypatched, only for the profile phase);
`SdkFloorCase` replays the backend's Docker calls without the backend, to tell the engine's share
from the backend's; `print_profile` writes the timeline and the step medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import threading

import docker
import docker.errors

from bench.converge.cases import HyperserviceCase
from bench.converge.harness import (
    IMAGE,
    LABEL,
    PREFIX,
    TRIAL_LABEL,
    Prober,
    Timings,
    addresses,
    converge,
    fmt,
    median,
    now,
    remove_all,
    say,
)

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
            return len(containers), addresses(containers)

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
        remove_all(self.client.containers.list(all=True, filters={"label": f"{TRIAL_LABEL}={trial}"}))
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
