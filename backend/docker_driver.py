"""The Docker driver: every call the backend makes to the Docker engine goes through here.

It turns a stored service into Docker objects and back: one bridge network per service, its replica
containers (every spec field mapped to a container option), and finds them again by label. Every
object carries labels naming its service, the service instance (uid), its role and the backend
installation that owns it (tenant), so a restarted backend finds everything and two backends on one
engine never touch each other's objects.

The docker SDK is synchronous; callers run it on worker threads, never on an event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import string
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import CancellableStream, Mount

from backend.models import ServiceSpec

log = logging.getLogger(__name__)

LABEL_SERVICE = "io.hyperservice.service"  # the service's name
LABEL_UID = "io.hyperservice.uid"  # the service instance (a re-created name gets a new uid)
LABEL_ROLE = "io.hyperservice.role"  # replica | balancer | network
LABEL_TENANT = "io.hyperservice.tenant"  # the backend installation that owns the object
LABEL_REVISION = "io.hyperservice.revision"  # which image revision a replica runs

ROLE_REPLICA = "replica"
ROLE_BALANCER = "balancer"
ROLE_NETWORK = "network"

STOP_TIMEOUT = 10  # seconds a replica gets to exit after its StopSignal before it is killed
TEARDOWN_STOP_TIMEOUT = 2  # ... when its service is deleted (nothing waits for it any more)
PING_TIMEOUT = 2.0  # seconds a ping may take: the engine watcher must not hang on a dead host


class EngineUnavailable(Exception):
    """The Docker engine cannot be reached."""


class ImageUnavailable(Exception):
    """The image is not on the engine and could not be pulled."""


@dataclass(frozen=True)
class ServiceRef:
    """What the driver needs to know to find a service's objects."""

    name: str
    uid: str


def _suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


def network_name(ref: ServiceRef) -> str:
    return f"hs-{ref.name}-{ref.uid[:8]}"


class DockerDriver:
    """Talks to one Docker engine on behalf of one backend installation (`tenant`)."""

    def __init__(self, tenant: str, client: docker.DockerClient | None = None) -> None:
        self.tenant = tenant
        self._client = client
        self._client_lock = threading.Lock()
        self._ncpu: int | None = None

    # -- the engine ---------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env(timeout=60)
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(describe_engine_error(exc)) from exc
            return self._client

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers (within PING_TIMEOUT)."""
        try:
            api = self.client.api
            # The client keeps working across an engine restart (its pool reconnects), so it is
            # kept; only the ping gets a short timeout, the SDK's own ping would wait 60 s.
            response = api.get(f"{api.base_url}/_ping", timeout=PING_TIMEOUT)
            response.raise_for_status()
        except EngineUnavailable:
            raise
        except Exception as exc:  # requests' ConnectionError, an HTTP error while it starts, ...
            raise EngineUnavailable(describe_engine_error(exc)) from exc

    def ncpu(self) -> int:
        if self._ncpu is None:
            self._ncpu = int(self.client.info().get("NCPU") or 1)
        return self._ncpu

    def labels(self, ref: ServiceRef, role: str, **extra: str) -> dict[str, str]:
        return {LABEL_SERVICE: ref.name, LABEL_UID: ref.uid, LABEL_ROLE: role, LABEL_TENANT: self.tenant, **extra}

    # -- images -------------------------------------------------------------------------------

    def has_image(self, reference: str) -> bool:
        try:
            self.client.images.get(reference)
            return True
        except docker.errors.ImageNotFound:
            return False

    def ensure_image(self, reference: str) -> str:
        """The image's ID, pulling it first when the engine does not have it."""
        try:
            return self.client.images.get(reference).id
        except docker.errors.ImageNotFound:
            pass
        log.info("pulling image %s", reference)
        try:
            return self.client.images.pull(reference).id
        except docker.errors.APIError as exc:
            raise ImageUnavailable(f"image {reference} not found ({_short(exc)})") from exc

    # -- the network ----------------------------------------------------------------------------

    def find_network(self, ref: ServiceRef) -> Network | None:
        found = self.client.networks.list(filters={"label": [f"{LABEL_UID}={ref.uid}", f"{LABEL_TENANT}={self.tenant}"]})
        return found[0] if found else None

    def ensure_network(self, ref: ServiceRef) -> Network:
        network = self.find_network(ref)
        if network is not None:
            return network
        try:
            return self.client.networks.create(
                network_name(ref), driver="bridge", check_duplicate=True, labels=self.labels(ref, ROLE_NETWORK)
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # created by a concurrent step in the meantime
                return self.client.networks.get(network_name(ref))
            raise

    # -- replicas -------------------------------------------------------------------------------

    def containers(self, ref: ServiceRef, role: str | None = None) -> list[Container]:
        """The service's containers in any state (oldest first)."""
        labels = [f"{LABEL_UID}={ref.uid}", f"{LABEL_TENANT}={self.tenant}"]
        if role:
            labels.append(f"{LABEL_ROLE}={role}")
        found = self.client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
        return sorted(found, key=lambda c: c.attrs.get("Created", ""))

    def all_replicas(self) -> list[Container]:
        """Every replica of this installation, inspected in parallel (the SDK inspects one by one)."""
        labels = [f"{LABEL_TENANT}={self.tenant}", f"{LABEL_ROLE}={ROLE_REPLICA}"]
        sparse = self.client.containers.list(all=True, filters={"label": labels}, sparse=True)
        if not sparse:
            return []

        def inspected(container: Container) -> Container | None:
            try:
                container.reload()
                return container
            except docker.errors.NotFound:
                return None

        with ThreadPoolExecutor(max_workers=min(8, len(sparse))) as pool:
            return [c for c in pool.map(inspected, sparse) if c is not None]

    def create_replica(
        self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: str, extra_labels: dict[str, str]
    ) -> Container:
        """Create and start one replica with every field of the spec mapped to a container option."""
        name = f"{ref.name}-{_suffix()}"
        cpus = min(spec.cpus(), self.ncpu())  # the engine refuses more CPUs than it has
        container = self.client.containers.create(
            image=spec.Image,
            name=name,
            hostname=name,
            entrypoint=spec.Entrypoint,
            command=spec.Cmd,
            environment=spec.Env,
            working_dir=spec.WorkingDir or None,
            tty=spec.Tty,
            stdin_open=spec.Stdin,
            stop_signal=spec.StopSignal,
            labels={
                **(spec.Labels or {}),
                **self.labels(ref, ROLE_REPLICA, **{LABEL_REVISION: str(revision)}, **extra_labels),
            },
            mounts=[_mount(volume) for volume in spec.Volumes or []],
            mem_limit=spec.memory_bytes(),
            memswap_limit=spec.memory_bytes(),  # no swap on top: the size is the limit
            nano_cpus=cpus * 1_000_000_000,
            network=network,
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )
        try:
            container.start()
            container.reload()  # its address on the service network
        except docker.errors.APIError:
            container.remove(force=True)
            raise
        return container

    def remove(self, container: Container, graceful: bool = True, stop_timeout: int = STOP_TIMEOUT) -> None:
        """Stop (StopSignal, then kill after `stop_timeout` s) and remove; gone already is fine."""
        try:
            if graceful and container.status in ("running", "restarting"):
                container.stop(timeout=stop_timeout)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc):
                raise

    def remove_many(self, containers: list[Container], graceful: bool = True, stop_timeout: int = STOP_TIMEOUT) -> None:
        """Remove all at once (each waits for its own stop, not for the others')."""
        if not containers:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
            for future in [pool.submit(self.remove, c, graceful, stop_timeout) for c in containers]:
                future.result()

    def remove_network(self, ref: ServiceRef) -> None:
        network = self.find_network(ref)
        if network is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()

    # -- housekeeping ---------------------------------------------------------------------------

    def owned_uids(self) -> dict[str, str]:
        """uid → service name of every object this installation owns on the engine."""
        owned: dict[str, str] = {}
        tenant = f"{LABEL_TENANT}={self.tenant}"
        for container in self.client.containers.list(all=True, filters={"label": tenant}, ignore_removed=True):
            labels = container.labels
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        for network in self.client.networks.list(filters={"label": tenant}):
            labels = network.attrs.get("Labels") or {}
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        owned.pop("", None)
        return owned

    def events(self) -> docker.types.daemon.CancellableStream:
        """Docker's event stream, filtered to this installation's objects (blocking generator)."""
        return self.client.events(decode=True, filters={"label": f"{LABEL_TENANT}={self.tenant}"})

    def logs(self, container_id: str, tail: int | None, follow: bool = False) -> Iterator[bytes] | bytes:
        container = self.client.containers.get(container_id)
        return container.logs(timestamps=True, tail=tail if tail is not None else "all", follow=follow, stream=follow)


    def stats(self, container_id: str) -> CancellableStream[dict[str, Any]]:
        """Docker's stats stream of one container: a decoded sample about every second.

        Wrapped like the SDK wraps log streams, so another thread can close it at once (the SDK's
        own `stats()` is a bare generator, which only ends with the next sample): hence the SDK's
        private helpers.
        """
        api: Any = self.client.api
        response = api._get(api._url("/containers/{0}/stats", container_id), params={"stream": True}, stream=True)
        api._raise_for_status(response)
        return CancellableStream(api._stream_helper(response, decode=True), response)


def _mount(volume: str) -> Mount:
    parts = volume.split(":")
    return Mount(target=parts[1], source=parts[0], type="volume", read_only=len(parts) == 3 and parts[2] == "ro")


def _short(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc).strip().splitlines()[0][:200]


def is_engine_unreachable(exc: BaseException) -> bool:
    """True when `exc` says the engine could not be reached or the connection to it broke (as
    opposed to the engine answering with an error)."""
    if isinstance(exc, EngineUnavailable | requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return True
    if isinstance(exc, urllib3.exceptions.ProtocolError | http.client.RemoteDisconnected | ConnectionError):
        return True
    if isinstance(exc, docker.errors.DockerException) and not isinstance(exc, docker.errors.APIError):
        return "Error while fetching server API version" in str(exc)
    return False


@contextlib.contextmanager
def engine_calls() -> Iterator[None]:
    """Turn "the engine cannot be reached" into EngineUnavailable (naming DOCKER_HOST) whatever
    part of the SDK noticed it; other errors pass through unchanged."""
    try:
        yield
    except EngineUnavailable:
        raise
    except Exception as exc:
        if is_engine_unreachable(exc):
            raise EngineUnavailable(describe_engine_error(exc)) from exc
        raise


def describe_engine_error(exc: BaseException) -> str:
    """Say which engine was tried, what went wrong and how to fix it, in one line."""
    host = os.environ.get("DOCKER_HOST")
    where = f"{host} (DOCKER_HOST)" if host else "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)"
    return (
        f"Docker engine not reachable at {where}: {_engine_cause(exc)}. "
        "Start dockerd, or set DOCKER_HOST to a reachable engine."
    )


def _engine_cause(exc: BaseException) -> str:
    """The reason in words, not the SDK's nested exception reprs."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for error in seen:
        for arg in (error, *getattr(error, "args", ())):
            if isinstance(arg, FileNotFoundError):
                return "no socket there (is dockerd running?)"
            if isinstance(arg, ConnectionRefusedError):
                return "connection refused"
            if isinstance(arg, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
                return "the engine closed the connection"
            if isinstance(arg, requests.exceptions.Timeout | TimeoutError):
                return "no answer in time"
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:160]


def replica_address(container: Container, port: int) -> str:
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    for settings in networks.values():
        if settings.get("IPAddress"):
            return f"{settings['IPAddress']}:{port}"
    return ""
