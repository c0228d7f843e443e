"""The benchmark's harness: the clock, the probes and the polling every case shares.

Every case starts its clock just before its request and calls `converge`, which polls the same way
for all of them (list the replicas' addresses until all N are known, HTTP GET each address that has
not answered yet, every `poll` seconds). Also the names and labels of everything the benchmark
creates, and small helpers (medians, formatting, the docker CLI, removing containers in parallel).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import httpx

IMAGE = "hyperservice-test/web:1"
LB_IMAGE = "hyperservice-test/haproxy:2.6"
ADDRESS_POOL = "127.79.0.0/16"  # away from the default pool other backends on this engine use
PREFIX = "hbx-bench-"
LABEL = "hbx-bench"  # label=1 on every container/service the script creates itself
TRIAL_LABEL = "hbx-bench.trial"
SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"
TRIAL_TIMEOUT = 90.0


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


def addresses(summaries: list[dict]) -> list[str]:
    """IP:80 of each container summary (the first network with an address)."""
    found = []
    for summary in summaries:
        for settings in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if settings.get("IPAddress"):
                found.append(f"{settings['IPAddress']}:80")
                break
    return found


def remove_all(containers: list) -> None:
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
    root = Path(__file__).resolve().parents[2]
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


def has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False
