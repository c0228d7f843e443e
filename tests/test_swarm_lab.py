"""The multi-node test bed (scripts/swarm-lab) really is a three-node Docker Swarm.

Three engines in their own network namespaces form one swarm with the offline images on every node; a
replicated dnsrr service spreads over the nodes and each task answers from the host at its node's lab
address (host-mode publishing); a node crash (every process of it killed) moves its tasks to the others
and `start` brings the node back; `up` again changes nothing; `down` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker.models.services import Service
from docker.types import EndpointSpec, ServiceMode

from bench.lab import Lab, parse_env, swarm_lab
from bench.polling import wait_until as poll_until
from tests.conftest import LB_IMAGE, WEB_IMAGE, WEB_IMAGE_2

pytestmark = pytest.mark.swarm

REPLICAS = 6


def running_tasks(service: Service) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = service.tasks(filters={"desired-state": "running"})
    return [task for task in tasks if task["Status"]["State"] == "running"]


def node_names(lab: Lab) -> dict[str, str]:
    """Node ID -> hostname (node1, ...)."""
    return {node.id: node.attrs["Description"]["Hostname"] for node in lab.manager.nodes.list()}


def published_port(task: dict[str, Any]) -> int:
    return int(task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"])


def answers_from_host(lab: Lab, tasks: list[dict[str, Any]]) -> dict[str, str]:
    """Container ID (12) of each task -> what its node's lab address answers on the task's port."""
    names = node_names(lab)
    answers: dict[str, str] = {}
    with httpx.Client(trust_env=False, timeout=5) as http:
        for task in tasks:
            url = f"http://{lab.address(names[task['NodeID']])}:{published_port(task)}/"
            try:
                body = http.get(url).text
            except httpx.HTTPError as error:
                body = f"{url}: {error!r}"
            answers[task["Status"]["ContainerStatus"]["ContainerID"][:12]] = body.split("\n")[0]
    return answers


def all_running(service: Service) -> list[dict[str, Any]]:
    return poll_until(
        lambda: (tasks := running_tasks(service)) and len(tasks) == REPLICAS and tasks, 90, f"{REPLICAS} running tasks"
    )


def all_answer(lab: Lab, tasks: list[dict[str, Any]]) -> dict[str, str]:
    """Each task, at its node's lab address and its own published port, answers with its own hostname."""
    return poll_until(
        lambda: (answers := answers_from_host(lab, tasks)) and all(k == v for k, v in answers.items()) and answers,
        30,
        "every task to answer with its container's hostname",
    )


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a running process (a zombie is dead), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else (pid, fields[19])


def node_processes(node: str) -> set[tuple[int, str]]:
    identities = (process_identity(int(pid)) for pid in swarm_lab("pids", node).split())
    return {identity for identity in identities if identity}


def dockerd_network_namespace(node: str) -> str:
    for pid in swarm_lab("pids", node).split():
        if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
            return os.readlink(f"/proc/{pid}/ns/net")
    raise AssertionError(f"no dockerd among {node}'s processes")


@pytest.fixture(scope="module")
def web_service(lab: Lab) -> Iterator[Service]:
    """6 replicas of the web image, DNS round robin (no VIP: no IPVS here), port 80 published in host
    mode on a port of each node's choosing."""
    service = lab.manager.services.create(
        WEB_IMAGE,
        name=f"lab-web-{uuid.uuid4().hex[:6]}",
        mode=ServiceMode("replicated", replicas=REPLICAS),
        endpoint_spec=EndpointSpec(mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}]),
    )
    yield service
    with contextlib.suppress(docker.errors.NotFound):  # gone with the lab when a test took it down
        service.remove()


def test_three_nodes_are_ready_in_one_swarm(lab: Lab) -> None:
    manager = lab.manager
    swarm = manager.swarm.attrs
    nodes = {node.attrs["Description"]["Hostname"]: node.attrs for node in manager.nodes.list()}
    assert sorted(nodes) == lab.nodes == ["node1", "node2", "node3"]
    for name, node in nodes.items():
        assert (node["Status"]["State"], node["Spec"]["Availability"]) == ("ready", "active"), name
        assert node["Status"]["Addr"] == lab.address(name)
        # each node its own engine, in its own namespaces, in this one swarm
        info = lab.engine(name).info()
        assert (info["Name"], info["Swarm"]["LocalNodeState"]) == (name, "active")
        assert info["Swarm"]["NodeID"] == node["ID"]
    assert nodes["node1"]["ManagerStatus"]["Leader"] is True
    assert [name for name, node in nodes.items() if node["Spec"]["Role"] == "manager"] == ["node1"]
    edges = sorted(name for name, node in nodes.items() if node["Spec"]["Labels"].get("edge") == "true")
    assert edges == lab.edge_nodes == ["node2", "node3"]
    namespaces = [dockerd_network_namespace(name) for name in lab.nodes]
    assert len({*namespaces, os.readlink("/proc/self/ns/net")}) == len(lab.nodes) + 1  # each its own, not the host's
    assert lab.env["HYPERSERVICE_LAB_HEARTBEAT"] == "1s"
    assert swarm["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 1_000_000_000  # fast failover


def test_the_offline_images_are_on_every_node(lab: Lab, docker_client: docker.DockerClient) -> None:
    for image in (WEB_IMAGE, WEB_IMAGE_2, LB_IMAGE):
        main_id = docker_client.images.get(image).id
        on_nodes = {node: lab.engine(node).images.get(image).id for node in lab.nodes}
        assert on_nodes == dict.fromkeys(lab.nodes, main_id), image


def test_the_host_reaches_the_nodes_through_the_lab_veth_only(lab: Lab) -> None:
    host_iface = lab.env["HYPERSERVICE_LAB_HOST_IFACE"]
    shown = subprocess.run(["ip", "-j", "addr", "show", "dev", host_iface], capture_output=True, text=True, check=True)
    addresses = [a["local"] for a in json.loads(shown.stdout)[0]["addr_info"] if a["family"] == "inet"]
    assert addresses == [lab.env["HYPERSERVICE_LAB_HOST_ADDR"]]
    assert {lab.route_device(node) for node in lab.nodes} == {host_iface}


def test_a_dnsrr_service_spreads_and_every_task_answers_from_the_host(lab: Lab, web_service: Service) -> None:
    tasks = all_running(web_service)
    names = node_names(lab)
    assert len({names[task["NodeID"]] for task in tasks}) >= 2
    assert len(all_answer(lab, tasks)) == REPLICAS


def test_a_killed_node_loses_every_process_its_tasks_move_and_start_brings_it_back(
    lab: Lab, web_service: Service
) -> None:
    manager = lab.manager
    tasks = all_running(web_service)
    names = node_names(lab)
    ids = {name: node_id for node_id, name in names.items()}
    workers = [name for name in lab.nodes if name != "node1"]  # node1 is the manager: keep it
    victim = max(workers, key=lambda name: sum(names[task["NodeID"]] == name for task in tasks))
    victim_containers = [t["Status"]["ContainerStatus"]["ContainerID"] for t in tasks if names[t["NodeID"]] == victim]
    assert victim_containers, f"no task on {victim}: {[names[t['NodeID']] for t in tasks]}"

    # the lab tracks every process of the node: its engine's task containers among them
    before = node_processes(victim)
    engine = lab.engine(victim)
    container_pids = {int(engine.containers.get(cid).attrs["State"]["Pid"]) for cid in victim_containers}
    assert container_pids <= {pid for pid, _ in before}

    swarm_lab("kill", victim)
    assert {identity for identity in before if process_identity(identity[0]) == identity} == set()
    assert swarm_lab("pids", victim).split() == []

    def moved() -> list[dict[str, Any]] | None:
        down = manager.nodes.get(ids[victim]).attrs["Status"]["State"] == "down"
        now = running_tasks(web_service)
        elsewhere = [task for task in now if task["NodeID"] != ids[victim]]
        return elsewhere if down and len(elsewhere) == REPLICAS == len(now) else None

    tasks = poll_until(moved, 60, f"{victim} down and {REPLICAS} tasks running on the other nodes")
    assert len(all_answer(lab, tasks)) == REPLICAS  # the moved ones from their new nodes

    swarm_lab("start", victim)  # returns once the manager has it Ready
    assert manager.nodes.get(ids[victim]).attrs["Status"]["State"] == "ready"
    assert lab.engine(victim).info()["Swarm"]["LocalNodeState"] == "active"


def test_up_again_keeps_the_running_lab(lab: Lab) -> None:
    cluster = lab.manager.swarm.attrs["ID"]
    node_ids = sorted(node.id for node in lab.manager.nodes.list())
    assert parse_env(swarm_lab("up")) == lab.env
    assert lab.manager.swarm.attrs["ID"] == cluster
    assert sorted(node.id for node in lab.manager.nodes.list()) == node_ids


def test_down_leaves_nothing_behind_and_up_builds_it_again(lab: Lab) -> None:
    env = lab.env
    processes = set().union(*(node_processes(node) for node in lab.nodes))
    assert processes

    swarm_lab("down")
    assert {identity for identity in processes if process_identity(identity[0]) == identity} == set()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    lab_namespaces = set(env["HYPERSERVICE_LAB_NETNS"].split(","))
    assert {line.split()[0] for line in namespaces.splitlines()} & lab_namespaces == set()
    link = subprocess.run(["ip", "link", "show", env["HYPERSERVICE_LAB_HOST_IFACE"]], capture_output=True)
    assert link.returncode != 0
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "to", "match", lab.address("node1")], capture_output=True, text=True, check=True
    ).stdout
    assert env["HYPERSERVICE_LAB_SUBNET"] not in routes
    mounts = Path("/proc/self/mountinfo").read_text()
    for directory in (env["HYPERSERVICE_LAB_RUN_DIR"], env["HYPERSERVICE_LAB_DATA_DIR"]):
        assert not Path(directory).exists()
        assert directory not in mounts
    cgroup = env["HYPERSERVICE_LAB_CGROUP"]
    assert [*Path("/sys/fs/cgroup").glob(cgroup), *Path("/sys/fs/cgroup").glob(f"*/{cgroup}")] == []
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert env["HYPERSERVICE_LAB_SUBNET"].rsplit(".", 1)[0] + "." not in rules
    assert env["HYPERSERVICE_LAB_HOST_IFACE"] not in rules

    assert parse_env(swarm_lab("up")) == env
    ready = [node.attrs["Status"]["State"] for node in lab.manager.nodes.list()]
    assert ready == ["ready"] * len(lab.nodes)
