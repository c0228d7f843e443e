"""Benchmark: from "create a service of N replicas" to the service's own address answering.

hyperservice (an in-process backend on the local Docker engine, reached through httpx's ASGI transport
as the console reaches it) is measured side by side, in the same run, with the floor: N plain
`docker run -d` of the same image, in parallel, until all N answer; and the same N runs on a
user-defined bridge network made for them first (network create included): what any service with a
network of its own (the isolation hyperservice keeps) costs the engine before a balancer or a check.

For hyperservice the clock starts just before the POST; the service address (IP:ServicePort, through
its balancer) is polled every 20 ms until it answers HTTP 200 ("answers"), and the Status until it reads
`active`. Cases are interleaved within each repetition; the table shows medians (and min-max).

Run from the repository root (needs the offline test images, see tests/images/build.sh):

    python -m bench.front_answer                      # N = 1, 3; 3 repetitions (~2 minutes)
    python -m bench.front_answer --n 1,3,10 --repeat 5
    python -m bench.front_answer --code /path/to/tree # measure another checkout's backend (before/after)

Everything it creates carries the label `hbx-bench-front=1` or the benchmark backend's tenant label,
and is removed at the end. Requests go only to 127.x addresses and to the containers it made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

IMAGE = "hyperservice-test/web:1"
LB_IMAGE = "hyperservice-test/haproxy:2.6"
LABEL = "hbx-bench-front"
TRIAL_TIMEOUT = 60.0
POLL = 0.02


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,3", help="replica counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                        help="the tree whose backend/ is measured")
    return parser.parse_args()


def answers(host: str, port: int) -> bool:
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=0.5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


async def hyperservice_trial(api, n: int, tag: str) -> dict[str, float]:
    name = f"bench-{tag}"
    body = {"Name": name, "Image": IMAGE, "ServicePort": 80, "Replicas": n, "Protocol": "http"}
    t0 = time.perf_counter()
    response = await api.post("/services/create", json=body)
    response.raise_for_status()
    ip = response.json()["IP"]
    result: dict[str, float] = {"returned": time.perf_counter() - t0}
    deadline = t0 + TRIAL_TIMEOUT
    while time.perf_counter() < deadline and ("answer" not in result or "active" not in result):
        if "answer" not in result and await asyncio.to_thread(answers, ip, 80):
            result["answer"] = time.perf_counter() - t0
        if "active" not in result and (await api.get(f"/services/{name}")).json()["Status"] == "active":
            result["active"] = time.perf_counter() - t0
        await asyncio.sleep(POLL)
    await api.delete(f"/services/{name}")
    while (await api.get(f"/services/{name}")).status_code != 404 and time.perf_counter() < deadline + 30:
        await asyncio.sleep(0.2)
    return result


def floor_trial(client, n: int, isolated: bool = False) -> dict[str, float]:
    """N `docker run`s in parallel until all N answer: on the default bridge (the floor), or, `isolated`,
    on a user-defined bridge network made for them first (what any service with a network of its own
    costs the engine, before a balancer or a health check)."""
    t0 = time.perf_counter()
    containers: list = []
    lock = threading.Lock()
    network = None
    if isolated:
        network = client.networks.create(f"hbx-bench-front-{random.randrange(1 << 30):x}", driver="bridge",
                                         labels={LABEL: "1"})

    def run() -> None:
        options = {"network": network.name} if network is not None else {}
        container = client.containers.run(IMAGE, detach=True, labels={LABEL: "1"}, **options)
        with lock:
            containers.append(container)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered: set[str] = set()
    result: dict[str, float] = {}
    try:
        while time.perf_counter() < t0 + TRIAL_TIMEOUT and len(answered) < n:
            for container in containers:
                if container.id in answered:
                    continue
                container.reload()
                networks = container.attrs["NetworkSettings"]["Networks"]
                ip = next((settings["IPAddress"] for settings in networks.values() if settings["IPAddress"]), "")
                if ip and answers(ip, 80):
                    answered.add(container.id)
            time.sleep(POLL)
        if len(answered) == n:
            result["answer"] = time.perf_counter() - t0
    finally:
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        if network is not None:
            with contextlib.suppress(Exception):
                network.remove()
    return result


def summary(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


async def main() -> None:
    args = parse_args()
    sys.path.insert(0, args.code)
    import docker
    import httpx

    from backend.api import create_app
    from backend.core import Backend
    from backend.docker_driver import LABEL_TENANT
    from backend.settings import Settings

    print(f"measuring the backend of {args.code}", file=sys.stderr)
    client = docker.from_env()
    for image in (IMAGE, LB_IMAGE):
        client.images.get(image)
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="hbx-bench-front-")), lb_image=LB_IMAGE,
        address_pool=f"127.78.{random.randint(0, 255)}.0/24",
    )
    backend = Backend(settings)
    backend.start()
    counts = [int(n) for n in args.n.split(",")]
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        transport = httpx.ASGITransport(app=create_app(backend, None))
        async with httpx.AsyncClient(transport=transport, base_url="http://hyperservice", timeout=60) as api:
            for repetition in range(args.repeat):
                for n in counts:
                    for kind in ("hyperservice", "floor", "isolated"):
                        if kind == "hyperservice":
                            trial = await hyperservice_trial(api, n, f"{n}-{repetition}")
                        else:
                            trial = await asyncio.to_thread(floor_trial, client, n, kind == "isolated")
                        print(f"{kind} N={n} #{repetition + 1}: "
                              + ", ".join(f"{k} {v:.2f} s" for k, v in trial.items()), file=sys.stderr)
                        for key, value in trial.items():
                            results.setdefault((kind, n), {}).setdefault(key, []).append(value)
    finally:
        backend.close()
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
            container.remove(force=True)
        for network in client.networks.list(filters={"label": f"{LABEL}=1"}):
            network.remove()
        label = f"{LABEL_TENANT}={backend.tenant}"
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
        for network in client.networks.list(filters={"label": label}):
            network.remove()
    print("| N | service address answers | service active | docker-run floor (all N answer) "
          "| the same on a network of their own (network create included) | hs active / floor | hs active / own-network floor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in counts:
        ours, floor = results.get(("hyperservice", n), {}), results.get(("floor", n), {})
        isolated = results.get(("isolated", n), {})
        print(f"| {n} | {summary(ours.get('answer', []))} | {summary(ours.get('active', []))} "
              f"| {summary(floor.get('answer', []))} | {summary(isolated.get('answer', []))} "
              f"| {ratio(ours.get('active', []), floor.get('answer', []))} "
              f"| {ratio(ours.get('active', []), isolated.get('answer', []))} |")


def ratio(ours: list[float], theirs: list[float]) -> str:
    if not ours or not theirs:
        return "—"
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x"


if __name__ == "__main__":
    asyncio.run(main())
