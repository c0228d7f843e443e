"""The Docker driver: every call the backend makes to the Docker engine goes through here.

It turns a stored service into Docker objects and back: one bridge network per service, its replica
containers (every spec field mapped to a container option), and finds them again by label. Every
object carries labels naming its service, the service instance (uid), its role and the backend
installation that owns it (tenant), so a restarted backend finds everything and two backends on one
engine never touch each other's objects.

Named volumes live in the installation's namespace too: `data` of service `db` is the engine's volume
`hs-<tenant[:8]>_db_data`, labelled with tenant, service and the name as given; a volume of that name
that this installation did not create for that service is never mounted. Every replica gets the same
hardening: a pids limit, rotated json-file logs and no-new-privileges.

A missing image is pulled with Docker's streaming pull: `PullTracker` adds the layers' download
progress up to bytes done / known total and layers pulled, reported to the caller at most every
`PULL_PROGRESS_EVERY` seconds (the reconciler shows it as the service's status message).

The docker SDK is synchronous; callers run it on worker threads, never on an event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, overload

import docker
import docker.errors
import docker.utils
import requests
import urllib3.exceptions
from docker.models.containers import Container
from docker.models.networks import Network
from docker.models.resource import Model
from docker.models.volumes import Volume
from docker.types import CancellableStream, LogConfig, Mount

from backend.models import ServiceSpec

log = logging.getLogger(__name__)

LABEL_SERVICE = "io.hyperservice.service"  # the service's name
LABEL_UID = "io.hyperservice.uid"  # the service instance (a re-created name gets a new uid)
LABEL_ROLE = "io.hyperservice.role"  # replica | balancer | network
LABEL_TENANT = "io.hyperservice.tenant"  # the backend installation that owns the object
LABEL_REVISION = "io.hyperservice.revision"  # which image revision a replica runs
LABEL_VOLUME = "io.hyperservice.volume"  # a volume's name as the service's Volumes give it

ROLE_REPLICA = "replica"
ROLE_BALANCER = "balancer"
ROLE_NETWORK = "network"
ROLE_VOLUME = "volume"

STOP_TIMEOUT = 10  # seconds a replica gets to exit after its StopSignal before it is killed
TEARDOWN_STOP_TIMEOUT = 2  # ... when its service is deleted (nothing waits for it any more)
PING_TIMEOUT = 2.0  # seconds a ping may take: the engine watcher must not hang on a dead host
PULL_PROGRESS_EVERY = 0.5  # seconds between two progress reports of one pull
MAX_IMAGE_TAGS = 50  # the most image references one listing answers


_T_co = TypeVar("_T_co", covariant=True)


class ClosableStream(Protocol[_T_co]):
    """A blocking stream from the engine that another thread may close to end it."""

    def __iter__(self) -> Iterator[_T_co]: ...

    def close(self) -> None: ...


class EngineUnavailable(Exception):
    """The Docker engine cannot be reached."""


class SubnetTaken(Exception):
    """The engine already has a network overlapping the subnet asked for."""


class ImageUnavailable(Exception):
    """The image is not on the engine and could not be pulled."""


class VolumeNotOurs(Exception):
    """A volume with the scoped name exists but was not created by this installation for this service."""


class VolumeInUse(Exception):
    """A volume to remove is still mounted by a container."""


@dataclass(frozen=True)
class PullProgress:
    """How far a pull is: bytes downloaded of the layers whose size is known so far, and layers
    pulled (downloaded and extracted, or on the engine already) of the layers seen so far."""

    reference: str
    done: int = 0
    total: int = 0
    layers: int = 0
    layers_done: int = 0

    @property
    def percent(self) -> int | None:
        """Whole percent of the known bytes (100 only when all of them are in); None: none known."""
        if self.total <= 0:
            return None
        return min(100, self.done * 100 // self.total)

    def describe(self) -> str:
        """"Pulling 39% (3.1 MB of 7.9 MB), 2 of 3 layers of image web:1" ("Pulling image web:1" until
        the engine says what the layers are). The figures come first: a narrow column keeps them."""
        if not self.layers:
            return f"Pulling image {self.reference}"
        size = f"{self.percent}% ({format_size(self.done)} of {format_size(self.total)}), " if self.total else ""
        return f"Pulling {size}{self.layers_done} of {self.layers} layers of image {self.reference}"


@dataclass
class _Layer:
    current: int = 0  # bytes downloaded
    total: int = 0  # the download's size (0: not known yet)
    complete: bool = False  # downloaded and extracted, or on the engine already


@dataclass
class PullTracker:
    """Adds up the per-layer lines of Docker's pull stream ({"status", "id", "progressDetail"})."""

    reference: str
    layers: dict[str, _Layer] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one line of the stream; answer whether the progress changed."""
        layer_id, status = event.get("id"), str(event.get("status") or "")
        if not layer_id or status.startswith("Pulling from"):  # "Digest: ...", "Status: ..." or the tag's line
            return False
        before = self.progress()
        layer = self.layers.setdefault(str(layer_id), _Layer())
        detail = event.get("progressDetail") or {}
        if status == "Downloading":
            layer.total = int(detail.get("total") or layer.total)
            layer.current = max(layer.current, int(detail.get("current") or 0))
        elif status in ("Verifying Checksum", "Download complete", "Extracting", "Pull complete"):
            if status == "Extracting" and not layer.total:  # extracting counts the downloaded bytes again
                layer.total = int(detail.get("total") or 0)
            layer.current = max(layer.current, layer.total)
            layer.complete = layer.complete or status == "Pull complete"
        elif status == "Already exists":
            layer.complete = True
        return self.progress() != before

    def progress(self) -> PullProgress:
        layers = self.layers.values()
        return PullProgress(
            self.reference,
            done=sum(min(layer.current, layer.total) if layer.total else layer.current for layer in layers),
            total=sum(layer.total for layer in layers),
            layers=len(self.layers),
            layers_done=sum(1 for layer in layers if layer.complete),
        )


def format_size(size: int) -> str:
    """Bytes as Docker says them: 512 B, 3.1 MB (decimal units)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ReplicaLimits:
    """What every replica is limited to, whatever its spec says (see Settings for each field)."""

    pids: int = 1024
    log_max_size: str = "10m"
    log_max_file: int = 3


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


def volume_name(tenant: str, service: str, name: str) -> str:
    """The engine's name of a service's volume. '_' separates the parts: neither the tenant (hex) nor a
    service name (a DNS label) contains one, so two (service, volume) pairs never share a name."""
    return f"hs-{tenant[:8]}_{service}_{name}"


class DockerDriver:
    """Talks to one Docker engine on behalf of one backend installation (`tenant`)."""

    def __init__(
        self, tenant: str, client: docker.DockerClient | None = None, limits: ReplicaLimits | None = None
    ) -> None:
        self.tenant = tenant
        self.limits = limits or ReplicaLimits()
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

    def ensure_image(
        self,
        reference: str,
        on_progress: Callable[[PullProgress], None] | None = None,
        every: float = PULL_PROGRESS_EVERY,
    ) -> str:
        """The image's ID, pulling it first when the engine does not have it.

        While pulling, `on_progress` (called on this thread) hears how far it is: at once (nothing
        known yet), then at most every `every` seconds as the layers come in, and once at the end.
        """
        try:
            return object_id(self.client.images.get(reference))
        except docker.errors.ImageNotFound:
            pass
        log.info("pulling image %s", reference)
        repository, tag = docker.utils.parse_repository_tag(reference)
        tracker = PullTracker(reference)
        if on_progress is not None:
            on_progress(tracker.progress())
        last_report = time.monotonic()
        try:
            # No tag would pull every tag of the repository; a digest goes in `tag` as well.
            for event in self.client.api.pull(repository, tag or "latest", stream=True, decode=True):
                if event.get("error"):  # failures after the stream began come as a line of it
                    problem = str(event["error"]).strip().splitlines()[0][:200]
                    raise ImageUnavailable(f"image {reference} not found ({problem})")
                if tracker.feed(event) and on_progress is not None and time.monotonic() - last_report >= every:
                    last_report = time.monotonic()
                    on_progress(tracker.progress())
            image = self.client.images.get(reference)
        except docker.errors.APIError as exc:
            raise ImageUnavailable(f"image {reference} not found ({_short(exc)})") from exc
        if on_progress is not None:
            on_progress(tracker.progress())
        return object_id(image)

    def image_tags(self, prefix: str = "", limit: int = MAX_IMAGE_TAGS) -> list[str]:
        """The engine's image references (repository:tag) starting with `prefix`, sorted, at most `limit`."""
        tags = {
            tag
            for image in self.client.api.images()
            for tag in image.get("RepoTags") or []
            if tag.startswith(prefix) and tag != "<none>:<none>"
        }
        return sorted(tags)[:limit]

    # -- the network ----------------------------------------------------------------------------

    def find_network(self, ref: ServiceRef) -> Network | None:
        found = self.client.networks.list(filters={"label": [f"{LABEL_UID}={ref.uid}", f"{LABEL_TENANT}={self.tenant}"]})
        return found[0] if found else None

    def ensure_network(self, ref: ServiceRef, subnet: str | None = None) -> Network:
        """The service's bridge network, created on `subnet` (None: Docker picks from its defaults).

        Raises SubnetTaken when the engine already has a network overlapping `subnet`.
        """
        network = self.find_network(ref)
        if network is not None:
            return network
        ipam = None
        if subnet is not None:
            gateway = str(next(ipaddress.ip_network(subnet).hosts()))
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
        try:
            return self.client.networks.create(
                network_name(ref),
                driver="bridge",
                check_duplicate=True,
                labels=self.labels(ref, ROLE_NETWORK),
                ipam=ipam,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # created by a concurrent step in the meantime
                return self.client.networks.get(network_name(ref))
            if subnet is not None and "overlap" in str(exc.explanation or exc).lower():
                raise SubnetTaken(subnet) from exc
            raise

    def used_subnets(self) -> list[str]:
        """Every IPv4 subnet of every network on the engine (anyone's), to allocate around."""
        subnets = []
        for network in self.client.api.networks():
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet") and ":" not in config["Subnet"]:
                    subnets.append(config["Subnet"])
        return subnets

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
            mounts=[self._mount(ref.name, volume) for volume in spec.Volumes or []],
            mem_limit=spec.memory_bytes(),
            memswap_limit=spec.memory_bytes(),  # no swap on top: the size is the limit
            nano_cpus=cpus * 1_000_000_000,
            pids_limit=self.limits.pids,
            log_config=LogConfig(
                type=LogConfig.types.JSON,
                config={"max-size": self.limits.log_max_size, "max-file": str(self.limits.log_max_file)},
            ),
            security_opt=["no-new-privileges:true"],
            network=network,
            # the stubs allow only "always" / "on-failure"; the engine takes "unless-stopped" too
            restart_policy={"Name": "unless-stopped"},  # type: ignore[arg-type]
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

    # -- volumes --------------------------------------------------------------------------------

    def _mount(self, service: str, volume: str) -> Mount:
        parts = volume.split(":")
        return Mount(
            target=parts[1],
            source=self.ensure_volume(service, parts[0]),
            type="volume",
            read_only=len(parts) == 3 and parts[2] == "ro",
        )

    def ensure_volume(self, service: str, name: str) -> str:
        """The engine's name of the service's volume `name`, created (labelled) on first use."""
        engine_name = volume_name(self.tenant, service, name)
        try:
            volume = self.client.volumes.get(engine_name)
        except docker.errors.NotFound:
            labels = {LABEL_TENANT: self.tenant, LABEL_SERVICE: service, LABEL_ROLE: ROLE_VOLUME, LABEL_VOLUME: name}
            # A concurrent create of the same name (replicas start in parallel) answers the existing volume.
            volume = self.client.volumes.create(name=engine_name, driver="local", labels=labels)
        labels = volume.attrs.get("Labels") or {}
        if (labels.get(LABEL_TENANT), labels.get(LABEL_SERVICE), labels.get(LABEL_VOLUME)) != (self.tenant, service, name):
            raise VolumeNotOurs(
                f"volume {engine_name} exists on the engine but was not created by this installation for "
                f"service {service}'s volume {name}; it is not mounted (remove or rename it on the engine)"
            )
        return engine_name

    def service_volumes(self, service: str) -> list[Volume]:
        """The volumes this installation created for the service (of any of its instances)."""
        labels = [f"{LABEL_TENANT}={self.tenant}", f"{LABEL_SERVICE}={service}", f"{LABEL_ROLE}={ROLE_VOLUME}"]
        return self.client.volumes.list(filters={"label": labels})

    def volume_users(self, volume: Volume) -> list[Container]:
        """The containers (any state) that mount the volume."""
        return self.client.containers.list(all=True, filters={"volume": volume.name}, ignore_removed=True)

    def remove_service_volumes(self, service: str) -> None:
        """Remove the service's volumes and their data; VolumeInUse if a container still mounts one."""
        for volume in self.service_volumes(service):
            try:
                volume.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise VolumeInUse(f"volume {volume_label(volume)} is still in use: {_short(exc)}") from exc
                raise

    # -- housekeeping ---------------------------------------------------------------------------

    def owned_uids(self) -> dict[str, str]:
        """uid → service name of every object this installation owns on the engine."""
        owned: dict[str, str] = {}
        tenant = f"{LABEL_TENANT}={self.tenant}"
        for item in self.client.api.containers(all=True, filters={"label": tenant}):  # the labels: no inspect
            labels = item.get("Labels") or {}
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        for network in self.client.networks.list(filters={"label": tenant}):
            labels = network.attrs.get("Labels") or {}
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        owned.pop("", None)
        return owned

    def events(self) -> CancellableStream[dict[str, Any]]:
        """Docker's event stream, filtered to this installation's objects (blocking generator)."""
        return self.client.events(decode=True, filters={"label": f"{LABEL_TENANT}={self.tenant}"})

    @overload
    def logs(self, container_id: str, tail: int | None, follow: Literal[False] = False) -> bytes: ...

    @overload
    def logs(self, container_id: str, tail: int | None, follow: Literal[True]) -> CancellableStream[bytes]: ...

    def logs(self, container_id: str, tail: int | None, follow: bool = False) -> CancellableStream[bytes] | bytes:
        """A replica's log with timestamps: all of it so far, or (follow) a stream of what comes."""
        container = self.client.containers.get(container_id)
        lines: Literal["all"] | int = tail if tail is not None else "all"
        if follow:
            return container.logs(timestamps=True, tail=lines, follow=True, stream=True)
        return container.logs(timestamps=True, tail=lines, follow=False, stream=False)

    def oom_killed(self, container_id: str) -> bool:
        """Whether the container's last exit was the kernel's OOM killer (False when it is gone)."""
        try:
            state = self.client.api.inspect_container(container_id).get("State") or {}
        except docker.errors.NotFound:
            return False
        return bool(state.get("OOMKilled"))

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


def object_id(obj: Model) -> str:
    """The id of an object the engine listed or created. Always set there: the stubs allow None
    only because a bare Model can be built without attributes."""
    return obj.id or ""


def object_name(obj: Container | Network) -> str:
    """The name of a container or network the engine listed or created (always set there)."""
    return obj.name or ""


def volume_label(volume: Volume) -> str:
    """A volume as a person knows it: 'data (hs-1a2b3c4d_db_data)'."""
    given = (volume.attrs.get("Labels") or {}).get(LABEL_VOLUME, "")
    return f"{given} ({volume.name})" if given else volume.name


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
