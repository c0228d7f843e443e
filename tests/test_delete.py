"""DELETE on the real engine: it answers at once, teardowns run in parallel, a replica that ignores
its StopSignal is killed after a short grace, and a repeated DELETE changes nothing."""

from __future__ import annotations

import asyncio
import threading
import time

import docker
import httpx

from backend.docker_driver import LABEL_ROLE, LABEL_UID, STOP_TIMEOUT, TEARDOWN_STOP_TIMEOUT
from tests.conftest import eventually, wait_status, web_body

# The test image's PID 1 is a shell trapping TERM, INT and QUIT only: as PID 1 it ignores SIGUSR1,
# so a replica stopped with that StopSignal keeps running until it is killed.
DEAF = {"StopSignal": "SIGUSR1"}


def objects_of(docker_client: docker.DockerClient, uid: str) -> list:
    label = f"{LABEL_UID}={uid}"
    return docker_client.containers.list(all=True, filters={"label": label}, sparse=True) + docker_client.networks.list(
        filters={"label": label})


async def test_delete_answers_at_once_and_kills_a_replica_deaf_to_its_stop_signal(api: httpx.AsyncClient, backend,
                                                                                   docker_client, monkeypatch):
    await api.post("/services/create", json=web_body("deaf", 2, **DEAF))
    service = await wait_status(api, "deaf", "active", 60)
    uid = backend.store.get("deaf").uid
    since = int(time.time()) - 1
    real_remove, graces = backend.driver.remove, []

    def recording_remove(container, graceful=True, stop_timeout=STOP_TIMEOUT):
        if container.labels.get(LABEL_ROLE) == "replica":
            graces.append(stop_timeout)  # the seconds Docker waits after the StopSignal before it kills
        return real_remove(container, graceful, stop_timeout)

    monkeypatch.setattr(backend.driver, "remove", recording_remove)

    response = await api.delete("/services/deaf")
    assert response.status_code == 202, response.text
    # Answered before the teardown could be done: the replicas get a grace period first.
    current = (await api.get("/services/deaf")).json()
    assert (current["Status"], current["Message"]) == ("deleting", "Deleting")
    # A repeated DELETE is accepted and changes nothing: the first `keep` (false) holds.
    again = await api.delete("/services/deaf", params={"keep": "true"})
    assert again.status_code == 202 and backend.store.get("deaf").keep is False

    await eventually(lambda: objects_of(docker_client, uid) == [] and backend.store.get("deaf") is None, 60,
                     what="every object of deaf to be removed, then the service forgotten")
    assert (await api.get("/services/deaf")).status_code == 404
    # It was killed (exit code 137), having ignored its StopSignal (the first kill event).
    for replica_id in service["Containers"]:
        events = list(docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                           filters={"container": replica_id}))
        kills = [e["Actor"]["Attributes"].get("signal") for e in events if e.get("Action") == "kill"]
        died = [e["Actor"]["Attributes"].get("exitCode") for e in events if e.get("Action") == "die"]
        assert kills[:2] == ["10", "9"] and died == ["137"], (kills, died)
    # ...after the short teardown grace, not the full one a replica replaced in a rollout gets.
    assert graces == [TEARDOWN_STOP_TIMEOUT] * 2 and TEARDOWN_STOP_TIMEOUT < STOP_TIMEOUT, graces

    # Gone already: 204, as often as asked; a name never known stays 404.
    assert (await api.delete("/services/deaf")).status_code == 204
    assert (await api.delete("/services/deaf")).status_code == 204
    assert (await api.delete("/services/never-was")).status_code == 404


async def test_concurrent_deletes_answer_at_once_and_tear_down_in_parallel(api: httpx.AsyncClient, backend,
                                                                           docker_client, monkeypatch):
    names = [f"many-{index}" for index in range(6)]
    for name in names:
        assert (await api.post("/services/create", json=web_body(name, 1, **DEAF))).status_code == 201
    for name in names:
        await wait_status(api, name, "active", 300)
    uids = [backend.store.get(name).uid for name in names]

    real_remove = backend.driver.remove
    lock, in_flight, most = threading.Lock(), [0], [0]

    def counting_remove(container, *args, **kwargs):
        replica = container.labels.get(LABEL_ROLE) == "replica"
        with lock:
            in_flight[0] += replica
            most[0] = max(most[0], in_flight[0])
        try:
            return real_remove(container, *args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= replica

    monkeypatch.setattr(backend.driver, "remove", counting_remove)
    answers = await asyncio.gather(*(api.delete(f"/services/{name}") for name in names))
    assert [a.status_code for a in answers] == [202] * len(names)
    # Every DELETE answered while every teardown was still to finish (each replica has a grace
    # period first), and the API answers meanwhile.
    listed = {s["Name"]: s["Status"] for s in (await api.get("/services")).json()}
    assert listed == {name: "deleting" for name in names}

    await eventually(lambda: all(objects_of(docker_client, uid) == [] for uid in uids), 90,
                     what="every deleted service's objects to be removed")
    await eventually(lambda: backend.store.all() == [], 10, what="the services to be forgotten")
    assert most[0] >= 3, f"at most {most[0]} replicas were being removed at once"
