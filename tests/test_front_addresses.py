"""The service front without docker-proxy, on the real engine: each balancer binds IP:ServicePort in
the host's network namespace itself, so HAProxy sees every client's own address, and its runtime
API is a port of the host's loopback that answers only with the balancer's secret.

Clients here connect from distinct loopback addresses (127.a.b.2, 127.a.b.3, ...: all of 127/8 is
local), to service addresses and floating IPs on loopback, and to containers these tests made.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import docker
import httpx
import pytest

from backend import balancer as balancer_module
from backend import haproxy as hx
from backend.balancer import BALANCER_PIDS_LIMIT, LABEL_ADMIN_PORT, LABEL_FRONT
from backend.docker_driver import LABEL_ROLE, LABEL_SERVICE, LABEL_TENANT
from tests.balancer_helpers import echo_replica, get, who
from tests.conftest import WEB_IMAGE, make_settings, wait_status, web_body

FAST_CHECKS = {"HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 2}


@pytest.fixture
def settings(tmp_path):
    block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
    return make_settings(tmp_path / "data", fip_pool=f"{block}.200,{block}.201")


@pytest.fixture
def clients() -> list[str]:
    """16 distinct local client addresses of a random 127.a.b.0/24 block."""
    block = f"127.{random.randint(1, 99)}.{random.randint(0, 255)}"
    return [f"{block}.{host}" for host in range(2, 18)]


async def create_active(api: httpx.AsyncClient, name: str, replicas: int, **fields) -> dict:
    response = await api.post("/services/create", json=web_body(name, replicas, **{**FAST_CHECKS, **fields}))
    assert response.status_code == 201, response.text
    return await wait_status(api, name, "active", timeout=90)


async def replica_names(api: httpx.AsyncClient, name: str) -> set[str]:
    return {c["Name"] for c in (await api.get(f"/services/{name}/containers")).json()}


def balancers_of(docker_client: docker.DockerClient, tenant: str, service: str | None = None) -> list:
    labels = [f"{LABEL_TENANT}={tenant}", f"{LABEL_ROLE}=balancer"]
    if service:
        labels.append(f"{LABEL_SERVICE}={service}")
    return docker_client.containers.list(filters={"label": labels})


def by_client(host: str, port: int, clients: list[str], rounds: int = 3) -> dict[str, set[str]]:
    """Which replicas answered each client address, over `rounds` new connections each."""
    seen: dict[str, set[str]] = {client: set() for client in clients}
    for _ in range(rounds):
        for client in clients:
            seen[client].add(who(host, port, source=client))
    return seen


def docker_proxies_serving(address: str) -> list[list[str]]:
    """The argv of every docker-proxy process publishing something on `address`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [part.decode(errors="replace") for part in cmdline.read_bytes().split(b"\0") if part]
        except OSError:
            continue
        if argv and argv[0].endswith("docker-proxy") and address in argv:
            found.append(argv)
    return found


def send_raw(port: int, payload: bytes, timeout: float = 15.0) -> bytes:
    """Send `payload` to 127.0.0.1:port, close our side, and answer everything that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(payload)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


# -- the balancer sees each client's own address ------------------------------------------------


@pytest.mark.parametrize("protocol", ["tcp", "http"])
async def test_source_spreads_distinct_client_addresses_and_keeps_each_on_its_replica(api, clients, protocol):
    service = await create_active(api, f"src-{protocol}", 3, Algorithm="source", Protocol=protocol)
    seen = await asyncio.to_thread(by_client, service["IP"], 80, clients)
    assert all(len(replicas) == 1 for replicas in seen.values()), seen  # each client stays on one replica
    spread = set().union(*seen.values())
    assert len(spread) >= 2, seen  # ... and the clients are not all on the same one
    assert spread <= await replica_names(api, f"src-{protocol}")


async def test_tcp_affinity_keeps_each_client_address_on_its_replica(api, clients):
    service = await create_active(api, "stick", 3, Protocol="tcp", SessionAffinity=True)
    seen = await asyncio.to_thread(by_client, service["IP"], 80, clients[:6])
    assert all(len(replicas) == 1 for replicas in seen.values()), seen
    # roundrobin placed the six new clients in turn: every replica holds some
    assert set().union(*seen.values()) == await replica_names(api, "stick")


async def test_x_forwarded_for_carries_the_client_address_also_through_a_floating_ip(api, backend, clients):
    service = await create_active(api, "xff", 2, Protocol="http", **echo_replica())
    port = service["ServicePort"]
    fip = backend.settings.fip_addresses[0]
    assert (await api.post("/services/xff/update", json={"FIP": fip})).status_code == 200
    await wait_status(api, "xff", "active")
    for address, client in ((service["IP"], clients[0]), (fip, clients[1]), (service["IP"], "127.0.0.1")):
        status, body, _ = await asyncio.to_thread(get, address, port, "/", {"X-Forwarded-For": "10.6.6.6"}, 5.0, client)
        assert status == 200
        # HAProxy appends the address it saw; the replica echoes the header's last value.
        assert body.split("xff=")[1].split()[0].split(",")[-1].strip() == client, body


# -- no docker-proxy, ports below 1024 -----------------------------------------------------------


async def test_port_80_is_bound_by_the_balancer_itself_no_docker_proxy(api, backend, docker_client):
    service = await create_active(api, "low", 2)
    fip = backend.settings.fip_addresses[1]
    assert (await api.post("/services/low/update", json={"FIP": fip})).status_code == 200
    await wait_status(api, "low", "active")
    names = await replica_names(api, "low")
    for address in (service["IP"], fip):
        assert service["ServicePort"] == 80
        assert {await asyncio.to_thread(who, address, 80) for _ in range(4)} == names
        assert docker_proxies_serving(address) == []
    balancers = balancers_of(docker_client, backend.tenant, "low")
    assert sorted(b.labels[LABEL_FRONT] for b in balancers) == ["fip", "ip"]
    for balancer in balancers:
        host = balancer.attrs["HostConfig"]
        assert host["NetworkMode"] == "host" and not host.get("PortBindings")
        assert host["CapDrop"] == ["ALL"] and set(host["CapAdd"]) == {"NET_BIND_SERVICE", "SETUID", "SETGID", "KILL"}
        assert host["PidsLimit"] == BALANCER_PIDS_LIMIT
        processes = balancer.top()["Processes"]
        users = sorted(row[0] for row in processes)
        assert users == ["99", "root"], processes  # the master binds as root, the worker runs as haproxy

    # The check above would see a docker-proxy: a container published on a loopback address has one.
    block = service["IP"].rsplit(".", 1)[0]
    published = docker_client.containers.run(
        WEB_IMAGE, detach=True, ports={"80/tcp": (f"{block}.250", 80)}, labels={LABEL_TENANT: backend.tenant})
    try:
        assert docker_proxies_serving(f"{block}.250")
    finally:
        published.remove(force=True)


# -- the runtime API -------------------------------------------------------------------------------


async def test_each_balancer_has_its_own_runtime_api_port_that_answers_only_with_the_secret(api, backend, docker_client):
    await create_active(api, "one", 1)
    await create_active(api, "two", 1)
    fip = backend.settings.fip_addresses[0]
    assert (await api.post("/services/two/update", json={"FIP": fip})).status_code == 200
    await wait_status(api, "two", "active")
    balancers = balancers_of(docker_client, backend.tenant)
    ports = [int(b.labels[LABEL_ADMIN_PORT]) for b in balancers]
    assert len(balancers) == 3 and len(set(ports)) == 3, ports
    assert all(port in hx.ADMIN_PORTS for port in ports)
    for balancer, port in zip(balancers, ports, strict=True):
        # the way the backend asks (the secret read inside the container) gets the CLI ...
        answer = balancer.exec_run(hx.runtime_exec_argv("show info", port)).output.decode()
        assert "Name: HAProxy" in answer
        # ... a local process without the secret gets nothing, whatever it sends
        assert await asyncio.to_thread(send_raw, port, b"show info\n") == b""
        assert await asyncio.to_thread(send_raw, port, b" " * hx.ADMIN_SECRET_LENGTH + b"show info\n") == b""
        assert await asyncio.to_thread(send_raw, port, b"\t" * hx.ADMIN_SECRET_LENGTH + b"show stat\n") == b""


async def test_a_replica_cannot_reach_any_runtime_api(api, backend, docker_client):
    await create_active(api, "inside", 1)
    await create_active(api, "neighbour", 1)
    (replica,) = docker_client.containers.list(filters={"label": [
        f"{LABEL_TENANT}={backend.tenant}", f"{LABEL_SERVICE}=inside", f"{LABEL_ROLE}=replica"]})
    (network,) = replica.attrs["NetworkSettings"]["Networks"].values()
    gateway = network["Gateway"]  # the host, as the replica sees it

    def ask(host: str, port: int) -> tuple[int, str]:
        script = f'printf "show info\\n" | nc -w 3 {host} {port}'
        code, output = replica.exec_run(["sh", "-c", script])
        return code, output.decode(errors="replace")

    # nc works in the replica: its own httpd answers
    code, output = replica.exec_run(["sh", "-c", 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 127.0.0.1 80'])
    assert code == 0 and "200 OK" in output.decode(), output
    for balancer in balancers_of(docker_client, backend.tenant):  # its own service's and the neighbour's
        port = int(balancer.labels[LABEL_ADMIN_PORT])
        for host in ("127.0.0.1", gateway):
            code, output = await asyncio.to_thread(ask, host, port)
            assert code != 0 and "Name:" not in output, (host, port, output)


async def test_a_taken_runtime_api_port_is_replaced_by_another(api, backend, docker_client, monkeypatch):
    with socket.socket() as squatter, socket.socket() as spare:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        spare.bind(("127.0.0.1", 0))
        taken, free = squatter.getsockname()[1], spare.getsockname()[1]
        spare.close()
        offered = [taken, free]

        class Chooser:
            @staticmethod
            def choice(_ports: range) -> int:
                return offered.pop(0)

        monkeypatch.setattr(balancer_module, "random", Chooser)
        service = await create_active(api, "moved", 1)
        assert offered == []  # the taken port was tried first, then the free one
        (balancer,) = balancers_of(docker_client, backend.tenant, "moved")
        assert balancer.labels[LABEL_ADMIN_PORT] == str(free)
        assert await asyncio.to_thread(who, service["IP"], 80) in await replica_names(api, "moved")


async def test_a_floating_ip_that_is_no_address_of_this_host_is_reported(backend_factory, docker_client):
    from tests.conftest import client_for

    # 192.0.2.0/24 is TEST-NET-1: never an address of this host. HAProxy only tries to bind it.
    instance = backend_factory(fip_pool="192.0.2.77")
    async with client_for(instance) as api:
        service = await create_active(api, "faraway", 1)
        assert (await api.post("/services/faraway/update", json={"FIP": "192.0.2.77"})).status_code == 200
        failed = await wait_status(api, "faraway", "error", timeout=60)
        assert "cannot listen on 192.0.2.77:80: Cannot assign requested address" in failed["Message"]
        # the service's own address is not disturbed, and nothing is left crash-looping
        assert await asyncio.to_thread(who, service["IP"], 80) in await replica_names(api, "faraway")
        assert [b.labels[LABEL_FRONT] for b in balancers_of(docker_client, instance.tenant)] == ["ip"]
        assert (await api.post("/services/faraway/update", json={"FIP": ""})).status_code == 200
        await wait_status(api, "faraway", "active", timeout=60)
