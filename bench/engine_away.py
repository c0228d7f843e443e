"""Benchmark: the engine going away and back, deletes, and a slow log follower (issue 8, points 9, 10, 14).

    python -m bench.engine_away                     # all three parts (~3 minutes)
    python -m bench.engine_away reconnect --repeat 10
    python -m bench.engine_away delete --concurrent 20 --sequential 10
    python -m bench.engine_away follower --seconds 4

- reconnect: an in-process backend talks to the engine through a unix-socket forwarder
  (tests/engine_proxy.py) that is cut (socket file gone, every connection closed, as in a dockerd
  restart) and restored after a random 0.5–2 s; measured: restore → the backend's `engine up`.
- delete: services of one replica whose StopSignal the replica ignores (SIGUSR1: the test image's
  PID 1 traps only TERM/INT/QUIT); measured: how long the DELETE takes to answer, and until every
  object is gone, for N deletes at once and for M deletes one after another (each waiting for the
  previous one to be gone).
- follower: a replica writing ~20,000 lines/s, a `logs?follow=true` client over TCP that reads
  nothing for `--seconds`; measured: growth of this process's RSS, and what the follower held.

Needs the offline test images (tests/images/build.sh). Everything is removed at the end by the
benchmark backend's tenant label.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import httpx
import uvicorn

from backend.api import create_app
from backend.core import Backend
from backend.docker_driver import LABEL_TENANT, LABEL_UID
from backend.settings import Settings
from bench.engine_proxy import EngineProxy

IMAGE = "hyperservice-test/web:1"
LB_IMAGE = "hyperservice-test/haproxy:2.6"


def settings(data_dir: Path) -> Settings:
    pool = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"
    return Settings(data_dir=data_dir, lb_image=LB_IMAGE, address_pool=pool)


def body(name: str, **extra: object) -> dict[str, object]:
    return {"Name": name, "Image": IMAGE, "ServicePort": 80, "Replicas": 1, **extra}


async def until(check, timeout: float, interval: float = 0.01) -> float:
    """Seconds until `check()` (sync or async) is truthy."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError(f"not within {timeout} s: {check}")


async def active(api: httpx.AsyncClient, name: str) -> None:
    async def check() -> bool:
        return (await api.get(f"/services/{name}")).json().get("Status") == "active"

    await until(check, 120, 0.1)


def cleanup(backend: Backend) -> None:
    tenant = backend.tenant
    backend.close()
    client = docker.from_env()
    label = f"{LABEL_TENANT}={tenant}"
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s, min {min(values):.3f} s, max {max(values):.3f} s (n={len(values)})"


async def reconnect(repeat: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hbx-away-"))
    proxy = EngineProxy(work / "engine.sock")
    proxy.start()
    os.environ["DOCKER_HOST"] = proxy.url
    backend = Backend(settings(work / "data"))
    backend.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(backend)), base_url="http://hs") as api:
            for name in ("away-a", "away-b"):
                await api.post("/services/create", json=body(name))
            for name in ("away-a", "away-b"):
                await active(api, name)
            noticed_down, noticed_up = [], []
            for _ in range(repeat):
                proxy.cut()
                noticed_down.append(await until(lambda: backend.reconciler.engine_error, 10))
                await asyncio.sleep(random.uniform(0.5, 2.0))
                proxy.restore()
                noticed_up.append(await until(lambda: backend.reconciler.engine_error is None, 10))
                await asyncio.sleep(1)
            statuses = {s["Name"]: s["Status"] for s in (await api.get("/services")).json()}
        print(f"reconnect: engine gone noticed after {summary(noticed_down)}")
        print(f"reconnect: engine back noticed after {summary(noticed_up)}; statuses after: {statuses}")
    finally:
        del os.environ["DOCKER_HOST"]
        cleanup(backend)
        proxy.close()


async def deletes(concurrent: int, sequential: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hbx-away-"))
    backend = Backend(settings(work / "data"))
    backend.start()
    client = docker.from_env()

    def gone(uid: str) -> bool:
        label = f"{LABEL_UID}={uid}"
        return not client.containers.list(all=True, filters={"label": label}, sparse=True) and not client.networks.list(
            filters={"label": label})

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(backend)), base_url="http://hs",
                                     timeout=120) as api:
            names = [f"del-{i}" for i in range(concurrent + sequential)]
            for name in names:
                await api.post("/services/create", json=body(name, StopSignal="SIGUSR1"))
            for name in names:
                await active(api, name)
            uids = {name: backend.store.get(name).uid for name in names}

            at_once = names[:concurrent]
            start = time.monotonic()

            async def timed_delete(name: str) -> float:
                response = await api.delete(f"/services/{name}")
                assert response.status_code in (202, 204), response.text
                return time.monotonic() - start

            answered = await asyncio.gather(*(timed_delete(name) for name in at_once))
            total = await until(lambda: all(gone(uids[n]) for n in at_once) and not any(
                backend.store.get(n) for n in at_once), 300, 0.05)
            print(f"delete: {concurrent} at once: every DELETE answered within {max(answered):.3f} s; "
                  f"all gone after {total:.1f} s")

            each, answers = [], []
            for name in names[concurrent:]:
                start = time.monotonic()
                await api.delete(f"/services/{name}")
                answers.append(time.monotonic() - start)
                each.append(answers[-1] + await until(lambda n=name: gone(uids[n]) and backend.store.get(n) is None,
                                                      120, 0.05))
            if sequential:
                print(f"delete: {sequential} one after another: DELETE answered in {summary(answers)}; "
                      f"until gone {summary(each)}; total {sum(each):.1f} s")
    finally:
        cleanup(backend)


async def follower(seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="hbx-away-"))
    backend = Backend(settings(work / "data"))
    backend.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await until(lambda: server.started, 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as api:
            spew = ["sh", "-c", "/bin/serve & while true; do seq 1 1000 | sed 's/^/spewed line number /'; sleep 0.05; done"]
            await api.post("/services/create", json=body("spew", Cmd=spew, StopSignal="SIGKILL"))
            await active(api, "spew")
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /services/spew/logs?follow=true&tail=0 HTTP/1.1\r\nHost: bench\r\n\r\n")
        await until(backend.followers.live, 10)
        (live,) = backend.followers.live()
        before = rss()
        await asyncio.sleep(seconds)
        grown = rss() - before
        print(f"follower: a client reading nothing for {seconds:g} s: RSS grew {grown / 2**20:.1f} MiB; the follower "
              f"held {live.pending()} lines and had dropped {live.dropped_total}")
        client.close()
        await until(lambda: not backend.followers.live(), 10)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        cleanup(backend)


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("reconnect", "delete", "follower"), help="one part (default: all)")
    parser.add_argument("--repeat", type=int, default=10, help="reconnect: outages")
    parser.add_argument("--concurrent", type=int, default=20, help="delete: services deleted at once")
    parser.add_argument("--sequential", type=int, default=10, help="delete: services deleted one after another")
    parser.add_argument("--seconds", type=float, default=4.0, help="follower: how long the client reads nothing")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.part in (None, "reconnect"):
        asyncio.run(reconnect(args.repeat))
    if args.part in (None, "delete"):
        asyncio.run(deletes(args.concurrent, args.sequential))
    if args.part in (None, "follower"):
        asyncio.run(follower(args.seconds))


if __name__ == "__main__":
    main()
