"""The service front on the real engine, through real sockets on loopback: one HAProxy per service.

Every request here goes to the service's own address (IP:ServicePort) or its floating IP, both
127.x addresses published by Docker, or to containers these tests made.
"""

from __future__ import annotations

import asyncio
import random
import socket

import httpx
import pytest
import trustme

from backend import haproxy
from backend.balancer import LABEL_ADMIN_PORT, LABEL_FRONT
from backend.docker_driver import LABEL_ROLE, LABEL_SERVICE, LABEL_TENANT
from bench.load import SteadyLoad, get
from tests.balancer_helpers import echo_replica, tls_who, who
from tests.conftest import eventually, make_settings, wait_status, web_body

FAST_CHECKS = {"HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 2}


@pytest.fixture
def settings(tmp_path):
    # A floating IP pool of our own, and DOWN replicas replaced only after a minute (the health
    # test needs one to come back UP); one test lowers it.
    block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
    return make_settings(tmp_path / "data", fip_pool=f"{block}.200,{block}.201", replace_down_after=60.0)


async def create_active(api: httpx.AsyncClient, name: str, replicas: int = 2, timeout: float = 60, **fields) -> dict:
    response = await api.post("/services/create", json=web_body(name, replicas, **{**FAST_CHECKS, **fields}))
    assert response.status_code == 201, response.text
    return await wait_status(api, name, "active", timeout=timeout)


def spread(host: str, port: int, count: int, headers: dict | None = None) -> list[str]:
    return [who(host, port, headers) for _ in range(count)]


async def replicas_by_name(api: httpx.AsyncClient, name: str) -> dict[str, dict]:
    return {c["Name"]: c for c in (await api.get(f"/services/{name}/containers")).json()}


# -- 1. one balancer per service, on its own address -------------------------------------------------


async def test_each_service_answers_on_its_own_address_through_its_balancer(api, backend, docker_client):
    one = await create_active(api, "front-a", 2)
    two = await create_active(api, "front-b", 1)
    assert one["IP"] != two["IP"] and one["ServicePort"] == two["ServicePort"] == 80  # both on port 80
    names_a = set(await replicas_by_name(api, "front-a"))
    assert set(await asyncio.to_thread(spread, one["IP"], 80, 6)) == names_a
    assert set(await asyncio.to_thread(spread, two["IP"], 80, 3)) == set(await replicas_by_name(api, "front-b"))
    balancers = docker_client.containers.list(filters={"label": [
        f"{LABEL_TENANT}={backend.tenant}", f"{LABEL_SERVICE}=front-a", f"{LABEL_ROLE}=balancer"]})
    assert len(balancers) == 1 and balancers[0].labels[LABEL_FRONT] == "ip"
    assert balancers[0].image.tags == ["hyperservice-test/haproxy:2.6"]
    assert balancers[0].attrs["HostConfig"]["Binds"] in (None, [])  # config copied in, not mounted
    config = balancers[0].exec_run(["cat", "/usr/local/etc/haproxy/haproxy.cfg"]).output.decode()
    assert "balance roundrobin" in config and "check inter 1s fastinter 50ms downinter 250ms fall 2 rise 2" in config


async def test_an_address_already_in_use_is_reported(api, backend):
    pool_first = backend.settings.address_pool.rsplit(".", 1)[0] + ".1"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((pool_first, 8081))
        squatter.listen()
        response = await api.post("/services/create", json=web_body("squatted", 1, ServicePort=8081, ContainerPort=80))
        assert response.json()["IP"] == pool_first
        service = await wait_status(api, "squatted", "error", timeout=30)
    assert f"address {pool_first}:8081 already in use" in service["Message"]


# -- 2. protocols ------------------------------------------------------------------------------------


async def test_tcp_proxies_bytes_and_http_adds_x_forwarded_for(api):
    tcp = await create_active(api, "plain", 1, Protocol="tcp", ServicePort=9000, **echo_replica())
    status, body, _ = await asyncio.to_thread(get, tcp["IP"], 9000)
    assert status == 200 and "xff= " in body  # tcp: the request reaches the replica untouched
    web = await create_active(api, "webby", 1, Protocol="http", ServicePort=9001, **echo_replica())
    status, body, _ = await asyncio.to_thread(get, web["IP"], 9001)
    forwarded = body.split("xff=")[1].split()[0]
    assert status == 200 and forwarded.count(".") == 3  # http: the balancer added the client's address


async def test_https_is_passed_through_to_replicas_speaking_tls(api):
    ca = trustme.CA()
    pem = ca.issue_cert("replica.test").private_key_and_cert_chain_pem.bytes().decode()
    service = await create_active(api, "passthru", 2, Protocol="https", ServicePort=9443, **echo_replica(tls_pem=pem))
    names = set(await replicas_by_name(api, "passthru"))
    seen = set()
    for _ in range(6):
        body, certificate = await asyncio.to_thread(tls_who, service["IP"], 9443, ca.cert_pem.bytes(), "replica.test")
        seen.add(body.split()[0])
        assert ("commonName", "replica.test") not in certificate.get("issuer", ())  # issued by the test CA
    assert seen == names  # TLS ended at the replicas themselves, balanced over both


async def test_https_term_ends_tls_at_the_balancer_and_never_returns_the_key(api, backend, docker_client):
    ca = trustme.CA()
    pem = ca.issue_cert("shop.test").private_key_and_cert_chain_pem.bytes().decode()
    response = await api.post("/services/create", json=web_body(
        "shop", 2, Protocol="httpsTerm", SSLCert=pem, ServicePort=9444, **FAST_CHECKS, **echo_replica()))
    assert response.status_code == 201 and response.json()["SSLCert"] == ""
    service = await wait_status(api, "shop", "active", timeout=60)
    assert service["SSLCert"] == ""
    assert "PRIVATE KEY" not in (await api.get("/services")).text
    body, certificate = await asyncio.to_thread(tls_who, service["IP"], 9444, ca.cert_pem.bytes(), "shop.test")
    assert "proto=https" in body  # plain HTTP behind the balancer, which says where TLS ended
    assert "shop.test" in str(certificate["subjectAltName"])
    # the key sits in the balancer only, readable by root alone (its master process loads it; the
    # worker serving traffic runs as haproxy)
    (balancer,) = docker_client.containers.list(filters={"label": [
        f"{LABEL_TENANT}={backend.tenant}", f"{LABEL_SERVICE}=shop", f"{LABEL_ROLE}=balancer"]})
    listing = balancer.exec_run(["ls", "-ln", "/usr/local/etc/haproxy/service.pem"]).output.decode()
    assert listing.startswith("-rw-------") and listing.split()[2:4] == ["0", "0"], listing


async def test_values_that_could_reach_the_balancer_config_are_refused(api):
    ca = trustme.CA()
    pem = ca.issue_cert("x.test").private_key_and_cert_chain_pem.bytes().decode()
    bad = [
        ({"Name": "web\nbackend evil"}, "Name"),
        ({"Labels": {"k": "v\n    server evil 10.0.0.1:80"}}, "Labels"),
        ({"Env": ["A=1\nglobal"]}, "Env"),
        ({"Protocol": "httpsTerm", "SSLCert": pem + "\nglobal\n    stats socket /tmp/x level admin\n"}, "SSLCert"),
        ({"Protocol": "httpsTerm", "SSLCert": "crt /etc/passwd"}, "SSLCert"),
        ({"Algorithm": "roundrobin\n    server evil 10.0.0.1:80"}, "Algorithm"),
        ({"WorkingDir": "/app\nglobal"}, "WorkingDir"),
    ]
    for fields, field in bad:
        response = await api.post("/services/create", json={**web_body("inject", 1), **fields})
        assert response.status_code == 400, (fields, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], response.text
    assert (await api.get("/services")).json() == []


# -- 3. algorithms and affinity ------------------------------------------------------------------


async def test_roundrobin_reaches_every_replica_in_turn(api):
    service = await create_active(api, "rr", 3)
    names = set(await replicas_by_name(api, "rr"))
    seen = await asyncio.to_thread(spread, service["IP"], 80, 9)
    assert set(seen) == names
    assert all(seen.count(name) == 3 for name in names)  # in turn: each exactly a third


async def test_leastconn_sends_new_connections_to_the_least_busy_replica(api, backend, docker_client):
    service = await create_active(api, "least", 2, Algorithm="leastconn", Protocol="tcp", ServicePort=9002,
                                  **echo_replica())
    (balancer,) = docker_client.containers.list(filters={"label": [
        f"{LABEL_TENANT}={backend.tenant}", f"{LABEL_SERVICE}=least", f"{LABEL_ROLE}=balancer"]})

    async def only_the_held_connection() -> bool:
        # the sessions the balancer has open to the replicas, from its runtime API
        argv = haproxy.runtime_exec_argv(haproxy.SHOW_SERVER_STATS, int(balancer.labels[LABEL_ADMIN_PORT]))
        answer = await asyncio.to_thread(balancer.exec_run, argv)
        return sum(haproxy.parse_session_counts(answer.output.decode()).values()) == 1

    # Hold one connection open (a request not yet finished): its replica has one connection more.
    held = socket.create_connection((service["IP"], 9002), timeout=5)
    try:
        held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers not finished: stays open
        others = []
        for _ in range(6):
            # each request once the balancer holds the held connection alone (the last one closed)
            await eventually(only_the_held_connection, timeout=20, what="the balancer to hold one session")
            others.append(await asyncio.to_thread(who, service["IP"], 9002))
        held.sendall(b"\r\n")
        held_by = held.recv(4096).decode().partition("\r\n\r\n")[2].split()[0]
    finally:
        held.close()
    assert set(others) == set(await replicas_by_name(api, "least")) - {held_by}


async def test_source_keeps_one_client_on_one_replica(api):
    service = await create_active(api, "src", 3, Algorithm="source")
    seen = await asyncio.to_thread(spread, service["IP"], 80, 9)
    assert len(set(seen)) == 1  # roundrobin would have spread these over all three


async def test_cookie_affinity_keeps_an_http_client_on_one_replica(api):
    service = await create_active(api, "sticky", 3, Protocol="http", SessionAffinity=True)
    status, body, headers = await asyncio.to_thread(get, service["IP"], 80)
    cookie = headers.get("set-cookie", "").split(";")[0]
    assert status == 200 and cookie.startswith("HSID=")
    first = body.split()[0]
    sticky = await asyncio.to_thread(spread, service["IP"], 80, 8, {"Cookie": cookie})
    assert set(sticky) == {first}
    assert len(set(await asyncio.to_thread(spread, service["IP"], 80, 6))) == 3  # without it: spread


async def test_tcp_affinity_keeps_a_client_address_on_one_replica(api):
    service = await create_active(api, "stuck", 3, Protocol="tcp", SessionAffinity=True)
    assert len(set(await asyncio.to_thread(spread, service["IP"], 80, 9))) == 1


# -- 4. health checks ---------------------------------------------------------------------------


async def test_a_failing_replica_goes_down_gets_no_traffic_and_comes_back_up(api, docker_client):
    service = await create_active(api, "checked", 2, Protocol="http")
    replicas = await replicas_by_name(api, "checked")
    assert {r["Health"] for r in replicas.values()} == {"UP"}
    sick_name, well_name = sorted(replicas)
    sick = docker_client.containers.get(replicas[sick_name]["Id"])
    sick.exec_run(["rm", "/www/index.html"])  # GET / now answers 404: the HTTP check fails

    async def health_of(name):
        return (await replicas_by_name(api, "checked"))[name]["Health"]

    # (how soon, Fall × interval, is bench/'s business; here: it goes DOWN, and says so)
    await eventually(lambda: _is(health_of(sick_name), "DOWN"), timeout=10, interval=0.1, what="DOWN")
    down = (await replicas_by_name(api, "checked"))[sick_name]
    assert down["HealthSince"] and down["State"] == "running"
    degraded = await wait_status(api, "checked", "degraded", 10)  # the health event wakes the reconciler
    assert sick_name in degraded["Message"]  # not all UP
    assert set(await asyncio.to_thread(spread, service["IP"], 80, 6)) == {well_name}

    sick.exec_run(["sh", "-c", "hostname > /www/index.html"])
    await eventually(lambda: _is(health_of(sick_name), "UP"), timeout=10, interval=0.1, what="UP again")
    await wait_status(api, "checked", "active")
    assert set(await asyncio.to_thread(spread, service["IP"], 80, 6)) == {sick_name, well_name}
    assert set(await replicas_by_name(api, "checked")) == {sick_name, well_name}  # not replaced


async def _is(value, expected):
    return (await value) == expected


async def test_a_replica_down_for_too_long_is_replaced(tmp_path, docker_client):
    from backend.core import Backend
    from tests.conftest import client_for, remove_tenant_objects

    instance = Backend(make_settings(tmp_path / "data", replace_down_after=2.0))
    instance.start()
    try:
        async with client_for(instance) as api:
            await create_active(api, "doomed", 2, Protocol="http")
            replicas = await replicas_by_name(api, "doomed")
            victim = sorted(replicas)[0]
            docker_client.containers.get(replicas[victim]["Id"]).exec_run(["rm", "/www/index.html"])

            async def replaced():
                names = set(await replicas_by_name(api, "doomed"))
                return victim not in names and len(names) == 2

            await eventually(replaced, timeout=30, what="the DOWN replica to be replaced")
            await wait_status(api, "doomed", "active")
    finally:
        instance.close()
        remove_tenant_objects(docker_client, instance.tenant)


async def test_tcp_services_are_checked_by_connecting(api, docker_client):
    # httpd in the background and `sleep` as the main process: killing httpd closes the port but
    # leaves the replica running, so only the balancer's connect check can notice.
    service = await create_active(api, "tcpcheck", 2, Protocol="tcp", StopSignal="SIGKILL", Cmd=[
        "sh", "-c", "mkdir -p /www && hostname > /www/index.html && httpd -p 80 -h /www && exec sleep 100000"])
    replicas = await replicas_by_name(api, "tcpcheck")
    victim = sorted(replicas)[0]
    docker_client.containers.get(replicas[victim]["Id"]).exec_run(["sh", "-c", "kill $(pidof httpd)"])

    async def down():
        return (await replicas_by_name(api, "tcpcheck")).get(victim, {}).get("Health") == "DOWN"

    await eventually(down, timeout=15, what="the closed port to be seen DOWN")
    assert set(await asyncio.to_thread(spread, service["IP"], 80, 4)) == set(replicas) - {victim}


# -- 5. scaling under load --------------------------------------------------------------------------


async def load_reaches(api: httpx.AsyncClient, name: str, *loads: SteadyLoad) -> None:
    """Wait until every replica the service has now answered the (new-connection) load, and every
    load made some more requests since: the change was really under load."""
    names = set(await replicas_by_name(api, name))
    marks = [load.result.ok for load in loads]
    await eventually(
        lambda: names <= set(loads[0].result.by_replica) and all(
            load.result.ok >= mark + 20 for load, mark in zip(loads, marks, strict=True)),
        timeout=30, what=f"the load to reach every replica of {name}")


async def test_scaling_2_5_2_under_steady_load_fails_no_request(api):
    service = await create_active(api, "steady", 2, Protocol="http")
    with SteadyLoad(service["IP"], 80, threads=4) as load, SteadyLoad(service["IP"], 80, threads=2, keepalive=True) as kept:
        await load_reaches(api, "steady", load, kept)
        for target in (5, 2, 5, 2):
            response = await api.post("/services/steady/update", json={"Replicas": target})
            assert response.status_code == 200
            await wait_status(api, "steady", "active", timeout=60)
            await load_reaches(api, "steady", load, kept)
    for result in (load.result, kept.result):
        assert result.failed == 0, result.errors
        assert result.ok > 100
    assert len(load.result.by_replica) >= 5  # the new replicas really took traffic


async def test_a_rolling_update_under_load_fails_no_request(api):
    service = await create_active(api, "rolling", 2, Protocol="http")
    with SteadyLoad(service["IP"], 80, threads=4) as load:
        response = await api.post("/services/rolling/update", json={"Image": "hyperservice-test/web:2"})
        assert response.status_code == 200
        await wait_status(api, "rolling", "active", timeout=90)
        await load_reaches(api, "rolling", load)
    assert load.result.failed == 0, load.result.errors
    assert all("version 2" in get(service["IP"], 80)[1] for _ in range(4))


# -- 6. floating IPs -------------------------------------------------------------------------------


async def test_floating_ip_attach_and_detach(api, backend):
    first, second = backend.settings.fip_addresses
    service = await create_active(api, "floaty", 2)
    other = await create_active(api, "other", 1)

    outside = await api.post("/services/floaty/update", json={"FIP": "127.0.0.99"})
    assert outside.status_code == 400 and "not in the floating IP pool" in outside.json()["errors"][0]["message"]

    attached = await api.post("/services/floaty/update", json={"FIP": first})
    assert attached.status_code == 200 and attached.json()["FIP"] == first
    await wait_status(api, "floaty", "active")
    names = set(await replicas_by_name(api, "floaty"))
    assert set(await asyncio.to_thread(spread, first, 80, 4)) == names  # answers on FIP:ServicePort
    assert set(await asyncio.to_thread(spread, service["IP"], 80, 4)) == names  # and still on its IP

    taken = await api.post("/services/other/update", json={"FIP": first})
    assert taken.status_code == 409 and "floaty" in taken.json()["message"]
    assert (await api.get("/services/other")).json()["FIP"] == ""
    assert {f["Address"]: f["Service"] for f in (await api.get("/fips")).json()} == {first: "floaty", second: ""}

    detached = await api.post("/services/floaty/update", json={"FIP": ""})
    assert detached.status_code == 200 and detached.json()["FIP"] == ""
    await wait_status(api, "floaty", "active")
    with pytest.raises(OSError):
        await asyncio.to_thread(get, first, 80, "/", None, 2)
    assert set(await asyncio.to_thread(spread, service["IP"], 80, 2)) <= names
    # Now free: the other service may take it.
    assert (await api.post("/services/other/update", json={"FIP": first})).status_code == 200
    await wait_status(api, "other", "active")
    assert await asyncio.to_thread(who, first, 80) in set(await replicas_by_name(api, "other"))
    assert other["IP"] != first
