"""On the real engine: named volumes live in the installation's namespace (scoped, labelled, listed with
the service, removed only when asked), and every replica runs with a pids limit, rotated logs and
no-new-privileges."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import docker
import httpx
import pytest

from backend.core import Backend
from backend.docker_driver import LABEL_ROLE, LABEL_SERVICE, LABEL_TENANT, LABEL_VOLUME, volume_name
from tests.conftest import client_for, eventually, make_settings, remove_tenant_objects, wait_status, web_body


def replica(docker_client: docker.DockerClient, service: dict):
    (container_id,) = service["Containers"]
    return docker_client.containers.get(container_id)


def exists(docker_client: docker.DockerClient, volume: str) -> bool:
    try:
        docker_client.volumes.get(volume)
        return True
    except docker.errors.NotFound:
        return False


async def delete(api: httpx.AsyncClient, name: str, **params: str) -> None:
    """Delete and wait until the service is gone (the teardown may finish after the answer)."""
    response = await api.delete(f"/services/{name}", params=params)
    assert response.status_code in (202, 204), response.text

    async def gone() -> bool:
        return (await api.get(f"/services/{name}")).status_code == 404

    await eventually(gone, 120, what=f"{name} to be deleted")


async def run_in(container, *command: str) -> str:
    result = await asyncio.to_thread(container.exec_run, list(command))
    return result.output.decode().strip()


@pytest.fixture
def foreign_volumes(docker_client: docker.DockerClient):
    """Volumes that are not this installation's: one of another project, one of another installation."""
    other_tenant = secrets.token_hex(16)
    made = [
        docker_client.volumes.create(name=f"otherproject_pgdata-{secrets.token_hex(3)}"),
        docker_client.volumes.create(
            name=volume_name(other_tenant, "db", "data"),
            labels={LABEL_TENANT: other_tenant, LABEL_SERVICE: "db", LABEL_ROLE: "volume", LABEL_VOLUME: "data"},
        ),
    ]
    yield [volume.name for volume in made]
    for volume in made:
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


async def test_volumes_are_scoped_labelled_listed_and_removed_only_when_asked(
    api: httpx.AsyncClient, backend, docker_client, foreign_volumes
):
    theirs, other_installation = foreign_volumes
    body = web_body("db", 1, Volumes=["data:/data", f"{theirs}:/theirs", f"{other_installation}:/other:ro"])
    assert (await api.post("/services/create", json=body)).status_code == 201
    first = await wait_status(api, "db", "active", 60)
    assert first["Volumes"] == body["Volumes"]  # the API shows the names the user gave

    scoped = {given: volume_name(backend.tenant, "db", given) for given in ("data", theirs, other_installation)}
    mounts = {m["Destination"]: m for m in replica(docker_client, first).attrs["Mounts"]}
    assert {target: m["Name"] for target, m in mounts.items()} == {
        "/data": scoped["data"], "/theirs": scoped[theirs], "/other": scoped[other_installation],
    }
    assert not set(foreign_volumes) & {m["Name"] for m in mounts.values()}  # never another's volume
    assert not mounts["/other"]["RW"] and mounts["/data"]["RW"]
    for given, engine_name in scoped.items():
        labels = docker_client.volumes.get(engine_name).attrs["Labels"]
        assert labels[LABEL_TENANT] == backend.tenant and labels[LABEL_SERVICE] == "db"
        assert labels[LABEL_VOLUME] == given and labels[LABEL_ROLE] == "volume"

    listed = (await api.get("/services/db/volumes")).json()
    assert [(v["Name"], v["Volume"], v["Target"], v["ReadOnly"]) for v in listed] == [
        ("data", scoped["data"], "/data", False),
        (theirs, scoped[theirs], "/theirs", False),
        (other_installation, scoped[other_installation], "/other", True),
    ]
    assert all(v["Created"] for v in listed)
    assert (await api.get("/services/nope/volumes")).status_code == 404

    await run_in(replica(docker_client, first), "sh", "-c", "echo kept > /data/file")

    # keep=true: the replicas stay and so do the volumes; a new service of that name finds the data.
    await delete(api, "db", keep="true")
    kept = replica(docker_client, first)
    assert all(exists(docker_client, name) for name in scoped.values())
    assert (await api.post("/services/create", json=body)).status_code == 201
    second = await wait_status(api, "db", "active", 60)
    assert await run_in(replica(docker_client, second), "cat", "/data/file") == "kept"

    # Removing the volumes is refused while a container outside this service still mounts them.
    refused = await api.delete("/services/db", params={"volumes": "true"})
    assert refused.status_code == 409 and kept.name in refused.json()["message"]
    refused = await api.delete("/services/db", params={"volumes": "true", "keep": "true"})
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "volumes"
    assert (await api.get("/services/db")).json()["Status"] == "active"  # nothing changed
    kept.remove(force=True)

    # A plain delete keeps the volumes...
    await delete(api, "db")
    assert all(exists(docker_client, name) for name in scoped.values())
    # ...volumes=true removes this service's, and only those.
    assert (await api.post("/services/create", json=body)).status_code == 201
    await wait_status(api, "db", "active", 60)
    await delete(api, "db", volumes="true")
    assert not any(exists(docker_client, name) for name in scoped.values())
    assert all(exists(docker_client, name) for name in foreign_volumes)


async def test_a_volume_squatting_the_scoped_name_is_never_mounted(api: httpx.AsyncClient, backend, docker_client):
    squatter = docker_client.volumes.create(name=volume_name(backend.tenant, "squat", "data"))  # no labels of ours
    try:
        assert (await api.post("/services/create", json=web_body("squat", 1, Volumes=["data:/data"]))).status_code == 201
        failed = await wait_status(api, "squat", "error", 60)
        assert squatter.name in failed["Message"] and "not created by this installation" in failed["Message"]
        assert docker_client.containers.list(all=True, filters={"volume": squatter.name}) == []
    finally:
        await api.delete("/services/squat")
        squatter.remove(force=True)


async def test_every_replica_runs_with_a_pids_limit_rotated_logs_and_no_new_privileges(tmp_path, docker_client):
    settings = make_settings(tmp_path / "data", pids_limit=64, log_max_size="1m", log_max_file=2)
    instance = Backend(settings)
    instance.start()
    try:
        async with client_for(instance) as api:
            assert (await api.post("/services/create", json=web_body("tight", 1))).status_code == 201
            service = await wait_status(api, "tight", "active", 60)
            container = replica(docker_client, service)
            host = container.attrs["HostConfig"]
            assert host["PidsLimit"] == 64
            assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}
            assert "no-new-privileges:true" in host["SecurityOpt"]
            # The engine enforces them: the kernel sees both on the replica's main process.
            status = await run_in(container, "cat", "/proc/1/status")
            assert "NoNewPrivs:\t1" in status
            pids_max = await run_in(  # cgroup v2, else v1
                container, "sh", "-c", "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
            )
            assert pids_max == "64"
    finally:
        instance.close()
        remove_tenant_objects(docker_client, instance.tenant)
