"""The Docker engine going away and coming back (as in a `dockerd` restart), on the real engine
through a forwarding socket the test cuts (tests/engine_proxy.py): services keep their last known
status with a note, reads of the engine answer 503 naming DOCKER_HOST, changes are accepted and
wait, and the return is noticed at once with no status flicker."""

from __future__ import annotations

import asyncio
import time

import docker
import pytest
import requests

from backend.core import Backend
from backend.docker_driver import EngineUnavailable, describe_engine_error, engine_calls, is_engine_unreachable
from bench.engine_proxy import EngineProxy
from tests.conftest import client_for, eventually, make_settings, remove_tenant_objects, wait_status, web_body


async def drain(subscription) -> list[dict]:
    """Every event delivered so far (those published from threads are queued on the loop first)."""
    await asyncio.sleep(0)
    events = []
    while not subscription.queue.empty():
        events.append(subscription.queue.get_nowait())
    return events


def test_connection_failures_are_engine_unavailable_naming_docker_host(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/nowhere.sock")
    client = docker.APIClient(base_url="unix:///run/nowhere.sock", version="1.41")
    with pytest.raises(EngineUnavailable) as caught, engine_calls():
        client.ping()
    message = str(caught.value)
    assert "unix:///run/nowhere.sock (DOCKER_HOST)" in message
    assert "no socket there" in message and "FileNotFoundError" not in message  # words, not a repr
    monkeypatch.delenv("DOCKER_HOST")
    assert "DOCKER_HOST is not set" in describe_engine_error(ConnectionRefusedError())
    # The engine answering with an error is not "unreachable": that stays the service's error.
    assert not is_engine_unreachable(docker.errors.APIError("409 Conflict"))
    assert not is_engine_unreachable(ValueError("bad"))
    assert is_engine_unreachable(requests.exceptions.ConnectionError("Connection aborted."))
    with pytest.raises(ValueError), engine_calls():
        raise ValueError("passes through")


async def test_engine_restart_keeps_statuses_answers_503_and_returns_without_flicker(tmp_path, docker_client, monkeypatch):
    proxy = EngineProxy(tmp_path / "engine.sock")
    proxy.start()
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    backend = Backend(make_settings(tmp_path / "data"))
    backend.start()
    tenant = backend.tenant
    feed = backend.hub.subscribe_async()
    synced: list[tuple[str, float]] = []  # (service, when) of every sync that ran to its end
    tried: list[str] = []
    real_sync = backend.reconciler.sync

    def recording_sync(name: str):
        tried.append(name)
        again = real_sync(name)
        synced.append((name, time.monotonic()))
        return again

    monkeypatch.setattr(backend.reconciler, "sync", recording_sync)
    try:
        async with client_for(backend) as api:
            for name in ("steady", "grows"):
                assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
            for name in ("steady", "grows"):
                await wait_status(api, name, "active", 60)
            await drain(feed)
            tried.clear()

            proxy.cut()
            await eventually(lambda: backend.reconciler.engine_error, 10, what="the outage to be noticed")
            # The balancers' log streams broke: both services are looked at while the engine is away.
            await eventually(lambda: {"steady", "grows"} <= set(tried), 30, what="syncs during the outage")

            listed = {s["Name"]: s for s in (await api.get("/services")).json()}
            for name in ("steady", "grows"):
                assert listed[name]["Status"] == "active", listed[name]
                assert listed[name]["Message"].startswith("Scaling complete (Docker engine unreachable since ")
            for path in ("/services/steady/containers", "/replicas", "/services/steady/logs", "/services/steady/stats"):
                response = await api.get(path)
                assert response.status_code == 503, (path, response.text)
                message = response.json()["message"]
                assert f"{proxy.url} (DOCKER_HOST)" in message and "no socket there" in message, message

            created = await api.post("/services/create", json=web_body("newcomer", 1))
            assert created.status_code == 201, created.text
            assert created.json()["Status"] == "created"
            assert "Docker engine unreachable since" in created.json()["Message"] and "waiting for it" in created.json()["Message"]
            scaled = await api.post("/services/grows/update", json={"Replicas": 2})
            assert scaled.status_code == 200 and scaled.json()["Status"] == "scaling"
            assert "waiting for it" in scaled.json()["Message"]
            await eventually(lambda: "newcomer" in tried, 10, what="the new service to be tried")
            assert (await api.get("/services/newcomer")).json()["Status"] == "created"  # not error

            # As dockerd does when it starts again: every container of ours restarts (the replicas
            # keep their ids), and the engine answers while the balancers' servers are unchecked.
            ours = docker_client.containers.list(filters={"label": f"io.hyperservice.tenant={tenant}"})
            for container in sorted(ours, key=lambda c: c.labels.get("io.hyperservice.role") == "balancer"):
                container.restart(timeout=1)

            restored = time.monotonic()
            proxy.restore()
            await eventually(lambda: backend.reconciler.engine_error is None, 10, interval=0.02, what="the engine's return")
            print(f"engine return noticed after {time.monotonic() - restored:.3f} s")
            await eventually(lambda: any(n == "steady" and t > restored for n, t in synced), 30,
                             what="steady looked at again after the return")
            newcomer = await wait_status(api, "newcomer", "active", 60)
            grows = await wait_status(api, "grows", "active", 60)
            assert len(newcomer["Containers"]) == 1 and len(grows["Containers"]) == 2
            steady = (await api.get("/services/steady")).json()
            assert (steady["Status"], steady["Message"]) == ("active", "Scaling complete")
            assert steady["Containers"] == listed["steady"]["Containers"]  # the same replica, restarted

            async def up_again():
                (replica,) = (await api.get("/services/steady/containers")).json()
                return replica["Health"] == "UP"

            await eventually(up_again, 60, what="steady's replica UP at the restarted balancer")

            events = await drain(feed)
            kinds = [(e["Type"], e["Action"]) for e in events if e["Type"] == "engine"]
            assert kinds == [("engine", "down"), ("engine", "up")]
            # Nothing of steady's changed: it said active all along (no active → scaling → active).
            said = [e["Status"] for e in events if e["Type"] == "service" and e.get("Name") == "steady" and "Status" in e]
            assert said and set(said) == {"active"}, said
    finally:
        backend.close()
        feed.close()
        proxy.close()
        remove_tenant_objects(docker_client, tenant)



async def test_unconfirmed_health_does_not_turn_an_unchanged_active_service_to_scaling(backend, api, docker_client):
    """After an engine restart a balancer may not have checked its servers yet (or a replica came
    back on a new address and waits behind its gate): the replicas are the ones asked for, nothing
    scales, so an active service stays active while their health is confirmed."""
    await api.post("/services/create", json=web_body("calm", 2))
    await wait_status(api, "calm", "active", 60)
    record = backend.store.get("calm")
    slots = [c.labels["io.hyperservice.slot"] for c in docker_client.containers.list(
        filters={"label": [f"io.hyperservice.uid={record.uid}", "io.hyperservice.role=replica"]})]
    feed = backend.hub.subscribe_async()
    try:
        for slot in slots:
            backend.reconciler.balancers.board(record.uid).assigned(slot)  # health unknown again
        await asyncio.to_thread(backend.reconciler.sync, "calm")
        said = [e["Status"] for e in await drain(feed) if e["Type"] == "service" and "Status" in e]
    finally:
        feed.close()
    assert said == [] and backend.store.get("calm").status == "active"
    assert [r["Health"] for r in (await api.get("/services/calm/containers")).json()] == ["starting", "starting"]
