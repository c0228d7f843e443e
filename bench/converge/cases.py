"""What the benchmark measures: one class per way of getting N replicas running and answering.

- `HyperserviceCase`: POST /services/create to an in-process backend (through httpx's ASGI
  transport, as the console reaches it), until the replicas answer, then the service's own address;
- `SwarmCase` on the single-node `Swarm`: `docker service create --detach` (tasks running, then
  containers answering), and without `--detach` (until the CLI says converged);
- `RunCase`, the floor: N plain `docker run -d` in parallel, until all N answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors
import httpx

from backend.api import create_app
from backend.core import Backend
from backend.docker_driver import LABEL_TENANT
from backend.settings import Settings
from bench.converge.harness import (
    ADDRESS_POOL,
    IMAGE,
    LABEL,
    LB_IMAGE,
    PREFIX,
    SWARM_SERVICE_LABEL,
    TRIAL_LABEL,
    TRIAL_TIMEOUT,
    Prober,
    Timings,
    addresses,
    converge,
    docker_cli,
    has_image,
    now,
    remove_all,
    say,
)

if TYPE_CHECKING:
    from bench.converge.profile import Profile


# -- hyperservice --------------------------------------------------------------------------------


class HyperserviceCase:
    def __init__(self, client: docker.DockerClient, resync_seconds: float) -> None:
        self.client = client
        self.data_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
        lb_image = LB_IMAGE if has_image(client, LB_IMAGE) else Settings().lb_image
        self.backend = Backend(
            Settings(
                data_dir=self.data_dir, resync_seconds=resync_seconds, lb_image=lb_image, address_pool=ADDRESS_POOL,
                # The engine is a swarm manager while this bench runs (for the swarm cases): `auto`
                # would pick the swarm engine, whose replicas are not on this host's bridges.
                engine="docker",
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
            return running, addresses(containers)

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
            return len(containers), addresses(containers)

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
        remove_all(containers)
