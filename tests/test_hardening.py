"""Hardening (issue 8, points 1-5): what a hostile web page, a careless command line, a huge body or an
out-of-range value must not achieve, each on the real thing: `hyperservice serve` over TCP for the
guards in front of the API, the in-process API for validation and the 500 answer, `haproxy -c` for
the health-check bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
from pydantic import ValidationError

from backend import haproxy as hx
from backend.api import MAX_BODY_BYTES, host_allowed, host_name, same_origin
from backend.docker_driver import LABEL_TENANT
from backend.models import (
    MAX_CHECK_COUNT,
    MAX_CHECK_INTERVAL,
    MAX_NAME_LENGTH,
    ServiceSpec,
    field_errors,
)
from backend.server import allowed_hosts, exposure_problem
from backend.settings import MAX_REPLICAS_LIMIT, Settings
from tests.conftest import LB_IMAGE, WEB_IMAGE, WEB_IMAGE_2, remove_tenant_objects, wait_status, web_body
from tests.test_haproxy_config import haproxy_check
from tests.test_serve import free_port
from tui.cli import UsageError, build_parser, resolve_token
from tui.client import ApiClient

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"


# --- a real `hyperservice serve` --------------------------------------------------------------


class Served:
    """A `hyperservice serve` subprocess on a free loopback port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, token: str | None, log: Path) -> None:
        self.process = process
        self.log = log  # its stdout and stderr
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={**self.headers, **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "HYPERSERVICE_TOKEN"}
    return {**env, "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"), "HYPERSERVICE_LB_IMAGE": LB_IMAGE, **extra}


def _tenant_of(served: Served) -> str:
    """The backend's tenant, from the first line of its event stream."""
    with httpx.stream("GET", served.url + "/events", headers=served.headers, timeout=30) as stream:
        for line in stream.iter_lines():
            return str(json.loads(line)["Tenant"])
    raise AssertionError("the event stream ended without a hello")


@contextlib.contextmanager
def serving(tmp_path: Path, docker_client: docker.DockerClient, args: list[str], token: str | None = None,
            env: dict[str, str] | None = None, delete_services: bool = True) -> Iterator[Served]:
    """Start `python -m tui.cli <args> --listen 127.0.0.1:<port>`, wait until it answers, and on the way
    out (optionally) delete what it runs through the API, stop it and remove whatever its tenant left
    on the engine."""
    port = free_port()
    argv = [sys.executable, "-m", "tui.cli", *args, "--listen", f"127.0.0.1:{port}"]
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as output:  # a file, not a pipe: a full pipe nobody reads would block the server
        process = subprocess.Popen(argv, env=env or serve_env(tmp_path), cwd=ROOT, stdout=output,
                                   stderr=subprocess.STDOUT)
    served = Served(process, port, token, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve ended early: {log.read_text()}")
            try:
                httpx.get(served.url + "/limits", headers=served.headers, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("serve did not answer within 60 s") from None
                time.sleep(0.1)
        tenant = _tenant_of(served)
    except BaseException:
        process.kill()
        process.wait(timeout=60)
        raise
    try:
        yield served
    finally:
        if delete_services:
            with contextlib.suppress(httpx.HTTPError), served.client() as client:
                for service in client.get("/services").json():
                    client.delete(f"/services/{service['Name']}")
        process.terminate()
        process.wait(timeout=60)
        remove_tenant_objects(docker_client, tenant)
        assert "BEGIN" not in log.read_text()  # no key material in the daemon's log


# --- 1. cross-site and DNS-rebinding requests ----------------------------------------------------


def test_host_names_a_served_address_or_an_allowed_name():
    assert host_name("Example.COM:8765") == "example.com" and host_name("[::1]:8765") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("svc.example.") == "svc.example"
    loopback = allowed_hosts("127.0.0.1", ["ops.example"])
    for name in ("127.0.0.1", "localhost", "::1", "ops.example"):
        assert host_allowed(name, loopback), name
    for name in ("evil.example", "127.0.0.2", "10.0.0.5", ""):
        assert not host_allowed(name, loopback), name
    everywhere = allowed_hosts("0.0.0.0")
    assert host_allowed("10.0.0.5", everywhere) and host_allowed("::1", everywhere)
    assert not host_allowed("evil.example", everywhere)  # a name only when listed: rebinding needs one
    assert allowed_hosts("10.1.2.3") == {"10.1.2.3"}


def test_same_origin_compares_scheme_host_and_port():
    assert same_origin("http://127.0.0.1:8765", "http", "127.0.0.1:8765")
    assert same_origin("http://LOCALHOST", "http", "localhost:80")
    for origin in ("http://evil.example", "null", "https://127.0.0.1:8765", "http://127.0.0.1:8766",
                   "http://127.0.0.1:8765/path", "", "http://127.0.0.1:notaport"):
        assert not same_origin(origin, "http", "127.0.0.1:8765"), origin
    assert not same_origin("http://127.0.0.1:x", "http", "127.0.0.1:x")


@pytest.mark.docker
async def test_a_web_page_cannot_drive_serve(tmp_path, docker_client):
    with serving(tmp_path, docker_client, ["serve", "--allowed-host", "ops.example"]) as served, served.client() as api:
        body = web_body("page", 1)
        # A page's "simple" POST: text/plain (or a form) needs no preflight. Refused, nothing created.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            response = api.post("/services/create", content=json.dumps(body), headers={"content-type": content_type})
            assert response.status_code == 415, (content_type, response.text)
            assert "application/json" in response.json()["message"] and response.json()["errors"] == []
        assert api.get("/services").json() == []

        # The operator's own client: created.
        created = api.post("/services/create", json=body)
        assert created.status_code == 201, created.text

        # A foreign Origin may neither swap the image nor delete: 403, nothing changes.
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{served.port + 1}"):
            swap = api.post("/services/page/update", json={"Image": WEB_IMAGE_2}, headers={"origin": origin})
            assert swap.status_code == 403, (origin, swap.text)
            assert "origin" in swap.json()["message"]
            assert api.delete("/services/page", headers={"origin": origin}).status_code == 403
        assert api.get("/services/page").json()["Image"] == WEB_IMAGE

        # DNS rebinding: the page's own name in Host. Refused for reads and writes alike.
        for method, path in (("GET", "/services"), ("GET", "/services/page"), ("POST", "/services/page/update")):
            response = api.request(method, path, json={"Replicas": 2} if method == "POST" else None,
                                   headers={"host": f"rebind.evil.example:{served.port}"})
            assert response.status_code == 421, (method, path, response.text)
            assert "rebind.evil.example" in response.json()["message"] and "--allowed-host" in response.json()["message"]
        assert api.get("/services/page").json()["Replicas"] == 1

        # A request without any Host (HTTP/1.0) is refused too.
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw:
            raw.sendall(b"GET /services HTTP/1.0\r\n\r\n")
            assert raw.makefile("rb").readline().split()[1] == b"400"

        # What keeps working: the same origin, loopback names, a name given with --allowed-host, the console's client.
        same = api.post("/services/page/update", json={"Replicas": 2}, headers={"origin": served.url})
        assert same.status_code == 200, same.text
        for host in (f"localhost:{served.port}", f"ops.example:{served.port}", f"[::1]:{served.port}"):
            assert api.get("/services", headers={"host": host}).status_code == 200, host
        client = ApiClient.remote(served.url)
        try:
            assert [s.Name for s in await client.list_services()] == ["page"]
            assert (await client.update_service("page", Replicas=1)).Replicas == 1
        finally:
            await client.aclose()


# --- 2. the token, wherever it is given ----------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--token", "T", "serve"],
    ["serve", "--token", "T"],
    ["--token-file", "FILE", "serve"],
    ["serve", "--token-file", "FILE"],
])
def test_token_is_kept_before_or_after_the_verb(argv, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    args = build_parser().parse_args([str(token_file) if a == "FILE" else a for a in argv])
    assert args.command == "serve"
    expected = "T" if "T" in argv else "from-file"
    assert resolve_token(args.token, args.token_file, environ={}) == expected


def test_token_sources_and_their_mistakes(tmp_path):
    assert resolve_token(None, None, environ={"HYPERSERVICE_TOKEN": "env"}) == "env"
    assert resolve_token("flag", None, environ={"HYPERSERVICE_TOKEN": "env"}) == "flag"
    assert resolve_token(None, None, environ={}) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for token, token_file, needle in (("a", str(empty), "not both"), (None, str(empty), "empty"),
                                      (None, str(tmp_path / "missing"), "cannot read"), ("  ", None, "empty")):
        with pytest.raises(UsageError, match=needle):
            resolve_token(token, token_file, environ={})


@pytest.mark.docker
@pytest.mark.parametrize("how", ["token-before-verb", "token-file", "environment"])
def test_serve_requires_the_token_however_it_was_given(how, tmp_path, docker_client):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = serve_env(tmp_path)
    args = {"token-before-verb": ["--token", TOKEN, "serve"],
            "token-file": ["serve", "--token-file", str(token_file)],
            "environment": ["serve"]}[how]
    if how == "environment":
        env["HYPERSERVICE_TOKEN"] = TOKEN
    with serving(tmp_path, docker_client, args, token=TOKEN, env=env) as served:
        if how == "token-file":
            assert TOKEN not in " ".join(served.process.args)  # nothing for `ps` to show
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            response = httpx.get(served.url + "/services", headers=headers, timeout=30)
            assert response.status_code == 401, (headers, response.text)
            assert "token" in response.json()["message"]
        with served.client() as api:
            assert api.get("/services").status_code == 200


def test_serve_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    assert exposure_problem("127.0.0.1", None) is None and exposure_problem("::1", None) is None
    assert exposure_problem("0.0.0.0", "T") is None and exposure_problem("0.0.0.0", None, insecure=True) is None
    assert "--insecure" in (exposure_problem("0.0.0.0", None) or "")
    # The real command: refused with status 2 before anything starts (no engine needed, no port opened).
    result = subprocess.run([sys.executable, "-m", "tui.cli", "serve", "--listen", f"0.0.0.0:{free_port()}"],
                            env=serve_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "without a token" in result.stderr and "--insecure" in result.stderr and "--token-file" in result.stderr
    assert not (tmp_path / "data" / "state.db").exists()


def test_insecure_and_allowed_hosts_reach_the_server(monkeypatch):
    """`--insecure` and `--allowed-host` are handed to the server as given (the refusal without a
    token is tested above on the real command; here, that --insecure lifts it)."""
    import backend.server
    from tui.cli import main

    asked: list[tuple[str, object, dict[str, object]]] = []
    monkeypatch.setattr(backend.server, "serve", lambda listen, tokens, **kwargs: asked.append((listen, tokens, kwargs)))
    monkeypatch.delenv("HYPERSERVICE_TOKEN", raising=False)
    assert main(["serve", "--listen", "0.0.0.0:8765", "--insecure", "--allowed-host", "ops.example"]) == 0
    assert main(["serve", "--listen", "0.0.0.0:8765"]) == 0
    assert [kwargs for _, _, kwargs in asked] == [{"extra_hosts": ["ops.example"], "insecure": True},
                                                 {"extra_hosts": [], "insecure": False}]


# --- 3. body size, field bounds, validation off the event loop ---------------------------------


def _raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request on a fresh connection; answer (status, the rest of the response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.sendall(head + body)
        answer = raw.makefile("rb").read()
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.docker
def test_serve_refuses_bodies_over_the_limit_without_reading_them(tmp_path, docker_client):
    with serving(tmp_path, docker_client, ["serve"]) as served:
        # The 7.6 MB body, announced by Content-Length: refused before a byte of it is sent.
        head = (b"POST /services/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 7600000\r\nConnection: close\r\n\r\n")
        status, answer = _raw_request(served.port, head)
        assert status == 413 and b"larger than 1024 KiB" in answer, answer

        # Chunked (no length announced): counted while read, refused once past the limit.
        data = b'{"Name": "' + b"x" * MAX_BODY_BYTES + b'"}'
        chunk = hex(len(data))[2:].encode() + b"\r\n" + data + b"\r\n0\r\n\r\n"
        head = (b"POST /services/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        status, answer = _raw_request(served.port, head, chunk)
        assert status == 413 and b'"errors":[]' in answer, answer

        with served.client() as api:
            # Within the limit but beyond a field's bound: 400 naming the field.
            response = api.post("/services/create", json=web_body("big", 1, Cmd=["x"] * 1001))
            assert response.status_code == 400 and response.json()["errors"][0]["field"] == "Cmd"
            assert "at most 1000 items" in response.json()["message"]
            assert api.get("/services").json() == []


BOUNDED = [
    ({"Cmd": ["x"] * 1001}, "Cmd", "at most 1000 items"),
    ({"Cmd": ["x" * 40000]}, "Cmd", "at most 32768 characters"),
    ({"Cmd": "x " * 40000}, "Cmd", "longer than 65536"),
    ({"Entrypoint": ["x"] * 1001}, "Entrypoint", "at most 1000 items"),
    ({"Env": [f"V{i}=1" for i in range(1001)]}, "Env", "at most 1000 items"),
    ({"Env": ["V=" + "x" * 40000]}, "Env", "at most 32768 characters"),
    ({"Labels": {f"k{i}": "v" for i in range(1001)}}, "Labels", "at most 1000 entries"),
    ({"Labels": {"k": "v" * 5000}}, "Labels", "at most 4096 characters"),
    ({"Volumes": [f"v{i}:/d{i}" for i in range(101)]}, "Volumes", "at most 100 items"),
    ({"Volumes": ["v:/" + "d" * 5000]}, "Volumes", "at most 4096 characters"),
    ({"SecurityGroups": [f"g{i}" for i in range(101)]}, "SecurityGroups", "at most 100 items"),
    ({"WorkingDir": "/" + "d" * 5000}, "WorkingDir", "at most 4096 characters"),
    ({"Protocol": "httpsTerm", "SSLCert": "x" * 70000}, "SSLCert", "at most 65536 characters"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BOUNDED)
def test_every_list_and_text_field_is_bounded(fields, field, message):
    with pytest.raises(ValidationError) as caught:
        ServiceSpec.model_validate({"Name": "web", "Image": "busybox", "Replicas": 1, "ServicePort": 80, **fields})
    errors = field_errors(caught.value)
    assert [e.field for e in errors] == [field] and message in errors[0].message, errors


def test_bounds_are_in_the_openapi_schema():
    schema = ServiceSpec.model_json_schema()["properties"]
    assert schema["Name"]["maxLength"] == MAX_NAME_LENGTH and "pattern" in schema["Name"]
    assert schema["Cmd"]["anyOf"][0]["maxItems"] == 1000 and schema["Cmd"]["anyOf"][0]["items"]["maxLength"] == 32768
    assert schema["Labels"]["anyOf"][0]["maxProperties"] == 1000
    assert schema["HealthCheckInterval"]["maximum"] == MAX_CHECK_INTERVAL


@pytest.mark.docker
async def test_validation_runs_off_the_event_loop(api, monkeypatch):
    """While one create's body is being validated, the API still answers others."""
    original = ServiceSpec.model_validate.__func__
    entered, released = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    def slow_validate(cls, *args, **kwargs):
        entered.set()
        outcome["released in time"] = released.wait(timeout=20)  # on the event loop this would freeze it
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ServiceSpec, "model_validate", classmethod(slow_validate))
    create = asyncio.ensure_future(api.post("/services/create", json=web_body("slow", 1)))
    assert await asyncio.to_thread(entered.wait, 20)
    listed = await api.get("/services")  # answered while the validation is still blocked
    released.set()
    assert listed.status_code == 200 and listed.json() == []
    assert (await create).status_code == 201
    assert outcome == {"released in time": True}


@pytest.mark.docker
async def test_pathological_json_answers_400(api):
    for raw in (b"[" * 100000 + b"]" * 100000, b'{"Replicas": ' + b"9" * 5000 + b"}",
                b'{"Labels": {"a": ' + b"[" * 50000 + b"]" * 50000 + b"}}"):
        response = await api.post("/services/create", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text[:300]
        assert response.json()["message"]
    assert (await api.get("/services")).json() == []


@pytest.mark.docker
async def test_logs_skip_a_replica_removed_while_they_are_read(api, backend, docker_client, monkeypatch):
    """Found by the fuzz run: a replica replaced between listing and reading answered 500."""
    assert (await api.post("/services/create", json=web_body("churn", 2))).status_code == 201
    service = await wait_status(api, "churn", "active", timeout=90)
    listed = backend.log_sources

    def then_removed(name, container):
        sources = listed(name, container)
        docker_client.containers.get(sources[0][1]).remove(force=True)  # gone before its logs are read
        return sources

    monkeypatch.setattr(backend, "log_sources", then_removed)
    response = await api.get("/services/churn/logs")
    assert response.status_code == 200, response.text
    assert len(service["Containers"]) == 2


# --- 4. values the balancer, the engine or the settings would refuse later ---------------------


def test_health_check_bounds_are_what_the_balancer_accepts(tmp_path):
    for field, high in (("HealthCheckInterval", MAX_CHECK_INTERVAL), ("HealthCheckFall", MAX_CHECK_COUNT),
                        ("HealthCheckRise", MAX_CHECK_COUNT)):
        with pytest.raises(ValidationError) as caught:
            ServiceSpec.model_validate({**web_body("web"), field: high + 1})
        assert [(e.field, e.message) for e in field_errors(caught.value)] == [(field, f"must be at most {high}")]
    spec = ServiceSpec.model_validate({**web_body("web"), "HealthCheckInterval": MAX_CHECK_INTERVAL,
                                       "HealthCheckFall": MAX_CHECK_COUNT, "HealthCheckRise": MAX_CHECK_COUNT})
    state = tmp_path / "state"
    state.write_text(hx.EMPTY_SERVER_STATE)
    admin_key = tmp_path / "admin.key"  # the runtime API's secret, as the balancer gets it
    admin_key.write_bytes(hx.admin_secret_files(hx.new_admin_secret(), str(admin_key))[str(admin_key)][0])
    config = hx.BalancerConfig(
        service=spec.Name, protocol="http", algorithm="roundrobin", session_affinity=False, container_port=80,
        health_interval=spec.HealthCheckInterval, health_fall=spec.HealthCheckFall, health_rise=spec.HealthCheckRise,
        slots=MAX_REPLICAS_LIMIT + 1, state_path=str(state), listen="127.0.0.1:80", admin_port=20000,
        admin_key_path=str(admin_key),
    )
    result = haproxy_check(hx.render_config(config), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_name_leaves_room_for_the_replica_hostname():
    assert MAX_NAME_LENGTH == 57  # "<name>-xxxxx" is then 63, the most a hostname label may be
    ServiceSpec.model_validate(web_body("a" * MAX_NAME_LENGTH))
    with pytest.raises(ValidationError) as caught:
        ServiceSpec.model_validate(web_body("a" * (MAX_NAME_LENGTH + 1)))
    assert "1-57 characters" in field_errors(caught.value)[0].message


def test_max_replicas_beyond_the_balancer_slots_refuses_to_start(tmp_path):
    Settings(data_dir=tmp_path, max_replicas=MAX_REPLICAS_LIMIT)
    with pytest.raises(ValidationError, match=f"at most {MAX_REPLICAS_LIMIT}"):
        Settings(data_dir=tmp_path, max_replicas=MAX_REPLICAS_LIMIT + 1)
    env = serve_env(tmp_path, HYPERSERVICE_MAX_REPLICAS=str(MAX_REPLICAS_LIMIT + 1))
    result = subprocess.run([sys.executable, "-m", "tui.cli", "serve", "--listen", f"127.0.0.1:{free_port()}"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert f"HYPERSERVICE_MAX_REPLICAS: must be at most {MAX_REPLICAS_LIMIT}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.docker
async def test_out_of_range_values_answer_400_and_create_nothing(api, backend, docker_client):
    for fields, field in (({"HealthCheckInterval": MAX_CHECK_INTERVAL + 1}, "HealthCheckInterval"),
                          ({"HealthCheckFall": MAX_CHECK_COUNT + 1}, "HealthCheckFall"),
                          ({"HealthCheckRise": MAX_CHECK_COUNT + 1}, "HealthCheckRise"),
                          ({"Name": "n" * (MAX_NAME_LENGTH + 1)}, "Name")):
        response = await api.post("/services/create", json={**web_body("range", 1), **fields})
        assert response.status_code == 400, (fields, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field]
    assert (await api.get("/services")).json() == []
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_TENANT}={backend.tenant}"}) == []

    # The longest name allowed really runs: its replica's hostname is a full 63-character label.
    name = "n" * MAX_NAME_LENGTH
    assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
    service = await wait_status(api, name, "active", timeout=90)
    hostname = docker_client.containers.get(service["Containers"][0]).attrs["Config"]["Hostname"]
    assert len(hostname) == 63 and hostname.startswith(name + "-")


# --- 5. a 500 says nothing of its cause, the log says everything --------------------------------


@pytest.mark.docker
async def test_server_errors_answer_a_generic_message_with_an_error_id(api, backend, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("the store at /secret/path is on fire")

    monkeypatch.setattr(backend.store, "all", broken)
    with caplog.at_level(logging.ERROR, logger="backend.api"):
        response = await api.get("/services")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"message", "errors"} and body["errors"] == []
    assert "fire" not in body["message"] and "/secret" not in body["message"]
    error_id = body["message"].split("internal error ", 1)[1].split(":", 1)[0]
    assert len(error_id) == 12 and int(error_id, 16) >= 0
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "the store at /secret/path is on fire" in str(logged[0].exc_info[1])
