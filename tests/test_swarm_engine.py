"""The `swarm` engine on the real lab swarm (scripts/swarm-lab: three dockerds, one swarm).

One service of 6 replicas is made once for the module and taken through its life in order: it spreads
over the nodes and answers through its front on every edge node; scales 6 → 2 → 6; rolls to a new
image under load without a failed request; survives a node crash (its replicas rescheduled, the API
showing each replica's node); and a new backend on the same data dir adopts it without recreating
anything. Each test first waits for the service to be back where the previous one left it.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import random
import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from textual.widgets import DataTable

from backend.core import Backend
from backend.docker_driver import ReplicaLimits
from bench.lab import Lab, swarm_lab
from bench.load import SteadyLoad
from tests.conftest import WEB_IMAGE, WEB_IMAGE_2, client_for, eventually, make_settings, wait_status
from tui.app import ConsoleApp
from tui.screens.service import STATS_REFUSED_NOTE

pytestmark = pytest.mark.swarm

NAME = "sweb"
REPLICAS = 6
VICTIM = "node3"  # an edge worker: the manager (node1) stays, and node2's front keeps answering


def remove_tenant_services(client: docker.DockerClient, tenant: str) -> None:
    label = f"io.hyperservice.tenant={tenant}"
    for service in client.services.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
    for config in client.configs.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            config.remove()


@pytest.fixture(scope="module")
def swarm_backend(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A backend on the lab's manager (engine chosen by `auto`), and its data dir for a successor."""
    data_dir = Path(tmp_path_factory.mktemp("swarm")) / "data"
    port = random.randint(20000, 29999)  # published on the lab's edge nodes: never a host port
    state: dict[str, Any] = {"data_dir": data_dir, "port": port, "settings": make_settings(data_dir, engine="auto")}
    state["backend"] = Backend(state["settings"], lab.manager)
    state["backend"].start()
    tenant = state["backend"].tenant
    try:
        yield state
    finally:
        state["backend"].close()
        remove_tenant_services(lab.manager, tenant)
        network_label = f"io.hyperservice.tenant={tenant}"
        for _ in range(40):  # the overlay goes once the tasks left it
            networks = lab.manager.networks.list(filters={"label": network_label})
            for network in networks:
                with contextlib.suppress(docker.errors.APIError):
                    network.remove()
            if not networks:
                break
            time.sleep(0.5)


def front_answers(lab: Lab, port: int, attempts: int = 12) -> dict[str, set[str]]:
    """edge node -> the replicas (hostnames) that answered through the front at its address."""
    seen: dict[str, set[str]] = {}
    with httpx.Client(trust_env=False, timeout=5) as http:
        for node in lab.edge_nodes:
            for _ in range(attempts):
                try:
                    response = http.get(f"http://{lab.address(node)}:{port}/")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    seen.setdefault(node, set()).add(response.text.split("\n")[0])
    return seen


async def settled(api: httpx.AsyncClient, replicas: int, image: str | None = None, timeout: float = 120) -> list[dict]:
    """The service active with `replicas` running replicas of `image` (default: the service's own), each
    UP on the edges; its containers."""

    async def check() -> list[dict] | None:
        service = (await api.get(f"/services/{NAME}")).json()
        wanted = image or service["Image"]
        containers = (await api.get(f"/services/{NAME}/containers")).json()
        running = [c for c in containers if c["State"] == "running" and c["Image"] == wanted and not c["Outdated"]
                   and c["Health"] == "UP"]
        ok = service["Status"] == "active" and service["Replicas"] == replicas and len(running) == len(containers)
        return containers if ok and len(containers) == replicas else None

    return await eventually(check, timeout, interval=0.5, what=f"{NAME} active with {replicas} replicas of {image or 'its image'}")


async def test_the_engine_is_swarm_and_a_service_spreads_and_answers_on_every_edge_node(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    port = swarm_backend["port"]
    async with client_for(swarm_backend["backend"]) as api:
        assert (await api.get("/engine")).json() == {"Engine": "swarm"}
        body = {"Name": NAME, "Image": WEB_IMAGE, "Replicas": REPLICAS, "ServicePort": port, "ContainerPort": 80,
                "Protocol": "http", "HealthCheckInterval": 1, "HealthCheckRise": 1, "HealthCheckFall": 2}
        assert (await api.post("/services/create", json=body)).status_code == 201
        containers = await settled(api, REPLICAS)
        service = (await api.get(f"/services/{NAME}")).json()
    assert sorted(service["Containers"]) == sorted(c["Id"] for c in containers)
    nodes = {c["Node"] for c in containers}
    assert len(nodes) >= 2 and nodes <= set(lab.nodes), nodes
    assert service["IP"] in {lab.address(node) for node in lab.edge_nodes}
    # the swarm objects: a dnsrr replica service and a global balancer, on the edge nodes only
    tenant = swarm_backend["backend"].tenant
    services = {s.attrs["Spec"]["Labels"]["io.hyperservice.role"]: s.attrs
                for s in lab.manager.services.list(filters={"label": f"io.hyperservice.tenant={tenant}"})}
    assert services["replica"]["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert services["replica"]["Spec"]["Mode"]["Replicated"]["Replicas"] == REPLICAS
    assert "global" in {k.lower() for k in services["balancer"]["Spec"]["Mode"]}

    def every_edge_answers() -> dict[str, set[str]] | None:
        seen = front_answers(lab, port)
        return seen if set(seen) == set(lab.edge_nodes) and all(len(v) >= 2 for v in seen.values()) else None

    seen = await eventually(every_edge_answers, 60, interval=0.5, what="the front on every edge node")
    ids = {c["Id"] for c in containers}
    assert ids  # the hostnames answering are task containers; they spread over several replicas
    assert all(len(replicas) >= 2 for replicas in seen.values())
    assert all(c["HealthSince"] for c in containers)
    # the overlay's subnet comes from the product's network pool
    network = lab.manager.networks.list(filters={"label": [f"io.hyperservice.tenant={tenant}"]})[0]
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    assert subnet.subnet_of(ipaddress.ip_network(swarm_backend["settings"].network_pool)), subnet
    assert all(ipaddress.ip_address(c["Address"].split(":")[0]) in subnet for c in containers)
    # each task's container, on its own node's engine, has the replicas' pids limit
    task = lab.manager.api.tasks(filters={"service": services["replica"]["ID"], "desired-state": "running"})[0]
    node = lab.manager.nodes.get(task["NodeID"]).attrs["Description"]["Hostname"]
    container = lab.engine(node).containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container.attrs["HostConfig"]["PidsLimit"] == ReplicaLimits().pids


async def test_scale_down_to_two_and_back_to_six(lab: Lab, swarm_backend: dict[str, Any]) -> None:
    async with client_for(swarm_backend["backend"]) as api:
        await settled(api, REPLICAS)
        tenant = swarm_backend["backend"].tenant
        replica_service = lab.manager.services.list(filters={"label": [f"io.hyperservice.tenant={tenant}",
                                                                       "io.hyperservice.role=replica"]})[0]
        assert (await api.post(f"/services/{NAME}/update", json={"Replicas": 2})).status_code == 200
        await settled(api, 2)
        replica_service.reload()  # the same swarm service, scaled
        assert replica_service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
        assert (await api.post(f"/services/{NAME}/update", json={"Replicas": REPLICAS})).status_code == 200
        containers = await settled(api, REPLICAS)
    assert len({c["Node"] for c in containers}) >= 2


def task_container(lab: Lab, task_id: str) -> docker.models.containers.Container:
    """A task's container, on the engine of the node it runs on (the lab's own sockets)."""
    task = lab.manager.api.inspect_task(task_id)
    node = lab.manager.nodes.get(task["NodeID"]).attrs["Description"]["Hostname"]
    return lab.engine(node).containers.get(task["Status"]["ContainerStatus"]["ContainerID"])


async def test_a_replica_that_stops_answering_shows_down_and_the_service_degraded_then_recovers(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    async with client_for(swarm_backend["backend"]) as api:
        containers = await settled(api, REPLICAS)
        victim = containers[0]
        frozen = task_container(lab, victim["Id"])
        frozen.pause()  # it runs on but answers nothing: swarm sees a running task, HAProxy a dead server
        try:
            async def down() -> dict | None:
                service = (await api.get(f"/services/{NAME}")).json()
                now = {c["Id"]: c for c in (await api.get(f"/services/{NAME}/containers")).json()}
                ok = now[victim["Id"]]["Health"] == "DOWN" and service["Status"] == "degraded"
                return {"service": service, "containers": now} if ok else None

            seen = await eventually(down, 60, interval=0.5, what=f"{victim['Name']} DOWN, the service degraded")
            assert victim["Name"] in seen["service"]["Message"]
            others = [c for i, c in seen["containers"].items() if i != victim["Id"]]
            assert all(c["Health"] == "UP" for c in others)
        finally:
            frozen.unpause()
        after = await settled(api, REPLICAS)
    assert victim["Id"] in {c["Id"] for c in after}  # the same task came back UP


async def test_what_does_not_fit_swarm_answers_400_and_changes_nothing(swarm_backend: dict[str, Any]) -> None:
    async with client_for(swarm_backend["backend"]) as api:
        before = (await api.get(f"/services/{NAME}")).json()
        response = await api.post(f"/services/{NAME}/update", json={"FIP": "127.0.0.9"})
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == "FIP"
        assert "swarm" in response.json()["errors"][0]["message"]
        assert (await api.get(f"/services/{NAME}/balancer")).status_code == 400
        stats = await api.get(f"/services/{NAME}/stats")
        assert stats.status_code == 400 and "node" in stats.json()["message"] and "swarm" in stats.json()["message"]
        assert (await api.get("/services/nosuch/stats")).status_code == 404
        response = await api.delete(f"/services/{NAME}?volumes=true")
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "volumes"
        after = (await api.get(f"/services/{NAME}")).json()
    assert after["Status"] != "deleting" and after["FIP"] == before["FIP"] == ""


async def test_a_rolling_update_under_load_fails_no_request(lab: Lab, swarm_backend: dict[str, Any]) -> None:
    port = swarm_backend["port"]
    front = lab.address(lab.edge_nodes[0])
    async with client_for(swarm_backend["backend"]) as api:
        before = {c["Id"] for c in await settled(api, REPLICAS)}
        with SteadyLoad(front, port, threads=3) as load:
            await eventually(lambda: load.result.ok >= 20, 30, what="load flowing")
            assert (await api.post(f"/services/{NAME}/update", json={"Image": WEB_IMAGE_2})).status_code == 200
            after = await settled(api, REPLICAS, WEB_IMAGE_2, timeout=240)
            served = load.result.ok
            await eventually(lambda: load.result.ok >= served + 20, 30, what="load after the rollout")
        revisions = (await api.get(f"/services/{NAME}/revisions")).json()
    assert load.result.failed == 0, load.result.errors
    assert not before & {c["Id"] for c in after}  # every replica replaced
    assert (revisions[0]["Image"], revisions[0]["Outcome"]) == (WEB_IMAGE_2, "active")


async def test_a_node_crash_reschedules_its_replicas_and_the_api_shows_their_nodes(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    port = swarm_backend["port"]
    async with client_for(swarm_backend["backend"]) as api:
        containers = await settled(api, REPLICAS)
        assert any(c["Node"] == VICTIM for c in containers), [c["Node"] for c in containers]
        try:
            swarm_lab("kill", VICTIM)

            async def check() -> list[dict] | None:
                with contextlib.suppress(AssertionError):  # not settled yet
                    now = await settled(api, REPLICAS, timeout=2)
                    return now if all(c["Node"] and c["Node"] != VICTIM for c in now) else None
                return None

            after = await eventually(check, 120, interval=1, what=f"{VICTIM}'s replicas running elsewhere, active")
            assert {c["Node"] for c in after} <= set(lab.nodes) - {VICTIM}
            seen = front_answers(lab, port)
            assert lab.edge_nodes[0] in seen  # the surviving edge node's front serves the moved replicas
        finally:
            swarm_lab("start", VICTIM)


async def test_a_new_backend_on_the_same_data_dir_adopts_everything(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    old: Backend = swarm_backend["backend"]
    tenant = old.tenant
    async with client_for(old) as api:
        await settled(api, REPLICAS, WEB_IMAGE_2)

    def snapshot() -> dict[str, tuple[str, int]]:
        return {s.id: (s.name, s.attrs["Version"]["Index"])
                for s in lab.manager.services.list(filters={"label": f"io.hyperservice.tenant={tenant}"})}

    before = snapshot()
    old.close()
    successor = Backend(make_settings(swarm_backend["data_dir"], engine="auto",
                                      network_pool=swarm_backend["settings"].network_pool), lab.manager)
    swarm_backend["backend"] = successor  # the fixture closes this one
    assert successor.tenant == tenant
    successor.reconciler.sync(NAME)  # what a worker does first: observe, find, report
    successor.start()
    async with client_for(successor) as api:
        # the health comes back at once: the edges' logs are read again from their start
        first = (await api.get(f"/services/{NAME}/containers")).json()
        assert [c["Health"] for c in first] == ["UP"] * REPLICAS, first
        assert (await api.get(f"/services/{NAME}")).json()["Status"] == "active"
        containers = await settled(api, REPLICAS, WEB_IMAGE_2)
    assert snapshot() == before  # the same swarm services, not even updated
    assert all(c["Node"] for c in containers)
    assert front_answers(lab, swarm_backend["port"])
    await the_console_shows_the_engine_and_each_replicas_node(successor, containers)


async def the_console_shows_the_engine_and_each_replicas_node(backend: Backend, containers: list[dict]) -> None:
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(160, 40)) as pilot:

        async def shown(check: Any, what: str) -> Any:
            async def probe() -> Any:
                await pilot.pause()
                return check()

            return await eventually(probe, 30, interval=0.05, what=what)

        await shown(lambda: "swarm engine" in app.sub_title, "the engine in the header")
        await shown(lambda: NAME in app.screen.query_one("#services", DataTable).rows, "the service's row")
        await pilot.press("enter")
        table = await shown(lambda: (t := app.screen.query_one("#containers", DataTable)).row_count == REPLICAS and t,
                            "the replicas listed")
        nodes = {str(row.value): getattr(table.get_cell(row, "Node"), "plain", "") for row in table.rows}
        # no stats on swarm (the backend answers 400): a one-line note instead of the CPU / memory figures
        summary = app.screen.query_one("#summary")
        await shown(lambda: STATS_REFUSED_NOTE in str(summary.render()), "the no-stats note in the summary")
        assert app.screen.is_current and not re.search(r"CPU \d", str(summary.render()))
    assert nodes == {c["Id"]: c["Node"] for c in containers}


async def test_delete_removes_the_swarm_services_the_config_and_the_network(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    backend: Backend = swarm_backend["backend"]
    label = f"io.hyperservice.tenant={backend.tenant}"
    async with client_for(backend) as api:
        await settled(api, REPLICAS, WEB_IMAGE_2)
        assert lab.manager.services.list(filters={"label": label})
        assert (await api.delete(f"/services/{NAME}")).status_code == 202

        async def gone() -> bool:
            return (await api.get(f"/services/{NAME}")).status_code == 404

        await eventually(gone, 60, interval=0.5, what=f"{NAME} deleted")
    assert lab.manager.services.list(filters={"label": label}) == []
    assert lab.manager.configs.list(filters={"label": label}) == []
    # the manager lists a removed overlay a moment longer
    await eventually(lambda: lab.manager.networks.list(filters={"label": label}) == [], 20, interval=0.5,
                     what="the overlay network removed")


async def test_logs_come_from_the_tasks_each_line_labelled_with_its_replica(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    backend: Backend = swarm_backend["backend"]
    body = {"Name": "slog", "Image": WEB_IMAGE, "Replicas": 2, "ServicePort": swarm_backend["port"] + 1,
            "ContainerPort": 80, "Cmd": ["/bin/sh", "-c", "echo hello from $(hostname); exec /bin/serve"]}
    async with client_for(backend) as api:
        assert (await api.post("/services/create", json=body)).status_code == 201
        try:
            async def both_logged() -> list[str] | None:
                containers = (await api.get("/services/slog/containers")).json()
                if len(containers) != 2 or any(c["State"] != "running" for c in containers):
                    return None
                lines = (await api.get("/services/slog/logs")).text.splitlines()
                names = {c["Name"] for c in containers}
                labelled = [line for line in lines if line.split(" ")[1] in names and "| hello from " in line]
                return labelled if {line.split(" ")[1] for line in labelled} == names else None

            lines = await eventually(both_logged, 90, interval=0.5, what="a hello line from each replica")
            one = (await api.get("/services/slog/containers")).json()[0]
            only = (await api.get("/services/slog/logs", params={"container": one["Name"]})).text.splitlines()
            assert only and all(line.split(" ")[1] == one["Name"] for line in only)
            assert len(lines) >= 2
        finally:
            await api.delete("/services/slog")
            await eventually(lambda: backend.store.get("slog") is None, 60, interval=0.5, what="slog deleted")


async def test_delete_with_keep_removes_the_front_and_leaves_the_replicas_running(
    lab: Lab, swarm_backend: dict[str, Any]
) -> None:
    backend: Backend = swarm_backend["backend"]
    body = {"Name": "skeep", "Image": WEB_IMAGE, "Replicas": 2, "ServicePort": swarm_backend["port"] + 2,
            "ContainerPort": 80}
    label = f"io.hyperservice.tenant={backend.tenant}"

    def roles() -> dict[str, Any]:
        return {s.attrs["Spec"]["Labels"]["io.hyperservice.role"]: s
                for s in lab.manager.services.list(filters={"label": [label, "io.hyperservice.service=skeep"]})}

    async with client_for(backend) as api:
        assert (await api.post("/services/create", json=body)).status_code == 201
        await eventually(lambda: set(roles()) == {"replica", "balancer"}, 60, interval=0.5, what="both swarm services")
        assert (await api.delete("/services/skeep?keep=true")).status_code == 202
        await eventually(lambda: backend.store.get("skeep") is None, 60, interval=0.5, what="skeep deleted")
    kept = roles()
    try:
        assert set(kept) == {"replica"}  # the front is gone, the replicas run on
        assert kept["replica"].attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    finally:
        for service in kept.values():
            service.remove()


def build_image(engine: docker.DockerClient, dockerfile: bytes, tag: str) -> None:
    """Build `tag` on `engine` from `dockerfile` alone (offline: nothing pulled)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    engine.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True)


@pytest.fixture
def failing_image(lab: Lab) -> Iterator[str]:
    """An image whose replicas exit at once, on the manager only (built offline from the web image):
    tasks placed elsewhere fail too (no such image, and the nodes never pull)."""
    tag = f"hyperservice-test/swarm-exits:{uuid.uuid4().hex[:6]}"
    dockerfile = f'FROM {WEB_IMAGE}\nENTRYPOINT ["/bin/false"]\n'.encode()
    build_image(lab.manager, dockerfile, tag)
    yield tag
    with contextlib.suppress(docker.errors.APIError):
        lab.manager.images.remove(tag, force=True)


async def test_an_update_whose_replicas_fail_is_rolled_back_by_swarm_and_the_service_follows(
    lab: Lab, swarm_backend: dict[str, Any], failing_image: str
) -> None:
    backend: Backend = swarm_backend["backend"]
    body = {"Name": "sroll", "Image": WEB_IMAGE, "Replicas": 2, "ServicePort": swarm_backend["port"] + 3,
            "ContainerPort": 80, "HealthCheckInterval": 1, "HealthCheckRise": 1, "HealthCheckFall": 1}
    async with client_for(backend) as api:
        assert (await api.post("/services/create", json=body)).status_code == 201
        try:
            try:
                await wait_status(api, "sroll", "active", 90)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {(await api.get('/services/sroll')).json()}") from None
            before = {c["Id"] for c in (await api.get("/services/sroll/containers")).json()}
            assert (await api.post("/services/sroll/update", json={"Image": failing_image})).status_code == 200

            async def rolled_back() -> dict | None:
                service = (await api.get("/services/sroll")).json()
                ok = service["Status"] == "active" and service["Message"].startswith("rolled back to revision 1")
                return service if ok else None

            service = await eventually(rolled_back, 120, interval=0.5, what="sroll rolled back and active")
            assert service["Image"] == WEB_IMAGE
            revisions = (await api.get("/services/sroll/revisions")).json()
            assert [(r["Number"], r["Outcome"]) for r in revisions][:2] == [(2, "rolled back"), (1, "active")]
            containers = (await api.get("/services/sroll/containers")).json()
            assert len(containers) == 2 and all(c["Image"] == WEB_IMAGE and not c["Outdated"] for c in containers)
            assert {c["Id"] for c in containers} & before  # start-first: the old replicas served on
        finally:
            await api.delete("/services/sroll")
            await eventually(lambda: backend.store.get("sroll") is None, 60, interval=0.5, what="sroll deleted")


@pytest.fixture
def silent_image(lab: Lab) -> Iterator[str]:
    """An image whose replicas run but answer nothing (no server: a shell loop), on every node (built
    offline from the web image; the nodes never pull)."""
    tag = f"hyperservice-test/swarm-silent:{uuid.uuid4().hex[:6]}"
    dockerfile = (f"FROM {WEB_IMAGE}\n"
                  """ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]\n""").encode()
    for node in lab.nodes:
        build_image(lab.engine(node), dockerfile, tag)
    yield tag
    for node in lab.nodes:
        with contextlib.suppress(docker.errors.APIError):
            lab.engine(node).images.remove(tag, force=True)


async def test_an_update_whose_replicas_run_but_never_answer_is_rolled_back_by_the_health_gate(
    lab: Lab, swarm_backend: dict[str, Any], silent_image: str
) -> None:
    """Swarm sees the new tasks running; only the edges' health checks say they serve nothing. The
    backend rolls the swarm service back once a new task is past its health deadline and not UP."""
    backend: Backend = swarm_backend["backend"]
    port = swarm_backend["port"] + 4
    body = {"Name": "sgate", "Image": WEB_IMAGE, "Replicas": 3, "ServicePort": port, "ContainerPort": 80,
            "Protocol": "http", "HealthCheckInterval": 1, "HealthCheckRise": 1, "HealthCheckFall": 1}
    async with client_for(backend) as api:
        assert (await api.post("/services/create", json=body)).status_code == 201
        try:
            await wait_status(api, "sgate", "active", 90)
            before = {c["Id"] for c in (await api.get("/services/sgate/containers")).json()}
            with SteadyLoad(lab.address(lab.edge_nodes[0]), port, threads=2) as load:
                await eventually(lambda: load.result.ok >= 20, 30, what="load flowing")
                assert (await api.post("/services/sgate/update", json={"Image": silent_image})).status_code == 200

                async def rolled_back() -> dict | None:
                    service = (await api.get("/services/sgate")).json()
                    ok = service["Status"] == "active" and service["Message"].startswith("rolled back to revision 1")
                    return service if ok else None

                try:
                    service = await eventually(rolled_back, 180, interval=0.5, what="sgate rolled back and active")
                except AssertionError as exc:
                    now = (await api.get("/services/sgate")).json()
                    replicas = (await api.get("/services/sgate/containers")).json()
                    raise AssertionError(f"{exc}: {now['Status']}: {now['Message']}; {replicas}") from None
                served = load.result.ok
                await eventually(lambda: load.result.ok >= served + 20, 30, what="load after the rollback")
            revisions = (await api.get("/services/sgate/revisions")).json()
            containers = (await api.get("/services/sgate/containers")).json()
        finally:
            await api.delete("/services/sgate")
            await eventually(lambda: backend.store.get("sgate") is None, 60, interval=0.5, what="sgate deleted")
    assert service["Image"] == WEB_IMAGE
    assert "did not answer its health checks" in service["Message"], service["Message"]
    assert [(r["Number"], r["Outcome"]) for r in revisions][:2] == [(2, "rolled back"), (1, "active")]
    assert "sgate-" in revisions[0]["Reason"] and "health checks" in revisions[0]["Reason"], revisions[0]
    assert len(containers) == 3 and all(c["Image"] == WEB_IMAGE and c["Health"] == "UP" for c in containers)
    assert {c["Id"] for c in containers} & before  # start-first, one task at a time: old replicas served on
    print(f"health-gated rollback under load: {load.result.ok} ok, {load.result.failed} failed {load.result.errors}")
    assert load.result.failed <= 3, load.result.errors  # the edges retry a refused connection elsewhere
