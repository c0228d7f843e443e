"""The `swarm` engine: a hyperservice service is a Docker Swarm service, placed by swarm's own scheduler.

Why not the per-replica `Engine` path (backend/engine.py): on swarm the manager creates, places,
restarts, reschedules and rolls the tasks itself; a backend that created replicas one by one would
fight it. So the reconciler delegates the whole convergence of a service to `SwarmEngine.converge`
(the `ServiceEngine` protocol of backend/engine.py): it declares the desired swarm services, reads
back what swarm did (tasks, update status) and answers an `Outcome` for the reconciler to report.

What a service becomes (all labelled with tenant, service, uid and role, so a restarted backend
adopts them instead of creating them again):
- its own overlay network `hs-<name>-<uid8>` (attachable; its subnet from the product's network pool, see
  `ensure_network`);
- the replicas: swarm service `<name>-<uid5>` in dnsrr endpoint mode (the VIP needs IPVS), with
  every field of the spec mapped (`replica_service_spec`): image, command, env, workdir, labels,
  stop signal, tty/stdin, ContainerSize as CPU and memory limits, named volumes (node-local), a
  restart policy, the replicas' pids limit, json-file logs and an update config (one task at a time,
  start-first, a delay for the Rise checks between two, rolled back by swarm itself when a new task
  fails within the monitor window, which follows the health settings, and by the backend when a new
  task runs past that window without being UP on the edges: `health_gate`);
- the balancer: swarm service `<name>-lb<uid3>`, HAProxy (the image the docker engine's balancers
  use) in global mode on the edge nodes (node label `edge=true`; every node when none carries it),
  publishing ServicePort in host mode and finding the replicas by DNS (`tasks.<replica service>`,
  HAProxy `resolvers` on docker's 127.0.0.11 + `server-template`); its haproxy.cfg is a swarm config
  (`balancer_config`);
- `IP` is the first ready edge node's address; each replica's state and node come from its task, its
  health from the edge HAProxies' logs, which the manager relays (`task_health`, rules in
  backend/engines/swarm_health.py); the status is `active` only when every replica is UP.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import docker.errors
import requests
from docker.models.networks import Network
from docker.types import (
    CancellableStream,
    ConfigReference,
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    IPAMConfig,
    IPAMPool,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    RollbackConfig,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)

from backend import haproxy
from backend.docker_driver import (
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SERVICE,
    LABEL_TENANT,
    LABEL_UID,
    LABEL_VOLUME,
    ROLE_BALANCER,
    ROLE_NETWORK,
    ROLE_REPLICA,
    ROLE_VOLUME,
    STOP_TIMEOUT,
    ClosableStream,
    ServiceRef,
    SubnetTaken,
    network_name,
    volume_name,
)
from backend.engines.docker import DockerEngine
from backend.engines.swarm_health import SwarmHealthBoard
from backend.models import ContainerInfo, ServiceSpec, ServiceStatus
from backend.planner import Outcome, Replica

log = logging.getLogger(__name__)

EDGE_LABEL = "edge"  # node label (value "true") of the nodes that publish the service fronts
FRONT_PORT = 8080  # where HAProxy listens inside its container (the image runs as a user: no port < 1024)
DNS_SERVER = "127.0.0.11:53"  # docker's embedded DNS in every container on a user-defined network
POLL_ACTIVE = 2.0  # seconds between two looks at a settled service (swarm's task events are not followed)
POLL_BUSY = 1.0  # ... at a service swarm is still working on
RESTART_DELAY_NS = 1_000_000_000  # a failed task is restarted after 1 s (swarm's default is 5 s)
LOG_MAX_SIZE, LOG_MAX_FILE = "10m", "3"
NETWORK_RELEASE_WAIT = 20.0  # seconds a teardown waits for the tasks to leave the overlay
UPDATING_STATES = frozenset({"updating", "rollback_started"})
EDGE_LOG_TIMEOUT = 3.0  # seconds the manager may take to relay an edge task's log (a dead node's: forever)


def replica_service_name(ref: ServiceRef) -> str:
    """The swarm service of the replicas (≤ 63 characters: Name is at most 57); `tasks.<it>` in DNS."""
    return f"{ref.name}-{ref.uid[:5]}"


def balancer_service_name(ref: ServiceRef) -> str:
    return f"{ref.name}-lb{ref.uid[:3]}"


def monitor_seconds(spec: ServiceSpec) -> int:
    """How long swarm watches a new task before it counts the update of it a success: long enough for
    the balancer to see it pass its health checks (Rise intervals) plus a Fall's worth of slack. It is
    also the backend's health deadline: a new task running longer than this and not UP on the edges
    makes the backend roll the update back (`health_gate`)."""
    return (spec.HealthCheckRise + spec.HealthCheckFall) * spec.HealthCheckInterval + 2


def silent_pass_seconds(spec: ServiceSpec) -> float:
    """How long after a slot got a task's address a first check that HAProxy did not log (it passed like
    the slot's previous one) has certainly happened: an interval, the check's timeout, and slack."""
    return spec.HealthCheckInterval + min(spec.HealthCheckInterval, haproxy.CHECK_TIMEOUT_MAX) + 1.0


def update_delay_seconds(spec: ServiceSpec) -> int:
    """How long swarm waits after a new task before it replaces the next one: time for the edges to
    resolve it (DNS held 1 s) and see it pass its Rise checks, so a revision that never answers has
    replaced about one replica when the health gate stops it, not all of them."""
    return spec.HealthCheckRise * spec.HealthCheckInterval + 2


def replica_service_spec(
    ref: ServiceRef, spec: ServiceSpec, revision: int, tenant: str, network: str, ncpu: int, pids: int = 0
) -> dict[str, Any]:
    """The keyword arguments of the Docker API's create_service / update_service for the replicas."""
    labels = {LABEL_SERVICE: ref.name, LABEL_UID: ref.uid, LABEL_TENANT: tenant}
    container_labels = {**(spec.Labels or {}), **labels, LABEL_ROLE: ROLE_REPLICA, LABEL_REVISION: str(revision)}
    mounts = []
    for item in spec.Volumes or []:
        given, target, *mode = item.split(":")
        mounts.append(Mount(
            target=target, source=volume_name(tenant, ref.name, given), type="volume", read_only=mode == ["ro"],
            labels={LABEL_TENANT: tenant, LABEL_SERVICE: ref.name, LABEL_ROLE: ROLE_VOLUME, LABEL_VOLUME: given},
        ))
    container = ContainerSpec(
        image=spec.Image,
        command=spec.Entrypoint,  # swarm's "command" replaces the image's ENTRYPOINT, "args" its CMD
        args=spec.Cmd,
        env=spec.Env,
        workdir=spec.WorkingDir or None,
        labels=container_labels,
        mounts=mounts,
        stop_signal=spec.StopSignal,
        stop_grace_period=STOP_TIMEOUT * 1_000_000_000,
        tty=spec.Tty,
        open_stdin=spec.Stdin,
    )
    memory = spec.memory_bytes()
    resources = Resources(cpu_limit=min(spec.cpus(), ncpu) * 1_000_000_000, mem_limit=memory)
    if pids:  # TaskTemplate.Resources.Limits.Pids: API 1.41 (dockerd 20.10); the SDK has no argument for it
        resources["Limits"]["Pids"] = pids
    template = TaskTemplate(
        container_spec=container,
        resources=resources,
        restart_policy=RestartPolicy(condition="any", delay=RESTART_DELAY_NS),
        log_driver=DriverConfig("json-file", {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}),
        networks=[network],
    )
    monitor = monitor_seconds(spec) * 1_000_000_000
    return {
        "name": replica_service_name(ref),
        "labels": {**labels, LABEL_ROLE: ROLE_REPLICA, LABEL_REVISION: str(revision)},
        "task_template": template,
        "mode": ServiceMode("replicated", replicas=spec.Replicas),
        "update_config": UpdateConfig(parallelism=1, order="start-first", failure_action="rollback", monitor=monitor,
                                      delay=update_delay_seconds(spec) * 1_000_000_000),
        "rollback_config": RollbackConfig(parallelism=1, order="start-first", failure_action="pause", monitor=monitor),
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def balancer_config(spec: ServiceSpec, replicas_dns: str, slots: int) -> str:
    """haproxy.cfg of a swarm service's balancer: the replicas found by DNS (`server-template`), each
    checked as the health settings say; the front on FRONT_PORT (published as ServicePort)."""
    http = spec.Protocol in haproxy.HTTP_PROTOCOLS
    interval = spec.HealthCheckInterval
    port = spec.ContainerPort or spec.ServicePort
    lines = [
        f"# hyperservice balancer of service {spec.Name} on swarm: generated.",
        "global",
        "    log stdout format raw local0 info",
        f"    maxconn {haproxy.MAXCONN}",
        "",
        # Docker's embedded DNS answers `tasks.<service>` with the address of every running task.
        "resolvers docker",
        f"    nameserver dns {DNS_SERVER}",
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        "    hold valid 1s",  # re-asked every second: a new task joins, a gone one leaves, within ~1 s
        "    hold obsolete 1s",
        "    hold nx 1s",
        "    hold other 1s",
        "    hold refused 1s",
        "    hold timeout 1s",
        "    accepted_payload_size 8192",  # answers for many tasks do not fit 512 bytes
        "",
        "defaults",
        "    log global",
        f"    mode {'http' if http else 'tcp'}",
        f"    option {'httplog' if http else 'tcplog'}",
        "    option dontlog-normal",
        f"    timeout connect {haproxy.CONNECT_TIMEOUT}",
        f"    timeout check {min(interval, haproxy.CHECK_TIMEOUT_MAX)}s",
    ]
    if http:
        lines += ["    timeout client 60s", "    timeout server 60s", "    timeout http-request 10s",
                  "    timeout http-keep-alive 10s", "    timeout tunnel 1h"]
    else:
        lines += ["    timeout client 1h", "    timeout server 1h"]
    lines += ["    retries 3", "    option redispatch 1", "", f"frontend {haproxy.FRONTEND}",
              f"    bind 0.0.0.0:{FRONT_PORT}"]
    if http:
        lines += ["    option forwardfor", "    http-request set-header X-Forwarded-Proto http"]
    lines += [f"    default_backend {haproxy.BACKEND}", "", f"backend {haproxy.BACKEND}", f"    balance {spec.Algorithm}"]
    if spec.Algorithm == "source":
        lines.append("    hash-type consistent")
    if http:
        lines += ["    option httpchk GET /", "    retry-on conn-failure empty-response",
                  "    http-request disable-l7-retry unless METH_GET"]
    lines.append("    option log-health-checks")
    if spec.SessionAffinity:  # by client address: server-template slots carry no cookie names
        lines += [f"    stick-table type ip size {haproxy.STICK_TABLE_SIZE} expire {haproxy.STICK_EXPIRE}",
                  "    stick on src"]
    lines.append(
        f"    default-server check inter {interval}s fastinter {haproxy.FAST_CHECK_MS}ms"
        f" downinter {haproxy.DOWN_CHECK_MS}ms fall {spec.HealthCheckFall} rise {spec.HealthCheckRise}"
        f" observe layer4 error-limit {haproxy.OBSERVE_ERROR_LIMIT} on-error mark-down"
    )
    lines.append(
        f"    server-template {haproxy.SLOT_PREFIX} 1-{slots} {replicas_dns}:{port}"
        " resolvers docker resolve-prefer ipv4 init-addr none"
    )
    return "\n".join(lines) + "\n"


def balancer_service_spec(
    ref: ServiceRef, spec: ServiceSpec, tenant: str, network: str, image: str, config_id: str, config_name: str,
    edge_only: bool,
) -> dict[str, Any]:
    """The keyword arguments of create_service for the balancer: one HAProxy per edge node, ServicePort
    published in host mode on that node."""
    labels = {LABEL_SERVICE: ref.name, LABEL_UID: ref.uid, LABEL_TENANT: tenant, LABEL_ROLE: ROLE_BALANCER}
    container = ContainerSpec(
        image=image,
        labels=labels,
        configs=[ConfigReference(config_id, config_name, filename=haproxy.CONFIG_PATH)],
        stop_grace_period=2_000_000_000,
    )
    constraints = [f"node.labels.{EDGE_LABEL}==true"] if edge_only else []
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="any", delay=RESTART_DELAY_NS),
        placement=Placement(constraints=constraints),
        log_driver=DriverConfig("json-file", {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}),
        networks=[network],
    )
    port: dict[str, Any] = {"Protocol": "tcp", "TargetPort": FRONT_PORT, "PublishedPort": spec.ServicePort,
                            "PublishMode": "host"}
    return {
        "name": balancer_service_name(ref),
        "labels": {**labels, "io.hyperservice.config": config_name},
        "task_template": template,
        "mode": ServiceMode("global"),
        "endpoint_spec": EndpointSpec(mode="dnsrr", ports=cast(Any, [port])),  # the SDK types ports too narrowly
    }


def config_name(ref: ServiceRef, text: str) -> str:
    """Swarm configs are immutable: a new text is a new config, named by its hash."""
    return f"{balancer_service_name(ref)}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class TaskView:
    """One task of the replica service, as the API shows it."""

    id: str
    name: str
    state: str
    node: str
    address: str
    started: str
    revision: str
    image: str
    error: str


def task_view(task: dict[str, Any], service_name: str, nodes: dict[str, str], network_id: str) -> TaskView:
    status = task.get("Status") or {}
    address = ""
    for attachment in task.get("NetworksAttachments") or []:
        if (attachment.get("Network") or {}).get("ID") == network_id and attachment.get("Addresses"):
            address = str(attachment["Addresses"][0]).split("/")[0]
    container = ((task.get("Spec") or {}).get("ContainerSpec") or {})
    return TaskView(
        id=str(task.get("ID", "")),
        name=f"{service_name}.{task.get('Slot', '')}",
        state=str(status.get("State", "")),
        node=nodes.get(str(task.get("NodeID", "")), ""),
        address=address,
        started=str(status.get("Timestamp", "")) if status.get("State") == "running" else "",
        revision=str((container.get("Labels") or {}).get(LABEL_REVISION, "")),
        image=str(container.get("Image", "")).split("@")[0],
        error=str(status.get("Err", "")),
    )


def swarm_outcome(
    wanted: int, revision: int, tasks: Sequence[TaskView], update: dict[str, Any],
    health: Mapping[str, str] | None = None,
) -> Outcome:
    """What the service's status says, from its tasks (desired running), swarm's update status and, when
    given, each task's health on the edges (task id -> UP / DOWN / starting): `active` only when every
    replica runs and is UP, as on the docker engine; a replica DOWN makes the service `degraded`."""
    current = [t for t in tasks if t.revision == str(revision)]
    running = [t for t in current if t.state == "running"]
    state = str(update.get("State") or "")
    if state in UPDATING_STATES:
        what = "Rolling back" if state == "rollback_started" else "Rolling out"
        return Outcome(ServiceStatus.updating, f"{what}: {len(running)} of {wanted} replicas updated",
                       again_in=POLL_BUSY)
    if state == "rollback_completed" or state == "paused":
        why = str(update.get("Message") or state)
        return Outcome(ServiceStatus.error, f"swarm stopped the update: {why}", again_in=POLL_ACTIVE)
    if len(running) == wanted and len(tasks) == wanted:
        if health is None:
            return Outcome(ServiceStatus.active, "Scaling complete", again_in=POLL_ACTIVE)
        down = [t.name for t in running if health.get(t.id) == "DOWN"]
        if down:
            return Outcome(ServiceStatus.degraded, f"{len(down)} of {wanted} replicas DOWN (failing their health "
                           f"check: {', '.join(down)})", again_in=POLL_BUSY)
        up = [t for t in running if health.get(t.id) == "UP"]
        if running and not any(health.get(t.id) for t in running):
            # The board knows no edge task at all: nothing checks the replicas, nothing serves them.
            return Outcome(ServiceStatus.scaling, f"{wanted} of {wanted} replicas running; no balancer task runs on "
                           "an edge node (nodes labelled edge=true, or every node when none is), so none is "
                           "checked nor served", again_in=POLL_BUSY)
        if len(up) < wanted:
            return Outcome(ServiceStatus.scaling, f"{wanted} of {wanted} replicas running, {len(up)} passing their "
                           "health checks", again_in=POLL_BUSY)
        return Outcome(ServiceStatus.active, "Scaling complete", again_in=POLL_ACTIVE)
    failed = next((t.error for t in tasks if t.error and t.state in ("failed", "rejected")), "")
    waiting = next((f"{t.state}: {t.error}" for t in tasks if t.error and t.state not in ("failed", "rejected")), "")
    message = f"{len(running)} of {wanted} replicas running" + (
        f" (last failure: {failed})" if failed else f" ({waiting})" if waiting else "")
    return Outcome(ServiceStatus.scaling, message, again_in=POLL_BUSY)


def docker_time(stamp: str) -> float | None:
    """Epoch seconds of a Docker timestamp ("2026-11-29T10:17:27.387178734Z"); None when empty."""
    if not stamp or stamp.startswith("0001-"):
        return None
    head, _, rest = stamp.partition(".")
    fraction = rest.rstrip("Z")[:6] if rest else ""
    zone = "+00:00" if stamp.endswith("Z") else ""
    try:
        return datetime.fromisoformat(f"{head}{'.' + fraction.ljust(6, '0') if fraction else ''}{zone}").timestamp()
    except ValueError:
        return None


def health_gate(
    revision: int, tasks: Sequence[TaskView], health: Mapping[str, str], deadline: float, now: float
) -> TaskView | None:
    """The first task of the revision being rolled out that has been running longer than `deadline`
    seconds and is not UP on the edges: the rollout must be rolled back because of it (None: none)."""
    for task in tasks:
        started = docker_time(task.started)
        if task.revision != str(revision) or task.state != "running" or started is None:
            continue
        if now - started > deadline and health.get(task.id) != "UP":
            return task
    return None


class SwarmEngine(DockerEngine):
    """The engine of a Docker Swarm, talked to through one manager (DOCKER_HOST)."""

    name = "swarm"

    def __init__(self, *args: Any, lb_image: str, lb_fallback_image: str, slots: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lb_image, self.lb_fallback_image, self.slots = lb_image, lb_fallback_image, slots
        self._front_lock = threading.Lock()
        self._front_ips: list[str] = []
        # service uid -> (revision swarm rolled back, the revision it went back to, swarm's message)
        self._rolled_back: dict[str, tuple[int, int, str]] = {}
        self._declared: dict[str, int] = {}  # service uid -> the revision this backend last declared to swarm
        self._health_lock = threading.Lock()
        self._health: dict[str, SwarmHealthBoard] = {}  # service uid -> what its edges' logs said so far

    # -- the swarm ----------------------------------------------------------------------------

    def is_manager(self) -> bool:
        swarm = self.client.info().get("Swarm") or {}
        return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))

    def node_names(self) -> dict[str, str]:
        """node ID -> hostname."""
        return {str(n.id): str(n.attrs["Description"]["Hostname"]) for n in self.client.nodes.list()}

    def edge_addresses(self) -> tuple[list[str], bool]:
        """The ready edge nodes' addresses (every ready node's when none is labelled), and whether
        any node is labelled."""
        nodes = [n.attrs for n in self.client.nodes.list()]
        edges = [n for n in nodes if (n["Spec"].get("Labels") or {}).get(EDGE_LABEL) == "true"]
        chosen = edges or nodes
        ready = [str(n["Status"]["Addr"]) for n in chosen if n["Status"].get("State") == "ready"]
        return sorted(ready), bool(edges)

    def front_ips(self) -> list[str]:
        """The addresses the fronts answer on, as of the last look (no engine call)."""
        with self._front_lock:
            return list(self._front_ips)

    # -- the network: an overlay --------------------------------------------------------------

    def ensure_network(self, ref: ServiceRef, subnet: str | None = None) -> Network:
        """The service's overlay on `subnet`, from the product's pool (HYPERSERVICE_NETWORK_POOL). A node
        keeps a deleted overlay's subnet a while, so the pool hands a freed subnet out again only after
        the rest of the pool has been (next-fit, backend.store.next_fit_subnet); a subnet still held
        somewhere answers "overlaps" and the reconciler moves the service to another one (SubnetTaken)."""
        network = self.find_network(ref)
        if network is not None:
            return network
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]) if subnet else None
        try:
            return self.client.networks.create(
                network_name(ref), driver="overlay", attachable=True, check_duplicate=True,
                labels=self.labels(ref, ROLE_NETWORK), ipam=ipam,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return self.client.networks.get(network_name(ref))
            if subnet is not None and "overlap" in str(exc.explanation or exc).lower():
                raise SubnetTaken(subnet) from exc
            raise

    # -- whole services -----------------------------------------------------------------------

    def _api(self) -> Any:
        """The SDK's low-level client (its service calls are untyped)."""
        return self.client.api

    def _service(self, ref: ServiceRef, role: str) -> Any:
        labels = [f"{LABEL_UID}={ref.uid}", f"{LABEL_TENANT}={self.tenant}", f"{LABEL_ROLE}={role}"]
        found = self.client.services.list(filters={"label": labels})
        return found[0] if found else None

    def _balancer_image(self) -> str:
        if self.has_image(self.lb_image) or not self.has_image(self.lb_fallback_image):
            return self.lb_image
        return self.lb_fallback_image

    def converge(
        self, ref: ServiceRef, spec: ServiceSpec, revision: int, network: Network, rolling: bool = False
    ) -> Outcome:
        """Declare the service's swarm services as `spec` says (creating, scaling or rolling them;
        adopting those that exist already) and say how far swarm got. `rolling`: `revision` is being
        rolled out (not yet ready once): its tasks go through the health gate (`health_gate`)."""
        network_id = str(network.id)
        wanted = replica_service_spec(ref, spec, revision, self.tenant, network_id, self.ncpu(), self.limits.pids)
        service = self._service(ref, ROLE_REPLICA)
        if service is None:
            log.info("service %s: creating swarm service %s", ref.name, wanted["name"])
            created = self._api().create_service(**wanted)
            service = cast(Any, self.client.services).get(created["ID"])
            self._declared[ref.uid] = revision
        else:
            attrs = service.attrs
            replicas = ((attrs["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas")
            update = attrs.get("UpdateStatus") or {}
            label = str(attrs["Spec"]["Labels"].get(LABEL_REVISION, ""))
            rolling_back = str(update.get("State", "")).startswith("rollback")
            ours = self._rolled_back.get(ref.uid, (0,))[0] == revision  # the health gate's rollback
            if (rolling_back and not ours and label != str(revision) and label.isdigit()
                    and self._declared.get(ref.uid, revision) == revision):
                # swarm is rolling back the revision we declared (a new task failed within the monitor
                # window) and has put the previous spec back: never declared again (that would fight
                # swarm's rollback); the reconciler takes the rollback into the store (`rolled_back`).
                # (A rollback of an older revision, before this one was declared, is not this one's.)
                self._rolled_back[ref.uid] = (revision, int(label), str(update.get("Message") or "rolled back"))
            declared = label == str(revision) or self._rolled_back.get(ref.uid, (0,))[0] == revision
            if not declared or replicas != spec.Replicas:
                if declared:  # only the scale changes: keep what swarm runs now
                    wanted["task_template"] = attrs["Spec"]["TaskTemplate"]
                    wanted["labels"] = attrs["Spec"]["Labels"]
                log.info("service %s: updating swarm service (revision %s, %s replicas)", ref.name, revision,
                         spec.Replicas)
                self._api().update_service(service.id, attrs["Version"]["Index"], **wanted)
                self._declared[ref.uid] = revision
                service.reload()
        self._ensure_balancer(ref, spec, network_id)
        nodes = self.node_names()
        name = replica_service_name(ref)
        tasks = [task_view(t, name, nodes, network_id) for t in service.tasks(filters={"desired-state": "running"})]
        health = self.task_health(ref, tasks, spec)
        label = str(service.attrs["Spec"]["Labels"].get(LABEL_REVISION, ""))
        if rolling and label == str(revision) and self._rolled_back.get(ref.uid, (0,))[0] != revision:
            deadline = monitor_seconds(spec)
            failing = health_gate(revision, tasks, {t: h for t, (h, _) in health.items()}, deadline, time.time())
            if failing is not None:
                self._roll_back(ref, service, revision, f"replica {failing.name} (on {failing.node or '?'}) did not "
                                f"answer its health checks within {deadline} s")
        update = service.attrs.get("UpdateStatus") or {}
        if update.get("State") == "rollback_completed" and service.attrs["Spec"]["Labels"].get(LABEL_REVISION) == str(
            revision
        ):
            update = {}  # a rollback the store took in: this revision is the one to run
        elif self._rolled_back.get(ref.uid, (0,))[0] == revision:
            update = {"State": "rollback_started"}  # said as such until the store follows
        return swarm_outcome(spec.Replicas, revision, tasks, update, {t: h for t, (h, _) in health.items()})

    def _roll_back(self, ref: ServiceRef, service: Any, revision: int, reason: str) -> None:
        """Have swarm put the previous spec back (`docker service rollback`: the SDK has no call for it),
        and remember that `revision` was rolled back, and why, for the reconciler (`rolled_back`)."""
        previous = str(((service.attrs.get("PreviousSpec") or {}).get("Labels") or {}).get(LABEL_REVISION, ""))
        if not previous.isdigit() or previous == str(revision):
            return  # nothing of another revision to go back to: the service says what is wrong
        api = self._api()
        response = api._post_json(
            api._url("/services/{0}/update", service.id), data=service.attrs["Spec"],
            params={"version": service.attrs["Version"]["Index"], "rollback": "previous"},
        )
        api._raise_for_status(response)
        log.warning("service %s: rolling revision %s back to %s: %s", ref.name, revision, previous, reason)
        self._rolled_back[ref.uid] = (revision, int(previous), reason)
        service.reload()

    def _balancer_tasks(self, ref: ServiceRef) -> tuple[Any, list[str]]:
        """The balancer service and the ids of its running tasks on ready nodes (one per edge node): a
        task on a node swarm has down checks nothing, and the manager would wait for its log."""
        balancer = self._service(ref, ROLE_BALANCER)
        if balancer is None:
            return None, []
        ready = {str(n.id) for n in self.client.nodes.list() if (n.attrs.get("Status") or {}).get("State") == "ready"}
        tasks = balancer.tasks(filters={"desired-state": "running"})
        return balancer, [str(t["ID"]) for t in tasks
                          if (t.get("Status") or {}).get("State") == "running" and str(t.get("NodeID")) in ready]

    def task_health(
        self, ref: ServiceRef, tasks: Sequence[TaskView], spec: ServiceSpec | None = None
    ) -> dict[str, tuple[str, datetime | None]]:
        """task id -> (health on the edges, since when), from the logs of the balancer's running tasks,
        which the manager relays from every edge node (each read on from where the last one ended; from
        the start after a backend restart). See backend/engines/swarm_health.py for the rules."""
        balancer, running = self._balancer_tasks(ref)
        if balancer is None:
            return {t.id: ("", None) for t in tasks}
        with self._health_lock:
            board = self._health.setdefault(ref.uid, SwarmHealthBoard())
            since = {task: board.since_ns([task]) for task in running}
        with ThreadPoolExecutor(max_workers=max(1, len(since))) as pool:  # one slow node delays no other
            read = dict(zip(since, pool.map(self._edge_log, since, since.values()), strict=True))
        with self._health_lock:
            for lines in read.values():
                board.feed(lines)
            board.forget_except(running)
            grace = silent_pass_seconds(spec) if spec is not None else 0.0
            now = time.time_ns()
            return {t.id: board.health(t.address, running, now, int(grace * 1e9)) for t in tasks}

    def _edge_log(self, task: str, since_ns: int) -> list[str]:
        """One edge task's stdout lines since `since_ns`, with timestamps and details, through the
        manager. A node that stopped answering makes the manager wait for it: after EDGE_LOG_TIMEOUT
        the lines known so far stand (and swarm soon has that task down)."""
        api = self._api()
        params = {"details": 1, "follow": 0, "stdout": 1, "stderr": 0, "timestamps": 1,
                  "since": f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"}
        try:
            response = api._get(api._url("/tasks/{0}/logs", task), params=params, stream=True,
                                timeout=EDGE_LOG_TIMEOUT)
            api._raise_for_status(response)
            text = b"".join(api._multiplexed_response_stream_helper(response)).decode("utf-8", "replace")
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            log.info("health: the log of edge task %s not read: %s", task, exc)
            return []
        return text.splitlines()

    def rolled_back(self, ref: ServiceRef, revision: int) -> tuple[int, str] | None:
        """(the revision swarm went back to, why) when swarm rolled `revision` back itself."""
        found = self._rolled_back.get(ref.uid)
        return (found[1], found[2]) if found and found[0] == revision else None

    def _ensure_balancer(self, ref: ServiceRef, spec: ServiceSpec, network_id: str) -> None:
        addresses, edge_only = self.edge_addresses()
        with self._front_lock:
            self._front_ips = addresses
        if self._service(ref, ROLE_BALANCER) is not None:
            return
        text = balancer_config(spec, f"tasks.{replica_service_name(ref)}", self.slots)
        name = config_name(ref, text)
        found = self.client.configs.list(filters={"name": name})
        config = found[0] if found else self.client.configs.create(
            name=name, data=text.encode(), labels=self.labels(ref, ROLE_BALANCER)
        )
        wanted = balancer_service_spec(ref, spec, self.tenant, network_id, self._balancer_image(), str(config.id), name,
                                       edge_only)
        log.info("service %s: creating balancer service %s", ref.name, wanted["name"])
        self._api().create_service(**wanted)

    def tasks(self, ref: ServiceRef) -> list[TaskView]:
        """The replicas: the tasks swarm wants running (the newest of each slot)."""
        service = self._service(ref, ROLE_REPLICA)
        network = self.find_network(ref)
        if service is None:
            return []
        nodes = self.node_names()
        views = [task_view(t, service.name, nodes, str(network.id) if network else "")
                 for t in service.tasks(filters={"desired-state": "running"})]
        return sorted(views, key=lambda t: t.name)

    def container_infos(
        self, ref: ServiceRef, revision: int, image: str, port: int, spec: ServiceSpec | None = None
    ) -> list[ContainerInfo]:
        tasks = self.tasks(ref)
        health = self.task_health(ref, tasks, spec)
        infos = []
        for t in tasks:
            state, since = health.get(t.id, ("", None))
            infos.append(ContainerInfo(
                Id=t.id, Name=t.name, State=t.state, Health=state if t.state == "running" else "",
                HealthSince=since.isoformat().replace("+00:00", "Z") if since and t.state == "running" else "",
                Address=f"{t.address}:{port}" if t.address else "", Started=t.started, Restarts=0,
                Image=image if t.revision == str(revision) else t.image, Outdated=t.revision != str(revision),
                Node=t.node,
            ))
        return infos

    def remove_services(self, ref: ServiceRef, keep_replicas: bool = False) -> None:
        """Remove the balancer (and, unless `keep_replicas`, the replicas) and the balancer's configs."""
        roles = [ROLE_BALANCER] if keep_replicas else [ROLE_BALANCER, ROLE_REPLICA]
        for role in roles:
            service = self._service(ref, role)
            if service is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
        labels = [f"{LABEL_UID}={ref.uid}", f"{LABEL_TENANT}={self.tenant}"]
        for config in self.client.configs.list(filters={"label": labels}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # in use until its task goes
                config.remove()
        if not keep_replicas:
            with self._health_lock:
                self._health.pop(ref.uid, None)

    # -- the Engine protocol where the reconciler still calls it ------------------------------

    def replicas(self, ref: ServiceRef) -> list[Replica]:
        return [
            Replica(id=t.id, name=t.name, slot="", revision=t.revision, state=t.state, created=t.started, ip=t.address)
            for t in self.tasks(ref)
        ]

    def remove_containers(self, ref: ServiceRef, graceful: bool = True, stop_timeout: int = STOP_TIMEOUT) -> None:
        self.remove_services(ref)

    def remove_network(self, ref: ServiceRef) -> None:
        """Remove the overlay once the removed services' tasks have left it (bounded: still in use
        after NETWORK_RELEASE_WAIT raises, and the teardown retries with backoff)."""
        network = self.find_network(ref)
        if network is None:
            return
        deadline = time.monotonic() + NETWORK_RELEASE_WAIT
        while True:
            try:
                network.remove()
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if "active endpoints" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)  # a teardown thread, never a worker: the tasks are shutting down

    def owned_uids(self) -> dict[str, str]:
        """uid -> service name of this installation's swarm services and networks (the services own the
        task containers, which linger a moment after a delete: not counted)."""
        owned: dict[str, str] = {}
        for network in self.client.networks.list(filters={"label": f"{LABEL_TENANT}={self.tenant}"}):
            labels = network.attrs.get("Labels") or {}
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        for service in self.client.services.list(filters={"label": f"{LABEL_TENANT}={self.tenant}"}):
            labels = service.attrs["Spec"].get("Labels") or {}
            owned[labels.get(LABEL_UID, "")] = labels.get(LABEL_SERVICE, "")
        owned.pop("", None)
        return owned

    def logs(self, container_id: str, tail: int | None, follow: bool = False) -> Any:
        """A task's logs (container_id is the task's id), as the docker engine answers a container's."""
        api = self._api()  # the SDK has no call for a task's logs: its own helpers, as for a container's
        params = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1 if follow else 0,
                  "tail": "all" if tail is None else str(tail)}
        response = api._get(api._url("/tasks/{0}/logs", container_id), params=params, stream=follow)
        api._raise_for_status(response)
        if follow:
            return cast(ClosableStream[bytes], CancellableStream(api._get_result_tty(True, response, False), response))
        return b"".join(api._multiplexed_buffer_helper(response))
