"""Revisions and rollback on the real engine: a rollout whose replicas keep exiting is rolled back by
itself, under load, with no failed request; a rollback by hand; the API's refusals."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import docker
import pytest

from bench.load import SteadyLoad, get
from tests.conftest import WEB_IMAGE, client_for, eventually, wait_status, web_body

WEB_IMAGE_2 = "hyperservice-test/web:2"
BAD_IMAGE = "hyperservice-test/web:exits"  # web:1 whose CMD exits 1 at once: built here, no registry
FAST_CHECKS = {"HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 2}


@pytest.fixture(scope="module")
def bad_image(docker_client: docker.DockerClient) -> Iterator[str]:
    dockerfile = f'FROM {WEB_IMAGE}\nCMD ["sh", "-c", "exit 1"]\n'
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=BAD_IMAGE, rm=True)
    yield BAD_IMAGE
    with contextlib.suppress(docker.errors.APIError):  # still used by a container left behind: harmless
        docker_client.images.remove(BAD_IMAGE)


async def revisions(api, name: str) -> list[dict]:
    response = await api.get(f"/services/{name}/revisions")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_rollout_of_an_image_that_exits_is_rolled_back_by_itself_under_load(api, bad_image):
    created = await api.post("/services/create", json=web_body("canary", 2, Protocol="http", **FAST_CHECKS))
    assert created.status_code == 201, created.text
    service = await wait_status(api, "canary", "active", timeout=60)
    await eventually(lambda: revisions(api, "canary"), what="revision 1")
    assert [(r["Number"], r["Image"], r["Outcome"]) for r in await revisions(api, "canary")] == [
        (1, WEB_IMAGE, "active")]
    with SteadyLoad(service["IP"], 80, threads=4) as load:
        await eventually(lambda: load.result.ok >= 20, what="the load to get going")
        response = await api.post("/services/canary/update", json={"Image": bad_image})
        assert response.status_code == 200, response.text
        assert response.json()["Status"] == "updating"
        rolled = await eventually(
            lambda: _rolled_back(api), timeout=90, what="canary to be rolled back and active")
        mark = load.result.ok
        await eventually(lambda: load.result.ok >= mark + 20, what="more load after the rollback")
    assert load.result.failed == 0, load.result.errors
    assert rolled["Image"] == WEB_IMAGE
    message = rolled["Message"]
    assert "rolled back to revision 1" in message and WEB_IMAGE in message, message
    assert "revision 2" in message and "exiting (code 1)" in message, message
    listed = await revisions(api, "canary")
    assert [(r["Number"], r["Image"], r["Outcome"]) for r in listed] == [
        (2, bad_image, "rolled back"), (1, WEB_IMAGE, "active")]
    assert "exiting (code 1)" in listed[0]["Reason"] and listed[0]["By"] == "local"
    # the replicas left are web:1 ones, all of them serving
    containers = (await api.get("/services/canary/containers")).json()
    assert len(containers) == 2 and {c["Image"] for c in containers} == {WEB_IMAGE}, containers
    assert all("version 1" in get(service["IP"], 80)[1] for _ in range(4))
    history = (await api.get("/services/canary/events")).json()
    assert any(e["Action"] == "rollback" for e in history["Events"]), history


async def _rolled_back(api) -> dict | None:
    body = (await api.get("/services/canary")).json()
    return body if body["Status"] == "active" and "rolled back" in body["Message"] else None


async def test_rollback_by_hand_after_a_good_update(api):
    created = await api.post("/services/create", json=web_body("manual", 2, Protocol="http", **FAST_CHECKS))
    assert created.status_code == 201, created.text
    service = await wait_status(api, "manual", "active", timeout=60)
    nothing = await api.post("/services/manual/rollback")
    assert nothing.status_code == 400 and "nothing to roll back to" in nothing.json()["message"], nothing.text
    assert (await api.post("/services/manual/update", json={"Image": WEB_IMAGE_2})).status_code == 200
    await eventually(lambda: _active_on(api, "manual", WEB_IMAGE_2), timeout=90, what="web:2 rolled out")
    assert [(r["Number"], r["Outcome"]) for r in await revisions(api, "manual")] == [(2, "active"), (1, "superseded")]
    unknown = await api.post("/services/manual/rollback", json={"Revision": 7})
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "Revision", unknown.text
    current = await api.post("/services/manual/rollback", json={"Revision": 2})
    assert current.status_code == 400, current.text
    bad = await api.post("/services/manual/rollback", json={"Revision": "one"})
    assert bad.status_code == 400, bad.text
    assert [r["Number"] for r in await revisions(api, "manual")] == [2, 1]  # refusals changed nothing

    back = await api.post("/services/manual/rollback", json={"Revision": 1})
    assert back.status_code == 200, back.text
    assert back.json()["Image"] == WEB_IMAGE and back.json()["Status"] == "updating"
    await eventually(lambda: _active_on(api, "manual", WEB_IMAGE), timeout=90, what="web:1 rolled back in")
    containers = (await api.get("/services/manual/containers")).json()
    assert len(containers) == 2 and {c["Image"] for c in containers} == {WEB_IMAGE}, containers
    assert all("version 1" in get(service["IP"], 80)[1] for _ in range(4))
    listed = await revisions(api, "manual")
    assert [(r["Number"], r["Image"], r["Outcome"]) for r in listed] == [
        (3, WEB_IMAGE, "active"), (2, WEB_IMAGE_2, "rolled back"), (1, WEB_IMAGE, "superseded")]
    assert listed[0]["By"] == "local" and listed[0]["Reason"] == "rollback to revision 1"

    assert (await api.delete("/services/manual")).status_code == 202
    deleting = await api.post("/services/manual/rollback", json={"Revision": 1})
    assert deleting.status_code in (409, 404), deleting.text  # 404 once the teardown is done already


async def _active_on(api, name: str, image: str) -> dict | None:
    body = (await api.get(f"/services/{name}")).json()
    if body["Status"] != "active" or body["Image"] != image:
        return None
    containers = (await api.get(f"/services/{name}/containers")).json()
    return body if containers and {c["Image"] for c in containers} == {image} else None


async def test_a_rollout_with_parallelism_2_starts_two_new_replicas_at_once_under_load(backend_factory, monkeypatch):
    backend = backend_factory(rollout_parallelism=2)
    reconciler = backend.reconciler
    create_replicas = reconciler._create_replicas
    batches: list[int] = []  # how many replicas of revision 2 each step started

    def recording(record, network: str, slots: list[str]):
        created = create_replicas(record, network, slots)
        if record.revision == 2 and slots:
            batches.append(len(created))
        return created

    monkeypatch.setattr(reconciler, "_create_replicas", recording)
    async with client_for(backend) as api:
        created = await api.post("/services/create", json=web_body("wide", 4, Protocol="http", **FAST_CHECKS))
        assert created.status_code == 201, created.text
        service = await wait_status(api, "wide", "active", timeout=60)
        before = set(service["Containers"])
        with SteadyLoad(service["IP"], 80, threads=4) as load:
            await eventually(lambda: load.result.ok >= 20, what="the load to get going")
            assert (await api.post("/services/wide/update", json={"Image": WEB_IMAGE_2})).status_code == 200
            rolled = await eventually(lambda: _active_on(api, "wide", WEB_IMAGE_2), timeout=90, what="web:2 rolled out")
            mark = load.result.ok
            await eventually(lambda: load.result.ok >= mark + 20, what="more load on the new replicas")
        assert load.result.failed == 0, load.result.errors
        assert len(rolled["Containers"]) == 4 and not set(rolled["Containers"]) & before
        # two new replicas in the rollout's first step, never more than two at once, four in all
        assert batches[0] == 2 and max(batches) == 2 and sum(batches) == 4, batches
        assert {r["By"] for r in await revisions(api, "wide")} == {"local"}
