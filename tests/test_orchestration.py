"""Replicas on the real Docker engine: field mapping, sizes, scaling, replacement, rollout, delete."""

from __future__ import annotations

import asyncio
import urllib.request

import docker
import httpx

from backend.docker_driver import LABEL_ROLE, LABEL_SERVICE, LABEL_TENANT, LABEL_UID, volume_name
from tests.conftest import WEB_IMAGE, WEB_IMAGE_2, eventually, wait_status, web_body


def replicas_of(docker_client: docker.DockerClient, backend, name: str, running_only: bool = True) -> list:
    labels = [f"{LABEL_TENANT}={backend.tenant}", f"{LABEL_SERVICE}={name}", f"{LABEL_ROLE}=replica"]
    found = docker_client.containers.list(all=not running_only, filters={"label": labels})
    return found


def http_get(address: str, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=3) as response:
        return response.read().decode()


async def test_every_field_reaches_the_container(api: httpx.AsyncClient, backend, docker_client):
    body = web_body(
        "fields", 1,
        ContainerSize="s1", WorkingDir="/tmp", Tty=True, Stdin=True, StopSignal="SIGQUIT",
        Env=["GREETING=hello world", "PORT=8080"], ServicePort=80, ContainerPort=8080,
        Labels={"team": "ops"}, Volumes=["hbx-test-data:/data", "hbx-test-conf:/conf:ro"],
        Entrypoint="/bin/sh -c", Cmd=["echo started in $(pwd); exec /bin/serve"],
    )
    response = await api.post("/services/create", json=body)
    assert response.status_code == 201, response.text
    service = await wait_status(api, "fields", "active")
    try:
        (container,) = replicas_of(docker_client, backend, "fields")
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        assert container.id == service["Containers"][0]
        assert host["Memory"] == 64 * 1024 * 1024  # s1: 64 MB
        assert host["NanoCpus"] == 1_000_000_000  # s1: 1 CPU
        assert config["WorkingDir"] == "/tmp" and config["Tty"] is True and config["OpenStdin"] is True
        assert config["StopSignal"] == "SIGQUIT"
        assert {"GREETING=hello world", "PORT=8080"} <= set(config["Env"])
        assert config["Entrypoint"] == ["/bin/sh", "-c"]
        assert config["Cmd"] == ["echo started in $(pwd); exec /bin/serve"]
        assert config["Labels"]["team"] == "ops"
        assert config["Labels"][LABEL_UID] and config["Labels"][LABEL_ROLE] == "replica"
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        data_volume = volume_name(backend.tenant, "fields", "hbx-test-data")
        assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == data_volume and mounts["/data"]["RW"]
        assert mounts["/conf"]["Name"] == volume_name(backend.tenant, "fields", "hbx-test-conf")
        assert not mounts["/conf"]["RW"]
        (network,) = container.attrs["NetworkSettings"]["Networks"]
        assert network.startswith("hs-fields-")
        # The replica really runs what was asked: the port from Env, the entrypoint's echo in its logs.
        containers = (await api.get("/services/fields/containers")).json()
        address = containers[0]["Address"]
        assert address.endswith(":8080")
        answer = await asyncio.to_thread(http_get, address)
        assert containers[0]["Name"] in answer  # the test image answers with its hostname
        logs = (await api.get("/services/fields/logs")).text
        assert f"{containers[0]['Name']} | started in /tmp" in logs
    finally:
        await api.delete("/services/fields", params={"volumes": "true"})
        await eventually(lambda: backend.store.get("fields") is None, 30, what="fields to be torn down")


async def test_scale_2_to_4_to_1_converges(api: httpx.AsyncClient, backend, docker_client):
    await api.post("/services/create", json=web_body("scale", 2))
    await wait_status(api, "scale", "active")
    assert len(replicas_of(docker_client, backend, "scale")) == 2
    for target in (4, 1):
        response = await api.post("/services/scale/update", json={"Replicas": target})
        assert response.status_code == 200 and response.json()["Replicas"] == target
        service = await wait_status(api, "scale", "active")
        running = replicas_of(docker_client, backend, "scale")
        assert len(running) == target
        assert sorted(service["Containers"]) == sorted(c.id for c in running)
        assert len(replicas_of(docker_client, backend, "scale", running_only=False)) == target  # none left behind


async def test_a_dead_replica_is_replaced(api: httpx.AsyncClient, backend, docker_client):
    await api.post("/services/create", json=web_body("heal", 2))
    await wait_status(api, "heal", "active")
    victim, survivor = replicas_of(docker_client, backend, "heal")
    victim.stop(timeout=1)  # stopped by hand: the restart policy leaves it down, the reconciler does not

    def replaced():
        ids = {c.id for c in replicas_of(docker_client, backend, "heal")}
        return len(ids) == 2 and victim.id not in ids and survivor.id in ids

    await eventually(replaced, timeout=20, what="the stopped replica to be replaced")
    await wait_status(api, "heal", "active")


async def test_a_replica_that_never_passes_its_checks_is_named_in_the_status(api: httpx.AsyncClient):
    # The replica listens on 80; the checks knock on 8081: it runs, and never passes.
    body = web_body("deaf", 1, ContainerPort=8081, HealthCheckInterval=1, HealthCheckRise=1, HealthCheckFall=1)
    assert (await api.post("/services/create", json=body)).status_code == 201

    async def named() -> dict | None:
        body = (await api.get("/services/deaf")).json()
        return body if "not passing health checks within" in body["Message"] else None

    service = await eventually(named, timeout=90, what="the status to name the replica not passing its checks")
    (replica,) = (await api.get("/services/deaf/containers")).json()
    assert service["Status"] == "scaling" and replica["Name"] in service["Message"], service
    await api.delete("/services/deaf")


async def test_a_crash_loop_stays_error_between_restarts_without_flapping(api: httpx.AsyncClient, backend, docker_client):
    # Each run lives a second, so the replica is caught `running` (not yet UP) between restarts.
    body = web_body("looper", 1, Entrypoint="/bin/sh -c", Cmd=["sleep 1; exit 3"])
    assert (await api.post("/services/create", json=body)).status_code == 201
    first = await wait_status(api, "looper", "error", timeout=90)
    assert "looper" in first["Message"] and "keeps exiting" in first["Message"]

    def restarts() -> int:
        (replica,) = replicas_of(docker_client, backend, "looper", running_only=False)
        return int(replica.attrs["RestartCount"])

    # Watch until the engine restarted it twice more (a whole run between two restarts seen).
    seen: set[str] = set()
    until = restarts() + 2

    async def two_more_restarts() -> bool:
        seen.add((await api.get("/services/looper")).json()["Status"])
        return restarts() >= until

    await eventually(two_more_restarts, timeout=90, interval=0.05, what="two more restarts of the looping replica")
    assert seen == {"error"}, f"the status left `error` while the replica kept crashing: {seen}"
    await api.delete("/services/looper")


async def test_a_missing_image_turns_the_service_to_error_naming_the_image(api: httpx.AsyncClient, backend, monkeypatch):
    attempts: list[str] = []
    real_ensure = backend.driver.ensure_image

    def counting(reference, *args, **kwargs):
        if reference.startswith("hbx-no-such-image"):
            attempts.append(reference)
        return real_ensure(reference, *args, **kwargs)

    monkeypatch.setattr(backend.driver, "ensure_image", counting)
    response = await api.post("/services/create", json=web_body("ghost", 1, Image="hbx-no-such-image:1"))
    assert response.status_code == 201
    service = await wait_status(api, "ghost", "error", timeout=60)
    assert "hbx-no-such-image:1" in service["Message"] and "not found" in service["Message"]
    # Retried, and still error (how far apart the retries are, exponential and capped, is
    # test_backoff.py's business, on a fake clock).
    await eventually(lambda: len(attempts) >= 2, timeout=30, what="the pull to be retried")
    assert (await api.get("/services/ghost")).json()["Status"] == "error"
    # The operator fixes the image: that is acted on at once, whatever the backoff.
    fixed = await api.post("/services/ghost/update", json={"Image": WEB_IMAGE})
    assert fixed.status_code == 200
    await wait_status(api, "ghost", "active", timeout=20)


async def test_rolling_update_replaces_every_replica_and_never_runs_fewer(api, backend, docker_client):
    await api.post("/services/create", json=web_body("roll", 3))
    before = await wait_status(api, "roll", "active")
    response = await api.post("/services/roll/update", json={"Image": WEB_IMAGE_2})
    assert response.status_code == 200 and response.json()["Image"] == WEB_IMAGE_2
    fewest = 3

    async def rolled_out() -> bool:
        nonlocal fewest
        fewest = min(fewest, len(replicas_of(docker_client, backend, "roll")))
        return (await api.get("/services/roll")).json()["Status"] == "active"

    await eventually(rolled_out, timeout=90, interval=0.05, what="the rollout to finish")
    after = (await api.get("/services/roll")).json()
    assert fewest >= 3  # one at a time, a new one up before an old one goes
    assert not set(after["Containers"]) & set(before["Containers"])
    running = replicas_of(docker_client, backend, "roll")
    assert len(running) == 3 and {c.image.tags[0] for c in running} == {WEB_IMAGE_2}
    for info in (await api.get("/services/roll/containers")).json():
        assert "version 2" in await asyncio.to_thread(http_get, info["Address"])
        assert info["Outdated"] is False and info["Image"] == WEB_IMAGE_2


async def test_delete_removes_everything_the_service_owned(api: httpx.AsyncClient, backend, docker_client):
    await api.post("/services/create", json=web_body("gone", 3))
    await wait_status(api, "gone", "active")
    uid_label = replicas_of(docker_client, backend, "gone")[0].labels[LABEL_UID]
    response = await api.delete("/services/gone")
    assert response.status_code == 202
    await eventually(lambda: backend.store.get("gone") is None, 30, what="gone to be torn down")
    assert (await api.get("/services/gone")).status_code == 404
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_UID}={uid_label}"}) == []
    assert docker_client.networks.list(filters={"label": f"{LABEL_UID}={uid_label}"}) == []
    assert backend.store.get("gone") is None
    # The name is free again, and the new service is a new instance.
    assert (await api.post("/services/create", json=web_body("gone", 1))).status_code == 201
    await wait_status(api, "gone", "active")
    assert replicas_of(docker_client, backend, "gone")[0].labels[LABEL_UID] != uid_label


async def test_delete_with_keep_leaves_the_replicas_running(api: httpx.AsyncClient, backend, docker_client):
    await api.post("/services/create", json=web_body("kept", 2))
    service = await wait_status(api, "kept", "active")
    response = await api.delete("/services/kept", params={"keep": "true"})
    assert response.status_code == 202
    await eventually(lambda: backend.store.get("kept") is None, 30, what="kept to be released")
    assert (await api.get("/services/kept")).status_code == 404
    still = {c.id for c in docker_client.containers.list(filters={"id": service["Containers"][0]})}
    still |= {c.id for c in docker_client.containers.list(filters={"id": service["Containers"][1]})}
    assert still == set(service["Containers"])
    # ...and the periodic resync does not collect them as orphans.
    backend.reconciler.collect_orphans()
    assert all(docker_client.containers.get(cid).status == "running" for cid in service["Containers"])


async def test_replicas_are_created_in_parallel(api: httpx.AsyncClient, backend, docker_client, monkeypatch):
    import threading

    real_create = backend.driver.create_replica
    lock, in_flight, most = threading.Lock(), [0], [0]

    def counting_create(*args, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            return real_create(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(backend.driver, "create_replica", counting_create)
    await api.post("/services/create", json=web_body("many", 6))
    await wait_status(api, "many", "active", timeout=60)
    assert len(replicas_of(docker_client, backend, "many")) == 6
    assert most[0] >= 3, f"at most {most[0]} replicas were being created at once"
