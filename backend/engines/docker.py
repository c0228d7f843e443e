"""The `docker` engine: every replica a container on one Docker engine.

`DockerEngine` is the DockerDriver (backend/docker_driver.py: the Docker objects and their labels,
networks, images, volumes, the event stream, also what the API reads) seen through the engine seam
(backend/engine.py): replicas cross it as engine-neutral `Replica`s, found again by their labels; the
balancers' containers are created, started, exec'd into, copied into and followed here.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlparse

import docker.errors
from docker.models.containers import Container

from backend.balancer import LABEL_SLOT
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_TENANT,
    LABEL_UID,
    ROLE_BALANCER,
    ROLE_REPLICA,
    STOP_TIMEOUT,
    ClosableStream,
    DockerDriver,
    ServiceRef,
    object_id,
    object_name,
)
from backend.engine import EngineSnapshot
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

    # -- everything at once ------------------------------------------------------------------------

    def snapshot(self) -> EngineSnapshot:
        """Every container (both roles, any state) and network of this installation, by service uid:
        one list of each, without inspecting the containers that run (the list says enough of them);
        the others are inspected, one by one (few: a settled engine has none)."""
        tenant = {"label": [f"{LABEL_TENANT}={self.tenant}"]}
        listed = self.client.api.containers(all=True, filters=tenant)
        networks = self.client.api.networks(filters=tenant)
        snapshot = EngineSnapshot()
        for item in sorted(listed, key=lambda entry: int(entry.get("Created") or 0)):
            labels = item.get("Labels") or {}
            uid, role = labels.get(LABEL_UID, ""), labels.get(LABEL_ROLE, "")
            if not uid or role not in (ROLE_REPLICA, ROLE_BALANCER):
                continue
            container: Container | None = self.client.containers.prepare_model(listed_attrs(item))
            if item.get("State") != "running":  # its exit code, OOM kill and restarts: only inspect says
                try:
                    container = self.client.containers.get(str(item.get("Id")))
                except docker.errors.NotFound:
                    container = None  # removed since it was listed
            if container is None:
                continue
            if role == ROLE_REPLICA:
                snapshot.replicas.setdefault(uid, []).append(replica_of(container))
            else:
                snapshot.balancers.setdefault(uid, []).append(container)
        for item in networks:
            uid = (item.get("Labels") or {}).get(LABEL_UID, "")
            if uid:
                snapshot.networks[uid] = self.client.networks.prepare_model(item)
        return snapshot

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

    def open_log(self, container: Container, since: float) -> DockerLogSource | None:
        """The log stream on a raw socket of its own, for the balancers' shared log reader (one
        thread for every balancer, not one each). A unix socket or plain tcp engine; None otherwise
        (TLS, ssh: the SDK's stream on a thread of its own)."""
        api = self.client.api
        adapter = getattr(api, "_custom_adapter", None)
        socket_path = getattr(adapter, "socket_path", None)
        base = urlparse(api.base_url)
        if socket_path and base.scheme == "http+docker":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(LOG_CONNECT_TIMEOUT)
            try:
                sock.connect(socket_path)
            except OSError:
                sock.close()
                raise
        elif base.scheme == "http" and base.hostname:
            sock = socket.create_connection((base.hostname, base.port or 2375), timeout=LOG_CONNECT_TIMEOUT)
        else:
            return None
        try:
            query = f"follow=1&stdout=1&stderr=0&timestamps=1&since={int(since)}"
            path = f"/v{api.api_version}/containers/{object_id(container)}/logs?{query}"
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    raise docker.errors.APIError(f"the engine closed the log stream of {object_name(container)}")
                answer += data
            head, _, body = answer.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0].split()
            code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
            if code != 200:
                error = docker.errors.NotFound if code == 404 else docker.errors.APIError
                raise error(f"logs of {object_name(container)}: HTTP {code} {body[:200].decode('utf-8', 'replace')}")
            framed = not ((container.attrs.get("Config") or {}).get("Tty"))
            return DockerLogSource(sock, body, framed)
        except BaseException:
            sock.close()
            raise


class DockerLogSource:
    """One container's log stream on a raw, non-blocking socket to the engine (see `open_log`).

    Asked with HTTP/1.0, the engine sends the body as it comes and closes at the end: no chunked
    encoding to undo, only Docker's stream frames (an 8-byte header: stream type, 3 zero bytes, the
    payload's length, big-endian) when the container has no TTY."""

    def __init__(self, sock: socket.socket, body: bytes, framed: bool) -> None:
        self._sock = sock
        self._framed = framed
        self._frames = body  # bytes not decoded yet (a frame may arrive in pieces)
        self._text = b""  # decoded output not ending in a newline yet
        sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> tuple[list[bytes], bool]:
        ended = False
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                ended = True
                break
            if not data:
                ended = True
                break
            self._frames += data
        if self._framed:
            while len(self._frames) >= 8:
                size = int.from_bytes(self._frames[4:8], "big")
                if len(self._frames) < 8 + size:
                    break
                self._text += self._frames[8:8 + size]
                self._frames = self._frames[8 + size:]
        else:
            self._text, self._frames = self._text + self._frames, b""
        *lines, self._text = self._text.split(b"\n")
        return lines, ended

    def close(self) -> None:
        self._sock.close()


LOG_CONNECT_TIMEOUT = 10.0  # seconds to connect and read the answer's headers; the body never times out


def listed_attrs(item: dict[str, Any]) -> dict[str, Any]:
    """A container as the engine's list gives it (`/containers/json`), in the shape inspect gives it,
    as far as the list says: id, name, creation (to the second), state, labels, addresses."""
    names = item.get("Names") or []
    created = datetime.fromtimestamp(int(item.get("Created") or 0), UTC)
    return {
        "Id": item.get("Id", ""),
        "Name": names[0] if names else "",
        "Created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "State": {"Status": item.get("State", ""), "Running": item.get("State") == "running"},
        "Config": {"Labels": item.get("Labels") or {}, "Image": item.get("Image", "")},
        "NetworkSettings": item.get("NetworkSettings") or {},
    }


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
        started="" if str(state.get("StartedAt", "")).startswith("0001-") else str(state.get("StartedAt", "")),
        ip=ip,
        restarts=int(container.attrs.get("RestartCount") or 0),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        memory_limit=int((container.attrs.get("HostConfig") or {}).get("Memory") or 0),
    )
