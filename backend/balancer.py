"""The balancers: the HAProxy containers in front of each service, and what they see.

Each service has one balancer container listening on `IP:ServicePort` and, while a floating IP is
attached, a second one on `FIP:ServicePort` (so attaching or detaching never disturbs the service's
own address). Both carry the same server set.

A balancer runs in the host's network namespace and binds its address itself: no docker-proxy on
the path, and HAProxy sees each client's real address (`source`, client-address affinity,
X-Forwarded-For). It reaches the replicas on their bridge addresses from the host. Its master process
runs as root with every capability dropped but binding ports < 1024, changing user and signalling;
the worker that serves traffic runs as user haproxy (`user`/`group` in the config).

This module owns the container side of that (backend/haproxy.py owns the HAProxy text); every call
on a container goes through the engine (backend/engine.py):
- creating a balancer: render the config, copy it in (put_archive, no bind mounts: a remote
  DOCKER_HOST works too) with a fresh runtime-API secret, start it, and tell a taken address
  ("address IP:port already in use") from a taken runtime-API port (another port is chosen);
- changing its server set through the runtime API, never a reload: straight over the host's
  loopback when the engine is on this host (backend/runtime_api.py, ~1 ms), else through
  `docker exec … busybox nc` (70-200 ms):
  a new replica gets no traffic until it passed `rise` checks, also when it is a new container in a
  slot at the same address as the one it replaces; a leaving one is drained first;
- following its log stream for health lines, so each replica's UP / DOWN / starting (with since
  when) is known within a check interval, event-driven; every balancer's stream is read by one
  shared thread (`SharedLogReader`, a selector over their sockets), not a thread each;
- choosing the image: the configured one when the engine has it, else the offline fallback that
  scripts/up builds (said once, as a notice), else the configured one pulled.

Replicas are matched to the balancer's server slots by their `io.hyperservice.slot` label.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import selectors
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig

from backend import first_checks, haproxy, runtime_api
from backend.docker_driver import ROLE_BALANCER, ImageUnavailable, ServiceRef, object_id
from backend.engine import Engine, LogSource
from backend.store import ServiceRecord

log = logging.getLogger(__name__)

LABEL_SLOT = "io.hyperservice.slot"  # on a replica: the balancer slot it occupies (s1, s2, ...)
LABEL_ADDRESS = "io.hyperservice.address"  # on a balancer: the host address it listens on
LABEL_FRONT = "io.hyperservice.front"  # on a balancer: "ip" (the service's own) or "fip"
LABEL_ADMIN_PORT = "io.hyperservice.admin-port"  # on a balancer: its runtime API's port on the host's loopback
BALANCER_PIDS_LIMIT = 256
EXEC_POLL_AFTER = 1.0  # seconds a new balancer is polled over the loopback alone (see _wait_listening)
FILE_OWNER_UID = 0  # files copied in belong to root: the master process reads them, holding no DAC capability


class ContainerOptions(TypedDict):
    network_mode: str
    user: str
    cap_drop: list[str]
    cap_add: list[str]
    security_opt: list[str]
    pids_limit: int


# How every balancer container runs (see the module docstring); bench/lb_throughput.py runs its
# "HAProxy alone" the same way.
CONTAINER_OPTIONS: ContainerOptions = {
    "network_mode": "host",
    "user": "0",
    "cap_drop": ["ALL"],
    "cap_add": ["NET_BIND_SERVICE", "SETUID", "SETGID", "KILL"],
    "security_opt": ["no-new-privileges"],
    # The master, one worker per CPU thread, a reload's second worker and a runtime command's sh+nc
    # need a few dozen; a bound keeps a runaway in one balancer from exhausting the host's pids.
    "pids_limit": BALANCER_PIDS_LIMIT,
}
ADMIN_PORT_ATTEMPTS = 5  # runtime-API ports tried (each a new container) before giving up
DRAIN_WAIT = 10.0  # seconds a leaving replica's requests get to finish before it is stopped
LOG_OPTIONS = {"max-size": "1m", "max-file": "2"}  # health lines flow through the log: keep it small


class BalancerError(Exception):
    """The balancer refused a runtime command, or could not be reached."""


class StartFailed(BalancerError):
    """HAProxy exited at start (e.g. an address it binds is taken): the container is of no use."""


class AdminPortTaken(StartFailed):
    """The runtime-API port chosen for a new balancer is taken on the host: choose another."""


@dataclass(frozen=True)
class ReplicaHealth:
    health: str  # UP, DOWN, starting
    since: datetime


def armed_slots(record: ServiceRecord, slots: int, rollout_parallelism: int = 1) -> int:
    """How many of the lowest spare slots stay armed (checked fast, so an assignment is checked at
    once): the replicas asked for, and what a rolling update adds above them: its new replicas
    (`rollout_parallelism` at a time) beside the old ones still draining in their slots, twice over
    (a step's drains may outlast the next step), and one more; at least MIN_ARMED_SLOTS."""
    return min(slots, max(haproxy.MIN_ARMED_SLOTS, record.spec.Replicas + 4 * rollout_parallelism + 1))


def balancer_config(
    record: ServiceRecord, servers: dict[str, str], slots: int, address: str, admin_port: int,
    armed: int,
) -> haproxy.BalancerConfig:
    """The config of the balancer listening on `address` (the service's IP or FIP) at ServicePort,
    its lowest `armed` spare slots armed (see Balancers.armed)."""
    spec = record.spec
    return haproxy.BalancerConfig(
        service=record.name,
        protocol=spec.Protocol,
        algorithm=spec.Algorithm,
        session_affinity=spec.SessionAffinity,
        listen=f"{address}:{spec.ServicePort}",
        admin_port=admin_port,
        container_port=spec.ContainerPort or spec.ServicePort,
        health_interval=spec.HealthCheckInterval,
        health_fall=spec.HealthCheckFall,
        health_rise=spec.HealthCheckRise,
        servers=tuple(sorted(servers.items(), key=lambda item: haproxy.slot_index(item[0]) or 0)),
        slots=slots,
        armed_slots=armed,
    )


def _archive(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # The private directory first: root's, searchable (the worker reaches the CLI socket in it).
        folder = tarfile.TarInfo(haproxy.PRIVATE_DIR.lstrip("/"))
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(folder)
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, int(time.time())
            info.uid = info.gid = FILE_OWNER_UID
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _admin_port(container: Container) -> int:
    try:
        return int(container.labels[LABEL_ADMIN_PORT])
    except (KeyError, ValueError):
        raise BalancerError(f"the balancer {container.name} has no runtime-API port label") from None


LineHandler = Callable[[list[bytes]], None]
EndHandler = Callable[[], None]


class SharedLogReader:
    """One thread reading many log streams at once (a selector over their sockets): the balancers'
    health logs cost one thread however many services there are (a thread each did not scale to
    hundreds). Handlers run on this thread, so they must not block."""

    def __init__(self, name: str = "balancer-logs") -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: list[tuple[LogSource, LineHandler, EndHandler]] = []
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._closed = threading.Event()
        self._name = name
        self._thread: threading.Thread | None = None
        self._count = 0  # streams followed now

    def add(self, source: LogSource, on_lines: LineHandler, on_end: EndHandler) -> None:
        """Follow `source`: `on_lines` gets its complete lines as they come, `on_end` once it ended."""
        with self._lock:
            if self._closed.is_set():
                source.close()
                return
            self._pending.append((source, on_lines, on_end))
            self._count += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wake()

    def count(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        self._closed.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (buffer full) or closed
            self._wake_write.send(b"x")

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                with self._lock:
                    pending, self._pending = self._pending, []
                for source, on_lines, on_end in pending:
                    self._selector.register(source, selectors.EVENT_READ, (source, on_lines, on_end))
                    self._read(source, on_lines, on_end)  # what arrived before it was registered
                for key, _ in self._selector.select(timeout=5.0):
                    if key.data is None:
                        with contextlib.suppress(OSError):  # drained (BlockingIOError)
                            while self._wake_read.recv(4096):
                                pass
                        continue
                    self._read(*key.data)
        finally:
            for key in list(self._selector.get_map().values()):
                if key.data is not None:
                    key.data[0].close()
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()

    def _read(self, source: LogSource, on_lines: LineHandler, on_end: EndHandler) -> None:
        try:
            lines, ended = source.read()
        except Exception as exc:  # a broken stream ends; the others go on
            log.debug("log stream failed: %s", exc)
            lines, ended = [], True
        if lines:
            try:
                on_lines(lines)
            except Exception:
                log.exception("a log handler failed")
        if ended:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(source)
            source.close()
            with self._lock:
                self._count -= 1
            try:
                on_end()
            except Exception:
                log.exception("a log end handler failed")


class Balancers:
    """Every service's balancers, their server sets and the health they report."""

    def __init__(
        self,
        engine: Engine,
        image: str,
        slots: int,
        on_health: Callable[[str, str, ReplicaHealth], None],
        fallback_image: str = "",
        on_notice: Callable[[str], None] | None = None,
        rollout_parallelism: int = 1,
        direct_runtime_api: bool | None = None,
    ) -> None:
        self.engine = engine
        self.rollout_parallelism = rollout_parallelism  # (the armed slots: see armed_slots)
        # Ask the runtime API over this host's loopback (None: when DOCKER_HOST says the engine is here).
        self._direct = (runtime_api.engine_is_local(os.environ.get("DOCKER_HOST"))
                        if direct_runtime_api is None else direct_runtime_api)
        self._secrets: dict[str, str] = {}  # balancer container id -> its runtime-API secret (memory only)
        self._exec_only: set[str] = set()  # balancers whose runtime API is not reachable from here
        self._secret_reads: dict[str, threading.Lock] = {}  # balancer id -> held while its secret is read
        self.image = image  # the configured image
        self.fallback_image = fallback_image
        self._on_notice = on_notice  # (a sentence for the operator)
        self._image_lock = threading.Lock()
        self._noticed_fallback = False
        self.slots = slots
        self._on_health = on_health  # (service name, slot, new health)
        self._lock = threading.Lock()
        self._boards: dict[str, haproxy.HealthBoard] = {}  # service uid -> health of its slots
        # balancer container id -> what it carries: slot -> (ip:port, id of the container there)
        self._applied: dict[str, dict[str, tuple[str, str]]] = {}
        # balancer container id -> its server states, for one that was just started (not asked yet)
        self._started: dict[str, dict[str, haproxy.ServerSnapshot]] = {}
        # primary balancer ids whose log is followed (by the shared reader, or a thread of its own
        # where the engine cannot give a selectable stream)
        self._followed: set[str] = set()
        self._logs = SharedLogReader()
        self._stopping = threading.Event()
        # A gated slot's first checks, made from here at once where the balancers are reached over
        # this host's loopback (backend/first_checks.py). Each gate of a slot on a balancer has a
        # number; a passed first check admits the slot only while its gate is still the one checked.
        self._first_checks = first_checks.FirstChecks(self._stopping)
        self._gates: dict[tuple[str, str], int] = {}  # (balancer id, slot) -> its latest gate's number
        self._gate_count = 0
        # balancer id -> held while commands are sent to it (a gate and an admission never interleave)
        self._command_locks: dict[str, threading.Lock] = {}

    def armed(self, record: ServiceRecord, container: Container | None = None) -> int:
        """How many spare slots a balancer keeps armed: none where the backend makes a new replica's
        first checks itself (the balancer is reached over this host's loopback: an idle spare then
        costs nothing), else `armed_slots()` (each costs a refused connect per DOWN_CHECK_MS)."""
        with self._lock:
            reached = self._direct and (container is None or object_id(container) not in self._exec_only)
        return 0 if reached else armed_slots(record, self.slots, self.rollout_parallelism)

    def stop(self) -> None:
        self._stopping.set()
        self._first_checks.close()
        self._logs.close()

    # -- containers --------------------------------------------------------------------------

    def containers(self, ref: ServiceRef) -> list[Container]:
        return self.engine.balancers(ref)

    def ensure(
        self, record: ServiceRecord, servers: dict[str, str], listed: list[Container] | None = None
    ) -> list[Container]:
        """Balancers for the service's address (and FIP) exist and run; extra ones are removed.

        A balancer created here starts with `servers` in its config: they start UP-unchecked, which
        the health board reports as "starting" until their first check. One that is not running
        (stopped, or exiting again and again because an address it binds was taken meanwhile) is
        made anew, and so is one of an earlier kind (published through docker-proxy). `listed`: the
        service's balancers as a snapshot of the engine has them (None: list them now).
        """
        ref = ServiceRef(record.name, record.uid)
        wanted = {"ip": record.ip, **({"fip": record.fip} if record.fip else {})}
        existing = self.containers(ref) if listed is None else listed
        result: list[Container] = []
        stale = [
            container for container in existing
            if wanted.get(container.labels.get(LABEL_FRONT, "")) != container.labels.get(LABEL_ADDRESS)
            or container.status != "running"
            or not container.labels.get(LABEL_ADMIN_PORT)
        ]
        for container in stale:
            self.forget(object_id(container))
            self.engine.remove(container, graceful=False)
        if stale:  # listed again only then: each list costs the engine a scan of all its containers
            existing = self.containers(ref)
        fronts = {c.labels.get(LABEL_FRONT): c for c in existing}
        for front, address in wanted.items():
            found = fronts.get(front)
            result.append(found if found is not None else self._create(record, servers, front, address))
        primary = next(c for c in result if c.labels.get(LABEL_FRONT) == "ip")
        self._follow(record, primary)
        return result

    def _create(self, record: ServiceRecord, servers: dict[str, str], front: str, address: str) -> Container:
        """A running balancer on `address`:ServicePort. Its runtime-API port is chosen at random from
        haproxy.ADMIN_PORTS; when something on the host holds it already, another is tried."""
        image = self.resolve_image()
        for _ in range(ADMIN_PORT_ATTEMPTS):
            try:
                return self._create_once(record, servers, front, address, image, random.choice(haproxy.ADMIN_PORTS))
            except AdminPortTaken as exc:
                log.info("%s", exc)
        raise BalancerError(
            f"no free port for the runtime API of {record.name}'s balancer after {ADMIN_PORT_ATTEMPTS} tries "
            f"(ports {haproxy.ADMIN_PORTS.start}-{haproxy.ADMIN_PORTS.stop - 1} of 127.0.0.1)"
        )

    def _create_once(
        self, record: ServiceRecord, servers: dict[str, str], front: str, address: str, image: str, admin_port: int
    ) -> Container:
        ref = ServiceRef(record.name, record.uid)
        labels = self.engine.labels(
            ref, ROLE_BALANCER, **{LABEL_FRONT: front, LABEL_ADDRESS: address, LABEL_ADMIN_PORT: str(admin_port)}
        )
        container = self.engine.create_container(
            image=image,
            name=f"{record.name}-{'lb' if front == 'ip' else 'fip'}-{record.uid[:5]}",
            labels=labels,
            restart_policy={"Name": "unless-stopped"},
            log_config=LogConfig(type=LogConfig.types.JSON, config=LOG_OPTIONS),
            **CONTAINER_OPTIONS,
        )
        secret = haproxy.new_admin_secret()
        with self._lock:
            self._secrets[object_id(container)] = secret
        try:
            self._copy_files(container, record, servers, admin_secret=secret)
            self.engine.start(container)
            self._wait_listening(container)
        except StartFailed:
            self.engine.remove(container, graceful=False)
            raise
        except Exception:
            if container.status != "running":  # otherwise slow to answer: it stays, checked again next time
                self.engine.remove(container, graceful=False)
            raise
        started = haproxy.started_state(
            balancer_config(record, servers, self.slots, address, admin_port, self.armed(record))
        )
        with self._lock:
            self._started[object_id(container)] = started
        return container

    def resolve_image(self) -> str:
        """The image a new balancer runs.

        The configured image when the engine has it. While it is missing, the offline fallback when
        the engine has that (scripts/up builds it where the configured image cannot be pulled; no
        pull is tried then, so an offline machine does not wait on the registry for every balancer).
        Otherwise the configured image, pulled; if that fails, the error names the fix.
        """
        with self._image_lock:
            if self.engine.has_image(self.image):
                return self.image
            fallback = self.fallback_image
            if fallback and fallback != self.image and self.engine.has_image(fallback):
                if not self._noticed_fallback:
                    self._noticed_fallback = True
                    notice = (
                        f"balancer image {self.image} is not on the engine: balancers run {fallback} "
                        f"(Debian's HAProxy, built by scripts/up); `docker pull {self.image}` to use it instead"
                    )
                    log.warning("%s", notice)
                    if self._on_notice is not None:
                        self._on_notice(notice)
                return fallback
            try:
                self.engine.ensure_image(self.image)
            except ImageUnavailable as exc:
                if not fallback or fallback == self.image:
                    raise
                raise ImageUnavailable(
                    f"balancer image {self.image} is missing and cannot be pulled, nor is the offline "
                    f"fallback {fallback} here: run scripts/up to build it ({exc})"
                ) from exc
            return self.image

    def _wait_listening(self, container: Container, timeout: float = 10.0) -> None:
        """Return once HAProxy answers its runtime API: it has bound its addresses, so the service
        address works. HAProxy exits at once when it cannot bind one: say which and why."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                # Over the loopback only, at first: a `docker exec` per poll would cost more than the
                # wait; after a second, through the engine too (the loopback here may not be its own).
                self._ask(container, "show info", through_exec=time.monotonic() - started > EXEC_POLL_AFTER)
                return
            except BalancerError:
                self.engine.refresh(container)
                if container.status != "running" or container.attrs.get("RestartCount", 0):
                    self._raise_start_failure(container)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _raise_start_failure(self, container: Container) -> None:
        text = self.engine.error_log(container, lines=50).decode("utf-8", "replace")
        failure = haproxy.parse_bind_failure(text)
        if failure is None:
            alerts = [line for line in text.splitlines() if "[ALERT]" in line]
            raise StartFailed(f"the balancer {container.name} exited: {(alerts or ['no reason logged'])[-1][:200]}")
        if failure.address == f"127.0.0.1:{container.labels.get(LABEL_ADMIN_PORT)}":
            raise AdminPortTaken(f"runtime-API port {failure.address} of {container.name} is taken: choosing another")
        if failure.in_use:
            raise StartFailed(f"address {failure.address} already in use")
        raise StartFailed(f"cannot listen on {failure.address}: {failure.reason}")

    def _copy_files(
        self, container: Container, record: ServiceRecord, servers: dict[str, str], admin_secret: str | None = None
    ) -> None:
        """Copy the config (and, when creating the balancer, its runtime-API secret) into it."""
        config = balancer_config(
            record, servers, self.slots, container.labels[LABEL_ADDRESS], _admin_port(container),
            self.armed(record, container),
        )
        files = haproxy.balancer_files(config, record.spec.SSLCert or None)
        if admin_secret is not None:
            files.update(haproxy.admin_secret_files(admin_secret))
        if not self.engine.copy_in(container, "/", _archive(files)):
            raise BalancerError(f"could not copy the configuration into {container.name}")

    def remove_all(self, ref: ServiceRef) -> None:
        containers = self.containers(ref)
        for container in containers:
            self.forget(object_id(container))
        for container in containers:
            self.engine.remove(container, graceful=False)
        with self._lock:
            self._boards.pop(ref.uid, None)

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._applied.pop(container_id, None)
            self._started.pop(container_id, None)
            self._secrets.pop(container_id, None)
            self._secret_reads.pop(container_id, None)
            self._exec_only.discard(container_id)
            self._command_locks.pop(container_id, None)
            for key in [key for key in self._gates if key[0] == container_id]:
                del self._gates[key]

    # -- the server set ------------------------------------------------------------------------

    def set_servers(
        self,
        record: ServiceRecord,
        balancers: list[Container],
        servers: dict[str, str],
        owners: dict[str, str] | None = None,
    ) -> list[str]:
        """Make every balancer carry exactly `servers` (slot -> ip:port), the container in each slot
        being `owners[slot]` (its id); answer the slots released.

        A slot whose container changed goes through the gate again even at an unchanged address:
        the new container takes no traffic and reports "starting" until it passed `rise` checks.
        """
        owners = owners or {}
        wanted = {slot: (address, owners.get(slot, "")) for slot, address in servers.items()}
        released: set[str] = set()
        board = self.board(record.uid)
        # A new container in a known slot: its health starts over (the board is per slot).
        regate = {slot for slot, owner in owners.items() if slot in servers and owner and board.claim(slot, owner)}
        admissions: dict[str, list[tuple[Container, int]]] = {}  # gated slot -> (balancer, gate number)
        changed: list[Container] = []  # the balancers sent commands (their config file is saved after)
        for container in balancers:
            with self._lock:
                applied = self._applied.get(object_id(container))
            if applied == wanted:
                continue
            # Also the slots whose new container this balancer has not gated yet (an earlier try failed).
            stale = {
                slot for slot, (_, owner) in (applied or {}).items()
                if slot in wanted and owner and wanted[slot][1] and owner != wanted[slot][1]
            }
            with self._lock:
                current = self._started.pop(object_id(container), None)
            if current is None:
                current = haproxy.parse_servers_state(self._ask(container, haproxy.SHOW_SERVERS_STATE))
            if any(slot not in current for slot in servers):
                current = self._grow_slots(container, record, current)
            commands = haproxy.reconcile_commands(servers, current, regate | stale, self.armed(record, container))
            if container.labels.get(LABEL_FRONT) == "ip":
                # On the board before the commands run: HAProxy may check the replica and log it UP
                # within milliseconds of the command, and the log follower may read that line before
                # the exec that sent it has returned. A line for a slot not yet on the board is
                # dropped, and HAProxy logs a check only when its result changes: marked after the
                # commands, such a replica stayed "starting" for good (issue 9, 60 services).
                for slot, address in servers.items():
                    snapshot = current.get(slot)
                    moved = snapshot is None or snapshot.address != address or snapshot.state in ("MAINT", "DRAIN")
                    if moved or slot in stale or (snapshot is not None and snapshot.weight == 0):
                        board.assigned(slot, owner=owners.get(slot) or None)
            if commands:
                gates = self._run_gating(container, commands)
                for slot, number in gates.items():
                    admissions.setdefault(slot, []).append((container, number))
            released |= {
                slot for slot, snap in current.items()
                if slot not in servers and not snap.spare and snap.state != "MAINT"
            }
            changed.append(container)
        # The new replicas' first checks before the config copies (a copy costs the engine tens of ms).
        self._start_first_checks(record, servers, admissions)
        for container in changed:
            self._copy_files(container, record, servers)  # a restarted balancer comes back right
            with self._lock:
                self._applied[object_id(container)] = wanted
        for slot in released:
            board.released(slot)
        return sorted(released)

    def _run_gating(self, container: Container, commands: list[str]) -> dict[str, int]:
        """Send `commands`; answer the slots they gated, each with its gate's number."""
        key = object_id(container)
        gated = haproxy.gated_slots(commands)
        with self._lock:
            command_lock = self._command_locks.setdefault(key, threading.Lock())
        with command_lock:
            with self._lock:
                numbers = {}
                for slot in gated:
                    self._gate_count += 1
                    numbers[slot] = self._gates[(key, slot)] = self._gate_count
            self._run(container, commands)
        return numbers

    def _start_first_checks(
        self, record: ServiceRecord, servers: dict[str, str], admissions: dict[str, list[tuple[Container, int]]]
    ) -> None:
        """Check each newly gated replica from here at once, where its balancers are reached directly."""
        if not self._direct or not admissions:
            return
        spec = first_checks.CheckSpec(
            http=record.spec.Protocol in haproxy.HTTP_PROTOCOLS,
            timeout=haproxy.check_timeout(record.spec.HealthCheckInterval),
            rise=record.spec.HealthCheckRise,
            # Until the balancer's own checks have surely started: a slot that left maintenance is
            # checked by HAProxy within an interval, then every DOWN_CHECK_MS.
            window=record.spec.HealthCheckInterval + first_checks.HANDOVER_SLACK,
        )
        for slot, gates in admissions.items():
            with self._lock:
                reachable = [(c, n) for c, n in gates if object_id(c) not in self._exec_only]
            if reachable and slot in servers:
                self._first_checks.start(servers[slot], spec, functools.partial(self._admit, slot, reachable))

    def _admit(self, slot: str, gates: list[tuple[Container, int]]) -> None:
        """The replica in `slot` passed its first checks: in rotation on each balancer whose gate of
        the slot is still the one that was checked (a slot gated again meanwhile, say for a new
        container at the same address, waits for its own checks)."""
        for container, number in gates:
            key = object_id(container)
            with self._lock:
                command_lock = self._command_locks.get(key)
            if command_lock is None:  # forgotten meanwhile (removed)
                continue
            with command_lock:
                with self._lock:
                    if self._gates.get((key, slot)) != number:
                        continue
                try:
                    answer = self._ask_direct(container, haproxy.admit_slot_command(slot))
                except (BalancerError, runtime_api.RuntimeApiRefused) as exc:
                    log.debug("first checks: %s not admitted on %s: %s", slot, container.name, exc)
                    continue
            errors = haproxy.runtime_errors(answer or "")
            if errors:
                log.debug("first checks: %s not admitted on %s: %s", slot, container.name, errors[0][:200])

    def _grow_slots(
        self, container: Container, record: ServiceRecord, current: dict[str, haproxy.ServerSnapshot]
    ) -> dict[str, haproxy.ServerSnapshot]:
        """The balancer was made with fewer slots than the replica limit now needs (the limit was
        raised since): re-render its config with today's slot count, carrying the servers it has,
        and reload it seamlessly (the listening socket passes to the new worker; health is kept)."""
        carried = {slot: snap.address for slot, snap in current.items() if snap.state != "MAINT" and not snap.spare}
        log.info("balancer %s: growing from %d to %d server slots", container.name, len(current), self.slots)
        self._copy_files(container, record, carried)
        code, output = self.engine.exec(container, haproxy.reload_exec_argv(_admin_port(container)))
        if code != 0:
            text = output.decode("utf-8", "replace")
            raise BalancerError(f"the balancer {container.name} did not reload with more slots: {text[:200]}")
        with self._lock:
            self._applied.pop(object_id(container), None)
        return haproxy.parse_servers_state(self._ask(container, haproxy.SHOW_SERVERS_STATE))

    def busy_slots(self, balancers: list[Container], slots: list[str]) -> set[str]:
        """Which of `slots` some balancer still has a session open on (one question each, no waiting:
        the reconciler asks again on its next step, until DRAIN_WAIT is over)."""
        busy: set[str] = set()
        for container in balancers:
            counts = haproxy.parse_session_counts(self._ask(container, haproxy.SHOW_SERVER_STATS))
            busy |= {slot for slot in slots if counts.get(slot, 0)}
        return busy

    def traffic(self, ref: ServiceRef) -> list[tuple[str, str, list[haproxy.TrafficStats]]]:
        """(front, host address, `show stat` rows) of each of the service's balancers that answers,
        the primary ("ip") first. One that does not (restarting, being replaced) is left out."""
        answers: list[tuple[str, str, list[haproxy.TrafficStats]]] = []
        for container in self.containers(ref):
            if container.status != "running":
                continue
            try:
                rows = haproxy.parse_stats(self._ask(container, haproxy.SHOW_STATS))
            except (BalancerError, docker.errors.NotFound) as exc:
                log.debug("no stats from %s: %s", container.name, exc)
                continue
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: stopped or being removed since it was listed
                    raise
                continue
            answers.append((container.labels.get(LABEL_FRONT, ""), container.labels.get(LABEL_ADDRESS, ""), rows))
        return sorted(answers, key=lambda answer: answer[0] != "ip")

    def _ask(self, container: Container, command: str, through_exec: bool = True) -> str:
        """The runtime API's answer to `command`: over the loopback when it reaches the balancer from
        here, else (`through_exec`) through `docker exec`; BalancerError when neither answered."""
        refused = False
        if self._direct:
            try:
                answer = self._ask_direct(container, command)
            except runtime_api.RuntimeApiRefused as exc:
                if not through_exec:
                    raise BalancerError(f"the balancer {container.name} did not answer its runtime API: {exc}") from None
                refused = True
            else:
                if answer is not None:
                    return answer
        try:
            code, output = self.engine.exec(container, haproxy.runtime_exec_argv(command, _admin_port(container)))
        except docker.errors.APIError as exc:  # e.g. the container is restarting
            raise BalancerError(f"the balancer {container.name} did not answer its runtime API: {exc}") from exc
        text = output.decode("utf-8", "replace")
        if code != 0 or not text:  # every CLI answer has at least a newline: nothing = not taken
            raise BalancerError(f"the balancer {container.name} did not answer its runtime API: {text.strip()[:200]}")
        if refused:  # the loopback here is not the balancer's: ask it through the engine from now on
            with self._lock:
                self._exec_only.add(object_id(container))
        return text

    def _ask_direct(self, container: Container, command: str) -> str | None:
        """The answer over the host's loopback; None when this balancer is asked through the engine
        (known unreachable from here, or its secret unreadable); RuntimeApiRefused when not reached."""
        key = object_id(container)
        with self._lock:
            if key in self._exec_only:
                return None
            secret = self._secrets.get(key)
        if secret is None:
            secret = self._read_secret(container)
            if secret is None:
                return None
        try:
            return runtime_api.ask(_admin_port(container), secret, command)
        except runtime_api.RuntimeApiRefused:
            raise
        except (OSError, ValueError) as exc:
            raise BalancerError(f"the balancer {container.name} did not answer its runtime API: {exc}") from exc

    def _read_secret(self, container: Container) -> str | None:
        """The runtime-API secret of a balancer made by an earlier backend (read once, kept in memory:
        callers asking at the same time wait for the one read under way)."""
        key = object_id(container)
        with self._lock:
            reading = self._secret_reads.setdefault(key, threading.Lock())
        with reading:
            with self._lock:
                known = self._secrets.get(key)
            if known is not None:
                return known
            try:
                code, output = self.engine.exec(container, ["busybox", "cat", haproxy.ADMIN_SECRET_PATH])
            except docker.errors.APIError:
                return None
            secret = output.decode("ascii", "replace")
            if code != 0 or len(secret) != haproxy.ADMIN_SECRET_LENGTH or secret.strip(" \t"):
                return None
            with self._lock:
                self._secrets[key] = secret
            return secret

    def _run(self, container: Container, commands: list[str]) -> None:
        for line in haproxy.command_lines(commands):
            errors = haproxy.runtime_errors(self._ask(container, line))
            if errors:
                raise BalancerError(f"the balancer {container.name} refused a change: {errors[0][:200]}")

    # -- health --------------------------------------------------------------------------------

    def board(self, uid: str) -> haproxy.HealthBoard:
        with self._lock:
            return self._boards.setdefault(uid, haproxy.HealthBoard())

    def health(self, uid: str, slot: str | None, container_id: str = "") -> ReplicaHealth | None:
        """The health of the replica in `slot`; a container the slot's health is not about yet (it
        just replaced the one the board knows) is "starting"."""
        if not slot:
            return None
        known = self.board(uid).get(slot)
        if known is None:
            return None
        if container_id and known.owner and known.owner != container_id:
            return ReplicaHealth("starting", datetime.now(UTC))
        return ReplicaHealth(known.health, known.since)

    def _follow(self, record: ServiceRecord, primary: Container) -> None:
        """Follow the primary balancer's log for health lines (once per container start).

        The snapshot comes first and the log is read from a moment before it, so no line is lost
        and none is overwritten by an older snapshot (HAProxy logs a check only when its result
        changes: a lost line would leave a replica "starting" for good).
        """
        key = object_id(primary)
        with self._lock:
            running = key in self._followed
            if not running:
                self._followed.add(key)
        if running:
            self._refresh_if_stuck(record, primary)
            return
        started = time.time() - 1
        self._snapshot(record, primary)
        name, uid = record.name, record.uid
        try:
            source = self.engine.open_log(primary, started)
        except Exception as exc:  # the engine refused or went away: ended at once, looked at again
            log.debug("health stream of %s not opened: %s", name, exc)
            self._log_ended(name, key)
            return
        if source is None:  # this engine has no selectable stream: a thread of its own
            threading.Thread(
                target=self._read_health, args=(name, uid, primary, started), name=f"health-{name}", daemon=True
            ).start()
            return
        self._logs.add(
            source,
            lambda lines: self._take_health_lines(name, uid, lines),
            lambda: self._log_ended(name, key),
        )

    def followed(self) -> int:
        """How many balancers' health logs are followed now."""
        with self._lock:
            return len(self._followed)

    def _snapshot(self, record: ServiceRecord, primary: Container) -> None:
        try:
            with self._lock:
                snapshot = self._started.get(object_id(primary))  # just started by us: known without asking
            if snapshot is None:
                snapshot = haproxy.parse_servers_state(self._ask(primary, haproxy.SHOW_SERVERS_STATE))
            board = self.board(record.uid)
            before = board.all()
            board.load_snapshot(snapshot)
        except BalancerError as exc:
            log.info("no health snapshot of %s yet: %s", primary.name, exc)
            return
        # A replica's health learnt from the snapshot (not from a log line) is a change too: a new
        # balancer's servers are first seen UP here.
        for slot, known in board.all().items():
            previous = before.get(slot)
            if previous is None or previous.health != known.health:
                self._on_health(record.name, slot, ReplicaHealth(known.health, known.since))

    def _refresh_if_stuck(self, record: ServiceRecord, primary: Container) -> None:
        """A safety net: a replica still "starting" long after its checks must have run gets a
        fresh snapshot (one exec), in case its health line was missed. A gated one too: the snapshot
        lets it through only when HAProxy has it UP and checked (see HealthBoard.load_snapshot)."""
        spec = record.spec
        overdue = (spec.HealthCheckRise + 2) * spec.HealthCheckInterval + 2
        now = datetime.now(UTC)
        stuck = [
            slot for slot, known in self.board(record.uid).all().items()
            if known.health == "starting" and (now - known.since).total_seconds() > overdue
        ]
        if stuck:
            self._snapshot(record, primary)

    def _take_health_lines(self, name: str, uid: str, lines: list[bytes]) -> None:
        board = self.board(uid)
        for raw in lines:
            event = haproxy.parse_health_line(raw.decode("utf-8", "replace"))
            if event is not None and board.apply(event):
                known = board.get(event.slot)
                if known is not None:
                    self._on_health(name, event.slot, ReplicaHealth(known.health, known.since))

    def _log_ended(self, name: str, key: str) -> None:
        with self._lock:
            self._followed.discard(key)
        self.forget(key)  # whatever it carried must be checked again
        if not self._stopping.is_set():
            self._on_health(name, "", ReplicaHealth("", datetime.now()))

    def _read_health(self, name: str, uid: str, primary: Container, since: float) -> None:
        """A balancer's log followed on a thread of its own (an engine with no selectable stream)."""
        try:
            stream = self.engine.follow_log(primary, since)
            pending = b""
            for chunk in stream:
                if self._stopping.is_set():
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                self._take_health_lines(name, uid, lines)
        except Exception as exc:  # the engine went away: the reconciler re-attaches when it's back
            log.debug("health stream of %s ended: %s", name, exc)
        finally:
            self._log_ended(name, object_id(primary))
