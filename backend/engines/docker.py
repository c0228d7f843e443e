"""The `docker` engine: every replica a container on one Docker engine.

`DockerEngine` is the DockerDriver (backend/docker_driver.py: the Docker objects and their labels,
networks, images, volumes, the event stream, also what the API reads) seen through the engine seam
(backend/engine.py): replicas cross it as engine-neutral `Replica`s, found again by their labels; the
balancers' containers are created, started, exec'd into, copied into and followed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import docker.errors
from docker.models.containers import Container

from backend.balancer import LABEL_SLOT
from backend.docker_driver import (
    LABEL_REVISION,
    ROLE_BALANCER,
    ROLE_REPLICA,
    STOP_TIMEOUT,
    ClosableStream,
    DockerDriver,
    ServiceRef,
    object_id,
    object_name,
)
from backend.models import ServiceSpec
from backend.planner import Replica


class DockerEngine(DockerDriver):
    """The Engine of one Docker engine, for one backend installation (`tenant`)."""

    # -- replicas -----------------------------------------------------------------------------

    def replicas(self, ref: ServiceRef) -> list[Replica]:
        return [replica_of(container) for container in self.containers(ref, ROLE_REPLICA)]

    def start_replica(self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: str, slot: str) -> Replica:
        return replica_of(self.create_replica(ref, spec, revision, network, {LABEL_SLOT: slot}))

    def remove_replicas(self, replicas: Sequence[Replica], graceful: bool = True) -> None:
        found = []
        for replica in replicas:
            with contextlib.suppress(docker.errors.NotFound):  # gone already
                found.append(self.client.containers.get(replica.id))
        self.remove_many(found, graceful)

    def remove_containers(self, ref: ServiceRef, graceful: bool = True, stop_timeout: int = STOP_TIMEOUT) -> None:
        self.remove_many(self.containers(ref), graceful, stop_timeout)

    # -- balancer containers ----------------------------------------------------------------------

    def balancers(self, ref: ServiceRef) -> list[Container]:
        return self.containers(ref, ROLE_BALANCER)

    def create_container(self, image: str, name: str, labels: dict[str, str], **options: Any) -> Container:
        return self.client.containers.create(image=image, name=name, labels=labels, detach=True, **options)

    def start(self, container: Container) -> None:
        container.start()
        container.reload()

    def refresh(self, container: Container) -> None:
        container.reload()

    def copy_in(self, container: Container, path: str, archive: bytes) -> bool:
        return container.put_archive(path, archive)

    def exec(self, container: Container, argv: list[str]) -> tuple[int, bytes]:
        code, output = container.exec_run(argv)
        return code or 0, output if isinstance(output, bytes) else str(output).encode()

    def error_log(self, container: Container, lines: int) -> bytes:
        return container.logs(stdout=False, stderr=True, tail=lines)

    def follow_log(self, container: Container, since: float) -> ClosableStream[bytes]:
        stream = self.client.api.logs(
            object_id(container), stream=True, follow=True, stdout=True, stderr=False, timestamps=True, since=int(since)
        )
        return cast(ClosableStream[bytes], stream)


def replica_of(container: Container) -> Replica:
    """A replica container as an engine-neutral Replica."""
    state = container.attrs.get("State") or {}
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ip = next((settings["IPAddress"] for settings in networks.values() if settings.get("IPAddress")), "")
    return Replica(
        id=object_id(container),
        name=object_name(container),
        slot=container.labels.get(LABEL_SLOT, ""),
        revision=container.labels.get(LABEL_REVISION, ""),
        state=container.status,
        created=container.attrs.get("Created", ""),
        ip=ip,
        restarts=int(container.attrs.get("RestartCount") or 0),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        memory_limit=int((container.attrs.get("HostConfig") or {}).get("Memory") or 0),
    )
