"""Per-service networks come from the product's own pool (HYPERSERVICE_NETWORK_POOL), not Docker's.

Docker's default address pools hold ~30 bridge networks: a network per service from them capped the
product at 25 services and starved everyone else on the engine. The unit tests check the allocator
(sizes, reuse, exhaustion, migration of an older state file); the real-engine tests check the
networks Docker made, a restart, a subnet someone else took, a full pool, and 60 services at once.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

import docker
import pytest

from backend.core import Backend
from backend.docker_driver import LABEL_ROLE, LABEL_TENANT, LABEL_UID
from backend.models import ServiceSpec
from backend.settings import Settings
from backend.store import NetworkPoolExhausted, Store, next_fit_subnet
from bench.load import SteadyLoad
from tests.balancer_helpers import who
from tests.conftest import (
    backend_to_restart,
    client_for,
    eventually,
    make_settings,
    remove_tenant_objects,
    wait_status,
    web_body,
)


def spec(name: str) -> ServiceSpec:
    return ServiceSpec.model_validate({"Name": name, "Image": "x:1", "ServicePort": 80, "Replicas": 1})


def store_on(tmp_path: Path, pool: str = "10.50.0.0/24", prefix: int = 28) -> Store:
    return Store(tmp_path / "state.db", "127.9.0.0/24", pool, prefix)


# -- the allocator (no engine) ----------------------------------------------------------------------


def test_subnet_size_follows_the_replica_limit():
    # Room for max_replicas + 1 (rolling update) + 2 balancers + gateway + network/broadcast.
    for max_replicas in (1, 2, 10, 100, 250):
        prefix = Settings(max_replicas=max_replicas).subnet_prefix
        hosts = 2 ** (32 - prefix) - 3  # minus network, broadcast, gateway
        assert hosts >= max_replicas + 1 + 2
        if max_replicas > 26:
            assert 2 ** (32 - prefix - 1) - 3 < max_replicas + 3  # and not twice as big as needed
        else:
            assert prefix == 27  # the smallest: room to raise the limit later


def test_a_pool_smaller_than_one_subnet_is_refused_at_start():
    with pytest.raises(ValueError, match="HYPERSERVICE_NETWORK_POOL"):
        Settings(network_pool="10.1.2.0/28", max_replicas=100).check_network_pool()
    Settings(network_pool="10.1.2.0/25", max_replicas=100).check_network_pool()


def test_each_service_gets_its_own_subnet_of_the_pool_and_it_is_freed_on_delete(tmp_path):
    store = store_on(tmp_path)
    records = [store.insert(spec(f"s{i}"), "created", "") for i in range(16)]  # a /24 holds 16 /28s
    subnets = [ipaddress.ip_network(r.subnet) for r in records if r.subnet]
    assert len(set(subnets)) == 16
    assert all(net.prefixlen == 28 and net.subnet_of(ipaddress.ip_network("10.50.0.0/24")) for net in subnets)
    with pytest.raises(NetworkPoolExhausted, match="HYPERSERVICE_NETWORK_POOL 10.50.0.0/24"):
        store.insert(spec("one-too-many"), "created", "")
    assert store.get("one-too-many") is None  # nothing half-created

    store.forget(records[3])
    again = store.insert(spec("later"), "created", "")
    assert again.subnet == records[3].subnet


def test_a_freed_subnet_is_handed_out_again_only_after_the_rest_of_the_pool(tmp_path):
    # Next-fit: an engine may hold a deleted network's subnet a while (a swarm node keeps an overlay's),
    # so the subnet a delete frees is not the next one handed out; the cursor survives a restart.
    store = store_on(tmp_path)
    first, second = (store.insert(spec(name), "created", "") for name in ("a", "b"))
    assert (first.subnet, second.subnet) == ("10.50.0.0/28", "10.50.0.16/28")
    store.forget(first)
    assert store.insert(spec("c"), "created", "").subnet == "10.50.0.32/28"
    store.close()
    reopened = store_on(tmp_path)
    assert reopened.insert(spec("d"), "created", "").subnet == "10.50.0.48/28"


def test_next_fit_goes_round_the_pool_and_skips_what_is_taken():
    pool = ipaddress.ip_network("10.50.0.0/26")  # four /28s
    net = ipaddress.ip_network
    assert next_fit_subnet(pool, 28, [], None) == net("10.50.0.0/28")
    assert next_fit_subnet(pool, 28, [], net("10.50.0.16/28")) == net("10.50.0.32/28")
    assert next_fit_subnet(pool, 28, [], net("10.50.0.48/28")) == net("10.50.0.0/28")  # round to the start
    taken = [net("10.50.0.0/28"), net("10.50.0.32/27"), net("fd00::/64")]
    assert next_fit_subnet(pool, 28, taken, net("10.50.0.48/28")) == net("10.50.0.16/28")
    assert next_fit_subnet(pool, 28, taken, net("192.168.0.0/28")) == net("10.50.0.16/28")  # not of the pool
    assert next_fit_subnet(pool, 28, [*taken, net("10.50.0.16/28")], None) is None  # full


def test_allocations_survive_a_restart(tmp_path):
    store = store_on(tmp_path)
    first = store.insert(spec("a"), "created", "")
    store.close()
    reopened = store_on(tmp_path)
    assert reopened.get("a").subnet == first.subnet
    assert reopened.insert(spec("b"), "created", "").subnet != first.subnet


def test_a_subnet_taken_on_the_engine_is_skipped(tmp_path):
    store = store_on(tmp_path)
    record = store.insert(spec("a"), "created", "")
    moved = store.assign_subnet("a", avoid=[record.subnet, "10.50.0.16/28", "172.17.0.0/16", "fd00::/64"])
    assert moved == "10.50.0.32/28"
    assert store.get("a").subnet == moved


def test_an_older_state_file_is_migrated_and_its_services_get_subnets(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE services (
            name TEXT PRIMARY KEY, uid TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
            revision INTEGER NOT NULL DEFAULT 1, generation INTEGER NOT NULL DEFAULT 1,
            ip TEXT NOT NULL UNIQUE, fip TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
            message TEXT NOT NULL, created TEXT NOT NULL, containers TEXT,
            deleting INTEGER NOT NULL DEFAULT 0, keep INTEGER NOT NULL DEFAULT 0);
        """
    )
    db.execute(
        "INSERT INTO services (name, uid, spec, ip, status, message, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("old", "a" * 32, spec("old").model_dump_json(), "127.9.0.1", "active", "", "2026-01-01T00:00:00Z"),
    )
    db.commit()
    db.close()
    store = store_on(tmp_path)
    assert store.get("old").subnet is None  # made before the pool: gets one when its network is made
    assert store.assign_subnet("old") == "10.50.0.0/28"
    assert store.insert(spec("new"), "created", "").subnet == "10.50.0.16/28"


# -- on the real engine -----------------------------------------------------------------------------


def network_of(client: docker.DockerClient, tenant: str, uid: str) -> docker.models.networks.Network:
    labels = [f"{LABEL_TENANT}={tenant}", f"{LABEL_UID}={uid}", f"{LABEL_ROLE}=network"]
    (network,) = client.networks.list(filters={"label": labels})
    return network


def subnet_of(network: docker.models.networks.Network) -> str:
    return network.attrs["IPAM"]["Config"][0]["Subnet"]


@pytest.mark.docker
async def test_service_networks_come_from_the_pool_and_stay_after_a_restart(tmp_path, docker_client):
    settings = make_settings(tmp_path / "data", max_replicas=4)
    pool = ipaddress.ip_network(settings.network_pool)
    with backend_to_restart(settings, docker_client) as first:
        tenant = first.tenant
        async with client_for(first) as api:
            for name in ("one", "two"):
                assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
            for name in ("one", "two"):
                await wait_status(api, name, "active")
        records = {name: first.store.get(name) for name in ("one", "two")}
        subnets = {name: subnet_of(network_of(docker_client, tenant, r.uid)) for name, r in records.items()}
        assert subnets["one"] != subnets["two"]
        for name, subnet in subnets.items():
            assert ipaddress.ip_network(subnet).subnet_of(pool), subnet
            assert subnet == records[name].subnet
            replica = docker_client.containers.get(first.store.get(name).containers[0])
            (address,) = [n["IPAddress"] for n in replica.attrs["NetworkSettings"]["Networks"].values()]
            assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
        first.close()

        second = Backend(settings)
        second.start()
        try:
            async with client_for(second) as api:
                await wait_status(api, "one", "active")
            for name, record in records.items():
                assert second.store.get(name).subnet == subnets[name]
                assert subnet_of(network_of(docker_client, tenant, record.uid)) == subnets[name]
        finally:
            second.close()


@pytest.mark.docker
async def test_a_subnet_someone_else_took_is_skipped(tmp_path, docker_client):
    settings = make_settings(tmp_path / "data", max_replicas=4)
    first_subnet = next(ipaddress.ip_network(settings.network_pool).subnets(new_prefix=settings.subnet_prefix))
    squatter = docker_client.networks.create(
        f"squatter-{tmp_path.name[-8:]}",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(first_subnet))]),
    )
    backend = Backend(settings)
    backend.start()
    try:
        async with client_for(backend) as api:
            await api.post("/services/create", json=web_body("web", 1))
            assert backend.store.get("web").subnet == str(first_subnet)  # the store alone can't know
            await wait_status(api, "web", "active")
        record = backend.store.get("web")
        assert record.subnet != str(first_subnet)
        assert subnet_of(network_of(docker_client, backend.tenant, record.uid)) == record.subnet
    finally:
        backend.close()
        remove_tenant_objects(docker_client, backend.tenant)
        squatter.remove()


@pytest.mark.docker
async def test_a_full_pool_answers_a_clear_error_creates_nothing_and_a_delete_frees_a_subnet(backend_factory):
    backend = backend_factory(network_pool="10.60.0.0/26", max_replicas=2)  # /27 subnets: room for two
    async with client_for(backend) as api:
        for name in ("a", "b"):
            assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
        answer = await api.post("/services/create", json=web_body("c", 1))
        assert answer.status_code == 409
        assert "HYPERSERVICE_NETWORK_POOL 10.60.0.0/26" in answer.json()["message"]
        assert (await api.get("/services/c")).status_code == 404
        await wait_status(api, "a", "active")
        await api.delete("/services/a")

        async def created() -> bool:
            return (await api.post("/services/create", json=web_body("c", 1))).status_code == 201

        await eventually(created, timeout=60, interval=0.5, what="a subnet freed by the delete")
        await wait_status(api, "c", "active")
        await wait_status(api, "b", "active")


@pytest.mark.docker
@pytest.mark.timeout(900)  # 120 containers on 2 shared cores
async def test_sixty_services_at_once_beyond_dockers_default_pools(backend_factory, docker_client):
    # Docker's default pools hold ~30 bridge networks; the product's own pool is not limited by them.
    # The product's default resync (30 s): the tests' 2 s would re-read 60 services 30 times a second.
    backend = backend_factory(max_replicas=2, workers=4, resync_seconds=30)
    names = [f"svc{i:02d}" for i in range(60)]
    async with client_for(backend) as api:
        for name in names:
            body = web_body(name, 1, HealthCheckInterval=1, HealthCheckRise=1)
            assert (await api.post("/services/create", json=body)).status_code == 201
        for name in names:
            await wait_status(api, name, "active", timeout=600)
        statuses = {s["Name"]: s["Status"] for s in (await api.get("/services")).json()}
    assert statuses == dict.fromkeys(names, "active")
    subnets = {backend.store.get(name).subnet for name in names}
    assert len(subnets) == 60 and None not in subnets


@pytest.mark.docker
async def test_a_raised_replica_limit_grows_existing_balancers(tmp_path, docker_client):
    # Made under a limit of 2 (a balancer with 3 server slots), scaled to 6 after a restart with 40.
    small = make_settings(tmp_path / "data", max_replicas=2)
    with backend_to_restart(small, docker_client) as first:
        async with client_for(first) as api:
            await api.post("/services/create", json=web_body("grow", 2, HealthCheckInterval=1, HealthCheckRise=1))
            service = await wait_status(api, "grow", "active", timeout=60)
        first.close()

        second = Backend(make_settings(tmp_path / "data", max_replicas=40, address_pool=small.address_pool))
        second.start()
        try:
            async with client_for(second) as api:
                with SteadyLoad(service["IP"], 80, threads=2, max_seconds=120) as load:
                    answer = await api.post("/services/grow/update", json={"Replicas": 6})
                    assert answer.status_code == 200, answer.text
                    await wait_status(api, "grow", "active", timeout=120)
                    seen: set[str] = set()
                    misses: list[str] = []  # the load below counts them; kept here to say why on a timeout

                    def all_six_answer() -> bool:
                        try:
                            seen.add(who(service["IP"], 80))
                        except (OSError, AssertionError) as exc:
                            misses.append(repr(exc))
                        return len(seen) == 6

                    try:
                        await eventually(all_six_answer, timeout=60, interval=0.05, what="six replicas answering")
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}; answered by {sorted(seen)}; misses {misses[-3:]}") from None
                # Measured, not asserted here: the reload hands the listening socket over (see README).
                print(f"requests during the growth: {load.result.ok} ok, {load.result.failed} failed")
                # The subnet made under the small limit (a /27) caps the service: said, not half-done.
                too_many = await api.post("/services/grow/update", json={"Replicas": 30})
                assert too_many.status_code == 400
                assert too_many.json()["errors"][0]["field"] == "Replicas"
                assert (await api.get("/services/grow")).json()["Replicas"] == 6
        finally:
            second.close()
