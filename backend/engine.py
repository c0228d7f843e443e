"""The engine seam: everything the reconciler and the balancers ask of whatever runs the containers.

The reconciler observes, plans (backend.planner, pure) and applies the plan through an `Engine`;
the balancers make, configure and watch their HAProxy containers through it too. Nothing above this
seam calls the Docker SDK.

Engines (backend/engines/):
- `docker`: every replica a container on one Docker engine (`DockerEngine`, today's behaviour);
- `swarm`: every service a Docker Swarm service whose tasks swarm itself places, restarts, reschedules
  and rolls (`SwarmEngine`, backend/engines/swarm.py). Per-replica actions do not fit a scheduler that
  owns its tasks, so a swarm engine is also a `ServiceEngine`: the reconciler hands it the whole
  convergence of a service (declare the swarm services, read back how far swarm got) instead of
  planning replica by replica; the balancer is a swarm service too (the `Balancers` stay idle).

What crosses the seam:
- replicas as engine-neutral `Replica`s (backend.planner): id, name, slot, revision, state, address;
  an engine finds them by the service's `ServiceRef` and its labels;
- a service's network as a Docker `Network` (a bridge on `docker`, an overlay on `swarm`);
- balancers as containers on the engine the backend talks to (the front runs where the backend
  runs, whichever engine places the replicas), so they cross as Docker `Container`s; the engine
  owns every call on them (create, start, exec, copy in, logs, remove).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from docker.models.containers import Container
from docker.models.networks import Network

from backend.docker_driver import STOP_TIMEOUT, ClosableStream, PullProgress, ServiceRef
from backend.models import ServiceSpec
from backend.planner import Outcome, Replica


class LogSource(Protocol):
    """A container's log stream that many can share one thread through a selector: `fileno()` to
    wait on, then `read()` (never blocks) answers the complete lines come in meanwhile and whether the
    stream ended."""

    def fileno(self) -> int: ...

    def read(self) -> tuple[list[bytes], bool]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """What runs a service's containers. Calls block (the SDKs are synchronous): call them from worker
    threads, never an event loop. Unreachable: EngineUnavailable; image missing: ImageUnavailable."""

    tenant: str  # the backend installation whose objects these are (a label on each)

    # -- the engine ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""
        ...

    def events(self) -> ClosableStream[dict[str, Any]]:
        """The engine's events about this installation's objects (blocking; close() ends it)."""
        ...

    # -- images ---------------------------------------------------------------------------------

    def has_image(self, reference: str) -> bool: ...

    def ensure_image(self, reference: str, on_progress: Callable[[PullProgress], None] | None = None) -> str:
        """The image's id, pulled first when missing (may take minutes: the reconciler calls it on
        its pull pool, never on a worker); `on_progress` hears how far the pull is, on this thread."""
        ...

    # -- a service's network ------------------------------------------------------------------------

    def find_network(self, ref: ServiceRef) -> Network | None: ...

    def ensure_network(self, ref: ServiceRef, subnet: str | None = None) -> Network:
        """The service's network on `subnet`; SubnetTaken when the engine has one overlapping it."""
        ...

    def used_subnets(self) -> list[str]: ...

    def remove_network(self, ref: ServiceRef) -> None: ...

    # -- replicas -----------------------------------------------------------------------------------

    def replicas(self, ref: ServiceRef) -> list[Replica]:
        """The service's replicas in any state."""
        ...

    def start_replica(self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: str, slot: str) -> Replica:
        """Create and start one replica of `spec` in balancer slot `slot`, on `network`."""
        ...

    def remove_replicas(self, replicas: Sequence[Replica], graceful: bool = True) -> None:
        """Remove them (graceful: StopSignal first, killed after STOP_TIMEOUT); gone already is fine."""
        ...

    def oom_killed(self, replica_id: str) -> bool:
        """Whether the replica's last exit was the kernel's OOM killer (False when it is gone)."""
        ...

    # -- everything of a service, of the installation -------------------------------------------------

    def remove_containers(self, ref: ServiceRef, graceful: bool = True, stop_timeout: int = STOP_TIMEOUT) -> None:
        """Remove every container of the service (replicas, balancers), whatever its state, all at
        once (graceful: each killed `stop_timeout` s after its StopSignal)."""
        ...

    def remove_service_volumes(self, service: str) -> None: ...

    def owned_uids(self) -> dict[str, str]:
        """uid -> service name of every object of this installation on the engine."""
        ...

    # -- balancer containers ----------------------------------------------------------------------

    def labels(self, ref: ServiceRef, role: str, **extra: str) -> dict[str, str]:
        """The labels that make an object the service's (in `role`), plus `extra`."""
        ...

    def balancers(self, ref: ServiceRef) -> list[Container]:
        """The service's balancer containers in any state (oldest first)."""
        ...

    def create_container(self, image: str, name: str, labels: dict[str, str], **options: Any) -> Container:
        """Create (not start) a container; `options` as the Docker SDK's containers.create takes them."""
        ...

    def start(self, container: Container) -> None:
        """Start it, and refresh what is known of it (its state, its addresses)."""
        ...

    def refresh(self, container: Container) -> None:
        """Read its state from the engine again."""
        ...

    def remove(self, container: Container, graceful: bool = True) -> None: ...

    def copy_in(self, container: Container, path: str, archive: bytes) -> bool:
        """Unpack a tar `archive` at `path` inside it (no bind mounts: a remote engine works too)."""
        ...

    def exec(self, container: Container, argv: list[str]) -> tuple[int, bytes]:
        """Run `argv` inside it; its exit code and output."""
        ...

    def error_log(self, container: Container, lines: int) -> bytes:
        """The last `lines` of its stderr (why it exited)."""
        ...

    def follow_log(self, container: Container, since: float) -> ClosableStream[bytes]:
        """Its stdout from `since` (epoch seconds) on, with timestamps, as it comes (blocking)."""
        ...

    def open_log(self, container: Container, since: float) -> LogSource | None:
        """Its stdout from `since` on, as `follow_log` gives it, but as a non-blocking source for a
        shared selector thread; None when this engine cannot (then `follow_log` on a thread)."""
        ...


@dataclass
class EngineSnapshot:
    """Everything of this installation on the engine, read at once (one list of its containers, one of
    its networks), by service uid: what a periodic resync pass hands each service's sync instead of
    that service's own list calls (a list costs the engine a scan of all its containers, so a list per
    service made a pass grow with the square of the services).

    Containers listed running are taken from the list as they are (id, name, labels, state, address,
    creation to the second); the few in any other state are inspected, so an exit's code, OOM kill
    and restart count are known. `images` remembers, for the snapshot's life, which images the engine
    has (one look per image, not per service)."""

    replicas: dict[str, list[Replica]] = field(default_factory=dict)  # service uid -> its replicas, oldest first
    balancers: dict[str, list[Container]] = field(default_factory=dict)  # service uid -> its balancers
    networks: dict[str, Network] = field(default_factory=dict)  # service uid -> its network
    images: dict[str, bool] = field(default_factory=dict)  # image reference -> the engine has it

    def covers(self, uid: str) -> bool:
        """Whether the service had its network when the snapshot was taken (one that had not is new,
        or half made: its sync looks for itself)."""
        return uid in self.networks


@runtime_checkable
class SnapshotEngine(Protocol):
    """An engine that can read everything of this installation at once (`docker`)."""

    def snapshot(self) -> EngineSnapshot:
        """Every container and network of this installation, by service (one list of each)."""
        ...


@runtime_checkable
class ServiceEngine(Protocol):
    """An engine that converges whole services itself (a scheduler owns the replicas: swarm). The
    reconciler still makes sure of the network and the image, then calls `converge` instead of
    planning replicas, and `remove_services` first when a service is deleted."""

    name: str

    def converge(
        self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: Network, rolling: bool = False
    ) -> Outcome:
        """Declare the service as `spec` says (create, scale, roll; adopt what exists) and say how far
        the engine got, with when to look again (never waits for the engine to get there). `rolling`:
        `revision` is being rolled out (never ready yet): the engine rolls it back when its replicas
        fail their health checks, and says so through `rolled_back`."""
        ...

    def remove_services(self, ref: ServiceRef, keep_replicas: bool = False) -> None:
        """Remove the service's front and (unless `keep_replicas`) its replicas."""
        ...

    def rolled_back(self, ref: ServiceRef, revision: int) -> tuple[int, str] | None:
        """(the revision it went back to, why) when the engine rolled `revision` back by itself (its
        update failed); None otherwise."""
        ...
