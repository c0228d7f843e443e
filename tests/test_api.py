"""The HTTP API on a real backend and Docker engine, reached in-process as the console does."""

from __future__ import annotations

import asyncio
import ipaddress

import docker
import httpx

from backend.docker_driver import LABEL_TENANT
from tests.conftest import WEB_IMAGE, eventually, wait_status, web_body
from tests.test_models import SEED_REQUEST, seed_example_response


def tenant_objects(docker_client: docker.DockerClient, tenant: str) -> tuple[list, list]:
    label = f"{LABEL_TENANT}={tenant}"
    containers = docker_client.containers.list(all=True, filters={"label": label})
    networks = docker_client.networks.list(filters={"label": label})
    return containers, networks


async def test_seed_request_answers_201_with_the_seed_keys_and_defaults(api: httpx.AsyncClient, backend):
    response = await api.post("/services/create", json={**SEED_REQUEST, "Image": WEB_IMAGE})
    assert response.status_code == 201, response.text
    body = response.json()
    seed = seed_example_response()
    assert list(body) == list(seed)
    assert body["Status"] == "created" and body["Message"] == "Service is created"
    assert body["Containers"] is None
    assert body["Labels"] == {"app": "nginx"} and body["Replicas"] == 2 and body["Protocol"] == "http"
    for key in ("WorkingDir", "ContainerSize", "SSLCert", "HealthCheckInterval", "HealthCheckFall", "HealthCheckRise",
                "Algorithm", "Stdin", "Tty", "SessionAffinity", "Entrypoint", "Cmd", "Env", "Volumes"):
        assert body[key] == seed[key], key
    assert len(body["Tenant"]) == 32 and int(body["Tenant"], 16) >= 0 and body["Tenant"] == backend.tenant
    # RFC 3339, UTC, nanoseconds: 2016-10-08T13:12:15.405946064Z
    assert len(body["Created"]) == len(seed["Created"]) and body["Created"].endswith("Z")
    assert ipaddress.ip_address(body["IP"]) in ipaddress.ip_network(backend.settings.address_pool)

    active = await wait_status(api, "http", "active")
    assert active["Message"] == "Scaling complete"
    assert len(active["Containers"]) == 2 and all(len(cid) == 64 for cid in active["Containers"])
    listed = (await api.get("/services")).json()
    assert [s["Name"] for s in listed] == ["http"] and list(listed[0]) == list(seed)


async def test_same_name_again_answers_409_and_changes_nothing(api: httpx.AsyncClient):
    first = await api.post("/services/create", json=web_body("dup", 1))
    assert first.status_code == 201
    again = await api.post("/services/create", json=web_body("dup", 3, Image="hyperservice-test/web:2"))
    assert again.status_code == 409
    assert again.json()["errors"][0]["field"] == "Name"
    kept = (await api.get("/services/dup")).json()
    assert kept["Replicas"] == 1 and kept["Image"] == WEB_IMAGE and kept["Created"] == first.json()["Created"]


async def test_concurrent_creates_of_one_name_exactly_one_wins(api: httpx.AsyncClient):
    responses = await asyncio.gather(*[api.post("/services/create", json=web_body("race", 1)) for _ in range(12)])
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 11
    assert len((await api.get("/services")).json()) == 1


async def test_bad_input_answers_400_naming_the_field_and_creates_nothing(api, backend, docker_client):
    cases = [
        ({"Replicas": 0}, "Replicas"),
        ({"ServicePort": 70000}, "ServicePort"),
        ({"Name": "Not_A_Label"}, "Name"),
        ({"Env": ["NOEQUALS"]}, "Env"),
        ({"Volumes": ["/var/run/docker.sock:/sock"]}, "Volumes"),
        ({"Labels": {"k": "v\nbackend evil"}}, "Labels"),
    ]
    feed = backend.hub.subscribe_async()
    try:
        for fields, field in cases:
            response = await api.post("/services/create", json={**web_body("bad", 1), **fields})
            assert response.status_code == 400, (fields, response.text)
            body = response.json()
            assert field in body["message"]
            assert [e["field"] for e in body["errors"]] == [field], body
            assert body["errors"][0]["message"]
        for raw in (b"not json", b"[1, 2]"):
            response = await api.post("/services/create", content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 400 and "JSON" in response.json()["message"]
    finally:
        feed.close()
    # A create is announced on the change feed before it is handed to the reconciler: none was.
    await asyncio.sleep(0)
    assert feed.queue.empty()
    assert (await api.get("/services")).json() == []
    assert tenant_objects(docker_client, backend.tenant) == ([], [])


async def test_control_characters_answer_400_naming_the_field_and_create_nothing(api, backend, docker_client):
    cases = [
        ({"Cmd": ["sh", "-c", "printf done\x1b]52;c;SGVsbG8=\x07"]}, "Cmd"),
        ({"Entrypoint": "/bin/sh -c 'clear\x1b[2J'"}, "Entrypoint"),
        ({"Env": ["MODE=prod\rX=1"]}, "Env"),
        ({"Labels": {"team\x9b": "web"}}, "Labels"),
    ]
    for fields, field in cases:
        response = await api.post("/services/create", json={**web_body("ctl", 1), **fields})
        assert response.status_code == 400, (fields, response.text)
        body = response.json()
        assert [e["field"] for e in body["errors"]] == [field], body
        assert "control characters" in body["errors"][0]["message"]
    assert (await api.get("/services")).json() == []
    assert tenant_objects(docker_client, backend.tenant) == ([], [])


async def test_logs_carry_escape_sequences_and_carriage_returns_within_their_line(api: httpx.AsyncClient):
    # The replica writes a clipboard write (OSC 52), a screen clear and a CR in one line: the backend
    # passes the line through as it is (labelled, not cut at the CR); showing it safely is the console's job.
    printf = "printf 'x\\033]52;c;SGVsbG8=\\007y\\033[2Jz\\rw\\n'"
    response = await api.post("/services/create", json=web_body("esc", 1, Cmd=["sh", "-c", f"{printf}; exec /bin/serve"]))
    assert response.status_code == 201, response.text
    await wait_status(api, "esc", "active", 60)
    replica = (await api.get("/services/esc/containers")).json()[0]["Name"]

    async def logged():
        return [line for line in (await api.get("/services/esc/logs")).text.split("\n") if "52;c" in line]

    lines = await eventually(logged, 30, what="the line in the logs")
    assert len(lines) == 1 and lines[0].split(" ", 1)[1] == f"{replica} | x\x1b]52;c;SGVsbG8=\x07y\x1b[2Jz\rw"


async def test_unknown_service_answers_404(api: httpx.AsyncClient):
    for method, path in [("GET", "/services/nope"), ("POST", "/services/nope/update"), ("DELETE", "/services/nope"),
                         ("GET", "/services/nope/containers"), ("GET", "/services/nope/logs")]:
        response = await api.request(method, path, json={"Replicas": 2} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert "nope" in response.json()["message"]


async def test_update_validates_and_refuses_a_fip_outside_the_pool(api: httpx.AsyncClient):
    await api.post("/services/create", json=web_body("upd", 1))
    response = await api.post("/services/upd/update", json={"Replicas": 0})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "Replicas"
    response = await api.post("/services/upd/update", json={})
    assert response.status_code == 400
    response = await api.post("/services/upd/update", json={"FIP": "127.0.0.9"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "FIP"
    assert "not in the floating IP pool" in response.json()["message"]
    assert (await api.get("/services/upd")).json()["FIP"] == ""


async def test_openapi_document_describes_the_routes(api: httpx.AsyncClient):
    document = (await api.get("/openapi.json")).json()
    paths = document["paths"]
    for path in ("/services/create", "/services", "/services/{name}", "/services/{name}/update",
                 "/services/{name}/containers", "/services/{name}/logs", "/events"):
        assert path in paths, path
    create_schema = paths["/services/create"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"Name", "Image", "Replicas", "ServicePort"} <= set(create_schema["required"])


# A 500 (generic message, error id, detail in the log): tests/test_hardening.py.


async def test_all_replicas_in_one_answer_and_the_limits(api: httpx.AsyncClient, backend):
    await api.post("/services/create", json=web_body("one", 1))
    await api.post("/services/create", json=web_body("two", 2))
    one = await wait_status(api, "one", "active")
    two = await wait_status(api, "two", "active")
    replicas = (await api.get("/replicas")).json()
    assert {name: sorted(c["Id"] for c in items) for name, items in replicas.items()} == {
        "one": sorted(one["Containers"]), "two": sorted(two["Containers"])}
    assert replicas["two"][0]["State"] == "running" and replicas["two"][0]["Address"]
    assert (await api.get("/limits")).json() == {"MaxReplicas": backend.settings.max_replicas}


async def test_the_engine_answers_docker_on_an_engine_that_is_no_swarm_manager(api: httpx.AsyncClient):
    # HYPERSERVICE_ENGINE=auto (the default) on the main engine, which is not a swarm
    assert (await api.get("/engine")).json() == {"Engine": "docker"}
