"""The swarm engine's pure parts: a spec as swarm service specs, the balancer's HAProxy text, the status
read from tasks, and the HYPERSERVICE_ENGINE setting. No engine needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.docker_driver import ServiceRef
from backend.engines.swarm import (
    FRONT_PORT,
    TaskView,
    balancer_config,
    balancer_service_spec,
    docker_time,
    health_gate,
    monitor_seconds,
    replica_service_spec,
    swarm_outcome,
    update_delay_seconds,
)
from backend.models import ServiceSpec
from backend.settings import Settings

REF = ServiceRef("web", "0123456789abcdef")


def spec(**extra: object) -> ServiceSpec:
    body = {"Name": "web", "Image": "hyperservice-test/web:1", "Replicas": 3, "ServicePort": 8081, **extra}
    return ServiceSpec.model_validate(body)


def test_every_field_of_the_spec_lands_in_the_replica_service() -> None:
    given = spec(
        ContainerPort=80, ContainerSize="m1", Env=["A=1"], Cmd=["serve", "--fast"], Entrypoint=["/bin/sh", "-c"],
        WorkingDir="/srv", StopSignal="SIGINT", Labels={"team": "blue"}, Volumes=["data:/data", "conf:/etc/x:ro"],
        Tty=True, Stdin=True, HealthCheckInterval=2, HealthCheckRise=3, HealthCheckFall=2,
    )
    kwargs = replica_service_spec(REF, given, 4, "tenant1", "net-id", ncpu=2)
    assert kwargs["name"] == "web-01234"
    assert kwargs["labels"] == {
        "io.hyperservice.service": "web", "io.hyperservice.uid": REF.uid, "io.hyperservice.tenant": "tenant1",
        "io.hyperservice.role": "replica", "io.hyperservice.revision": "4",
    }
    assert kwargs["mode"] == {"replicated": {"Replicas": 3}}
    assert kwargs["endpoint_spec"]["Mode"] == "dnsrr"  # no VIP: no IPVS on the lab's kernel
    template = kwargs["task_template"]
    container = template["ContainerSpec"]
    assert container["Image"] == "hyperservice-test/web:1"
    assert (container["Command"], container["Args"]) == (["/bin/sh", "-c"], ["serve", "--fast"])
    assert (container["Env"], container["Dir"], container["StopSignal"]) == (["A=1"], "/srv", "SIGINT")
    assert (container["TTY"], container["OpenStdin"]) == (True, True)
    assert container["Labels"]["team"] == "blue"
    assert container["Labels"]["io.hyperservice.tenant"] == "tenant1"
    assert container["Labels"]["io.hyperservice.revision"] == "4"  # a redeploy is a new task spec
    mounts = {m["Target"]: m for m in container["Mounts"]}
    assert mounts["/data"]["Source"] == "hs-tenant1_web_data" and not mounts["/data"]["ReadOnly"]
    assert mounts["/etc/x"]["ReadOnly"] and mounts["/etc/x"]["Type"] == "volume"
    assert mounts["/data"]["VolumeOptions"]["Labels"]["io.hyperservice.volume"] == "data"
    limits = template["Resources"]["Limits"]
    assert limits["MemoryBytes"] == given.memory_bytes()
    assert limits["NanoCPUs"] == min(given.cpus(), 2) * 1_000_000_000
    assert template["RestartPolicy"]["Condition"] == "any"
    assert template["Networks"] == [{"Target": "net-id"}]
    assert template["LogDriver"]["Name"] == "json-file"
    update = kwargs["update_config"]
    assert (update["Parallelism"], update["Order"], update["FailureAction"]) == (1, "start-first", "rollback")
    assert update["Monitor"] == monitor_seconds(given) * 1_000_000_000 == (3 + 2) * 2 * 1_000_000_000 + 2_000_000_000
    assert kwargs["rollback_config"]["Order"] == "start-first"
    # the next task is replaced only once the previous new one had time to pass its Rise checks
    assert update["Delay"] == update_delay_seconds(given) * 1_000_000_000 == (3 * 2 + 2) * 1_000_000_000
    assert "Pids" not in limits  # no limit asked: none set


def test_the_replicas_pids_limit_lands_in_the_task_resources() -> None:
    kwargs = replica_service_spec(REF, spec(), 1, "t", "n", ncpu=2, pids=321)
    assert kwargs["task_template"]["Resources"]["Limits"]["Pids"] == 321


def test_a_size_with_more_cpus_than_the_nodes_gets_theirs() -> None:
    kwargs = replica_service_spec(REF, spec(ContainerSize="l3"), 1, "t", "n", ncpu=2)
    assert kwargs["task_template"]["Resources"]["Limits"]["NanoCPUs"] == 2_000_000_000


def test_the_balancer_runs_on_the_edge_nodes_publishing_service_port_in_host_mode() -> None:
    kwargs = balancer_service_spec(REF, spec(), "tenant1", "net-id", "haproxy:x", "cfg-id", "cfg-name", edge_only=True)
    assert kwargs["mode"] == {"global": {}}
    assert kwargs["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": FRONT_PORT, "PublishedPort": 8081, "PublishMode": "host"}
    ]
    template = kwargs["task_template"]
    assert template["Placement"]["Constraints"] == ["node.labels.edge==true"]
    assert template["ContainerSpec"]["Configs"][0]["File"]["Name"] == "/usr/local/etc/haproxy/haproxy.cfg"
    assert kwargs["labels"]["io.hyperservice.role"] == "balancer"
    everywhere = balancer_service_spec(REF, spec(), "t", "n", "haproxy:x", "c", "c", edge_only=False)
    assert everywhere["task_template"]["Placement"].get("Constraints") in (None, [])


def test_the_balancer_finds_the_replicas_by_dns_and_checks_them_as_configured() -> None:
    text = balancer_config(
        spec(Protocol="http", ContainerPort=80, HealthCheckInterval=2, HealthCheckFall=4, HealthCheckRise=3),
        "tasks.web-01234", slots=101,
    )
    lines = [line.strip() for line in text.splitlines()]
    assert "resolvers docker" in lines and "nameserver dns 127.0.0.11:53" in lines
    assert "server-template s 1-101 tasks.web-01234:80 resolvers docker resolve-prefer ipv4 init-addr none" in lines
    default = next(line for line in lines if line.startswith("default-server"))
    assert "check inter 2s" in default and "fall 4" in default and "rise 3" in default
    assert "option httpchk GET /" in lines and "mode http" in lines
    assert f"bind 0.0.0.0:{FRONT_PORT}" in lines
    tcp = balancer_config(spec(SessionAffinity=True), "tasks.x", slots=5).splitlines()
    assert "    mode tcp" in tcp and "    stick on src" in tcp
    assert not any("httpchk" in line for line in tcp)
    assert any(line.strip().startswith("server-template s 1-5 tasks.x:8081 ") for line in tcp)


def task(revision: str, state: str = "running", error: str = "") -> TaskView:
    return TaskView(id="t", name="web.1", state=state, node="node1", address="10.0.0.2", started="",
                    revision=revision, image="img", error=error)


@pytest.mark.parametrize(
    ("wanted", "revision", "tasks", "update", "status", "message"),
    [
        (2, 1, [task("1"), task("1")], {}, "active", "Scaling complete"),
        (2, 1, [task("1"), task("1", "starting")], {}, "scaling", "1 of 2 replicas running"),
        (1, 1, [task("1"), task("1")], {}, "scaling", "2 of 1 replicas running"),  # scaling down
        (2, 2, [task("1"), task("2")], {"State": "updating"}, "updating", "Rolling out: 1 of 2 replicas updated"),
        (2, 2, [task("1"), task("1")], {"State": "completed"}, "scaling", "0 of 2 replicas running"),  # not rolled yet
        (1, 1, [task("1", "failed", "task: non-zero exit (1)")], {}, "scaling",
         "0 of 1 replicas running (last failure: task: non-zero exit (1))"),
        (1, 2, [task("1")], {"State": "rollback_completed", "Message": "update rolled back"}, "error",
         "swarm stopped the update: update rolled back"),
    ],
)
def test_the_status_follows_the_tasks_and_the_update(
    wanted: int, revision: int, tasks: list[TaskView], update: dict[str, str], status: str, message: str
) -> None:
    outcome = swarm_outcome(wanted, revision, tasks, update)
    assert (outcome.status, outcome.message) == (status, message)
    assert outcome.again_in is not None  # swarm's task events are not followed: looked at again


def test_the_engine_setting_takes_docker_swarm_or_auto(tmp_path) -> None:
    assert Settings(data_dir=tmp_path).engine == "auto"
    assert Settings(data_dir=tmp_path, engine="swarm").engine == "swarm"
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, engine="kubernetes")


def test_only_the_swarm_engine_takes_whole_services_from_the_reconciler() -> None:
    from backend.engine import ServiceEngine
    from backend.engines.docker import DockerEngine
    from backend.engines.swarm import SwarmEngine

    assert not isinstance(DockerEngine("tenant"), ServiceEngine)  # planned replica by replica
    assert isinstance(SwarmEngine("tenant", lb_image="a", lb_fallback_image="b", slots=3), ServiceEngine)


def test_a_replica_not_up_is_not_active_and_one_down_makes_the_service_degraded() -> None:
    tasks = [TaskView(id=f"t{i}", name=f"web.{i}", state="running", node="n", address=f"10.0.0.{i}", started="",
                      revision="1", image="img", error="") for i in (1, 2)]
    assert swarm_outcome(2, 1, tasks, {}, {"t1": "UP", "t2": "UP"}).status == "active"
    starting = swarm_outcome(2, 1, tasks, {}, {"t1": "UP", "t2": "starting"})
    assert (starting.status, starting.message) == ("scaling", "2 of 2 replicas running, 1 passing their health checks")
    assert swarm_outcome(2, 1, tasks, {}, {"t1": "UP"}).status == "scaling"  # not seen by any edge yet
    no_edge = swarm_outcome(2, 1, tasks, {}, {"t1": "", "t2": ""})  # no edge task runs
    assert no_edge.status == "scaling" and "no balancer task runs on an edge node" in no_edge.message
    down = swarm_outcome(2, 1, tasks, {}, {"t1": "DOWN", "t2": "UP"})
    assert (down.status, down.message) == ("degraded", "1 of 2 replicas DOWN (failing their health check: web.1)")


def test_the_health_gate_picks_a_new_task_past_its_deadline_that_is_not_up() -> None:
    started = "2026-11-29T10:00:00.5Z"
    at = docker_time(started)
    assert at is not None and docker_time("2026-11-29T10:00:00.512345678Z") == pytest.approx(at + 0.012345678)
    assert docker_time("") is None and docker_time("0001-01-01T00:00:00Z") is None

    def view(ident: str, revision: str, state: str = "running") -> TaskView:
        return TaskView(id=ident, name=f"web.{ident}", state=state, node="n", address="", started=started,
                        revision=revision, image="img", error="")

    tasks = [view("old", "1"), view("new", "2"), view("queued", "2", "starting")]
    health = {"old": "DOWN", "new": "starting"}
    assert health_gate(2, tasks, health, deadline=4, now=at + 3) is None  # still within its deadline
    assert health_gate(2, tasks, health, deadline=4, now=at + 5) == tasks[1]
    assert health_gate(2, tasks, {**health, "new": "UP"}, deadline=4, now=at + 5) is None
    assert health_gate(2, tasks, {}, deadline=4, now=at + 5) == tasks[1]  # no edge saw it at all
    assert health_gate(3, tasks, health, deadline=4, now=at + 5) is None  # only the revision rolled out
