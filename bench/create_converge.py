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
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import docker.errors

from bench.converge.cases import HyperserviceCase, RunCase, Swarm, SwarmCase
from bench.converge.harness import (
    IMAGE,
    LABEL,
    PREFIX,
    Prober,
    backend_version,
    fmt,
    has_image,
    median,
    now,
    remove_all,
    say,
)
from bench.converge.profile import print_profile, profile_phase

COLUMNS = [
    ("hs_answer", "hyperservice answering"),
    ("swarm_running", "swarm running"),
    ("swarm_answer", "swarm answering"),
    ("swarm_cli", "swarm CLI converged"),
    ("run_answer", "docker-run floor"),
]


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
        remove_all(client.containers.list(all=True, filters={"label": f"{LABEL}=1"}))
    swarm.leave()
    with contextlib.suppress(Exception):  # containers of swarm tasks linger a moment after service rm
        remove_all(client.containers.list(all=True, filters={"label": f"{LABEL}=1"}))
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
    if not has_image(client, IMAGE):
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
