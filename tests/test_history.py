"""A service's history (`GET /services/{name}/events`): kept in the store (bounded, across restarts),
fed by Docker's events, the reconciler and the operator's actions, and summed up by cause.

Unit tests first (the store's bound, the grouping, how Docker's container events become entries), then
the real engine: a replica of ContainerSize s1 (64 MB) that allocates 100 MB is OOM-killed, the
history names it and the summary groups it, and all of it is still there after a backend restart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from backend.core import Backend
from backend.docker_driver import LABEL_ROLE, LABEL_UID, ROLE_REPLICA
from backend.events import EventHub
from backend.history import History, summarise
from backend.models import ServiceEvent, ServiceSpec
from backend.store import EVENTS_KEPT, Store
from tests.conftest import (
    backend_to_restart,
    client_for,
    eventually,
    make_settings,
    wait_status,
    web_body,
)

POOL = "127.9.0.0/24"
# Holds 100 MB in the shell's own memory (PID 1): with 64 MB and no swap, the kernel OOM-kills it.
HOG = ["sh", "-c", "x=$(head -c 104857600 /dev/zero | tr '\\0' a); sleep 600"]


def spec(name: str) -> ServiceSpec:
    return ServiceSpec(Name=name, Image="web:0", Replicas=1, ServicePort=80)


# -- the store: bounded per service, dropped with the service, kept across reopening --------------


def test_history_keeps_the_last_entries_of_each_service_and_drops_them_with_it(tmp_path: Path):
    store = Store(tmp_path / "state.db", POOL)
    try:
        busy, quiet = store.insert(spec("busy"), "created", ""), store.insert(spec("quiet"), "created", "")
        for index in range(EVENTS_KEPT + 25):
            assert store.add_event(name="busy", type="status", action="scaling", message=f"entry {index}")
        store.add_event(uid=quiet.uid, type="action", action="create", message="quiet one", by="local")
        kept = store.events("busy")
        assert kept is not None and len(kept) == EVENTS_KEPT  # the oldest 25 pruned
        assert [e.Message for e in kept[:2]] == ["entry 25", "entry 26"] and kept[-1].Message == f"entry {EVENTS_KEPT + 24}"
        assert [e.Id for e in kept] == sorted(e.Id for e in kept)  # oldest first
        assert [e.Message for e in store.events("busy", limit=2) or []] == [f"entry {EVENTS_KEPT + 23}", f"entry {EVENTS_KEPT + 24}"]
        quiet_events = store.events("quiet")
        assert quiet_events is not None and [(e.Message, e.By) for e in quiet_events] == [("quiet one", "local")]

        # An entry for an instance the store does not know (deleted, foreign) is dropped.
        assert store.add_event(uid="f" * 32, type="replica", action="die", replica="ghost-abcde") is None
        assert store.events("ghost") is None

        store.forget(busy)
        assert store.events("busy") is None
        count = store._db.execute("SELECT COUNT(*) FROM events WHERE uid = ?", (busy.uid,)).fetchone()[0]
        assert count == 0  # gone with the service, not left behind
    finally:
        store.close()
    reopened = Store(tmp_path / "state.db", POOL)
    try:
        assert [e.Message for e in reopened.events("quiet") or []] == ["quiet one"]
    finally:
        reopened.close()


# -- the summary ------------------------------------------------------------------------------------

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC).timestamp()


def entry(ago: float, kind: str, action: str, replica: str = "", **extra: Any) -> ServiceEvent:
    when = datetime.fromtimestamp(NOW - ago, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return ServiceEvent(Id=int(1000 - ago), Time=when, Type=kind, Action=action, Replica=replica, **extra)


def test_summary_groups_recent_trouble_by_cause_most_telling_first():
    events = [
        entry(900, "replica", "die", "web-a", ExitCode=137, OOMKilled=True),  # outside the window
        entry(250, "replica", "die", "web-b", ExitCode=1),
        entry(240, "replica", "die", "web-a", ExitCode=137, OOMKilled=True),
        entry(239, "replica", "restart", "web-a"),
        entry(200, "health", "DOWN", "web-a"),
        entry(180, "replica", "die", "web-a", ExitCode=137, OOMKilled=True),
        entry(150, "replica", "die", "web-c", ExitCode=1),
        entry(140, "replica", "die", "web-b", ExitCode=1),
        entry(120, "replica", "die", "web-a", ExitCode=137, OOMKilled=True),
        entry(100, "replica", "replace", "web-c", ExitCode=0),
        entry(90, "health", "UP", "web-a"),
        entry(80, "status", "error", Message="replica web-a keeps exiting"),
        entry(70, "action", "scale", By="local"),
        entry(60, "replica", "remove", "web-d"),  # scaled down: no trouble
    ]
    groups = summarise(events, NOW, 300)
    assert [(g.Cause, g.Count, g.Replicas, g.Text) for g in groups] == [
        ("OOM-killed", 3, ["web-a"], "1 replica OOM-killed 3 times in the last 5 min"),
        ("exited (code 1)", 3, ["web-b", "web-c"], "2 replicas exited (code 1) 3 times in the last 5 min"),
        ("replaced", 1, ["web-c"], "1 replica replaced once in the last 5 min"),
        ("went DOWN", 1, ["web-a"], "1 replica went DOWN once in the last 5 min"),
    ]
    assert groups[0].First == events[2].Time and groups[0].Last == events[8].Time
    assert summarise(events, NOW, 60) == []  # nothing went wrong in the last minute
    assert summarise(events, NOW, 3600)[0].Text == "1 replica OOM-killed 4 times in the last 1 h"


# -- Docker's container events become replica entries ---------------------------------------------


class Recorded(EventHub):
    """The change feed, remembering what was published."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[dict[str, Any]] = []

    def publish(self, kind: str, action: str, **fields: Any) -> None:
        self.published.append({"Type": kind, "Action": action, **fields})


class Inspector:
    """The driver's one call the history makes: State.OOMKilled of a container."""

    def __init__(self, oom_killed: set[str]) -> None:
        self.oom = oom_killed
        self.asked: list[str] = []

    def oom_killed(self, container_id: str) -> bool:
        self.asked.append(container_id)
        return container_id in self.oom


def docker_event(action: str, container_id: str, uid: str, role: str = ROLE_REPLICA, **attributes: str) -> dict[str, Any]:
    labels = {LABEL_UID: uid, LABEL_ROLE: role, "name": f"svc-{container_id[:5]}", **attributes}
    return {"Type": "container", "Action": action, "Actor": {"ID": container_id, "Attributes": labels}}


def test_docker_events_become_starts_exits_oom_kills_and_restarts(tmp_path: Path):
    store = Store(tmp_path / "state.db", POOL)
    hub = Recorded()
    inspector = Inspector({"late0" * 4})
    history = History(store, hub, inspector)  # type: ignore[arg-type]
    try:
        uid = store.insert(spec("svc"), "created", "").uid
        feed = [
            docker_event("create", "oomed" * 4, uid),  # not an entry: its start says it
            docker_event("start", "oomed" * 4, uid),
            docker_event("oom", "oomed" * 4, uid),
            docker_event("die", "oomed" * 4, uid, exitCode="137"),
            docker_event("start", "oomed" * 4, uid),  # the engine's restart policy
            docker_event("die", "late0" * 4, uid, exitCode="137"),  # OOM kill whose `oom` never came
            docker_event("die", "crash" * 4, uid, exitCode="3"),
            docker_event("die", "gone0" * 4, uid, exitCode="143"),  # being removed by the reconciler
            docker_event("die", "lbxxx" * 4, uid, role="balancer", exitCode="1"),  # not a replica
            docker_event("die", "other" * 4, "e" * 32, exitCode="1"),  # not a service of ours
        ]
        history.expect_removal(["gone0" * 4])
        for event in feed:
            history.on_docker_event(event)
        entries = [(e.Action, e.Replica, e.ExitCode, e.OOMKilled, e.Message) for e in store.events("svc") or []]
        assert entries == [
            ("start", "svc-oomed", None, False, "svc-oomed started"),
            ("die", "svc-oomed", 137, True, "svc-oomed was OOM-killed (exit code 137)"),
            ("restart", "svc-oomed", None, False, "svc-oomed restarted by the engine"),
            ("die", "svc-late0", 137, True, "svc-late0 was OOM-killed (exit code 137)"),
            ("die", "svc-crash", 3, False, "svc-crash exited with code 3"),
        ]
        assert inspector.asked == ["late0" * 4]  # asked the engine only for a 137 without an `oom`
        told = [e for e in hub.published if e["Type"] == "history"]
        assert [(e["Action"], e["Service"], e["Event"]["Action"]) for e in told] == [
            ("replica", "svc", action) for action in ("start", "die", "restart", "die", "die")
        ]
    finally:
        store.close()


# -- the real engine --------------------------------------------------------------------------------


async def test_history_names_an_oom_kill_groups_it_and_survives_a_restart(tmp_path, docker_client: docker.DockerClient):
    settings = make_settings(tmp_path / "data")
    with backend_to_restart(settings, docker_client) as first:
        async with client_for(first) as api:
            created = await api.post("/services/create", json=web_body("hog", 1, ContainerSize="s1", Cmd=HOG))
            assert created.status_code == 201

            async def oom_killed():
                body = (await api.get("/services/hog/events")).json()
                return body if any(e["OOMKilled"] for e in body["Events"]) else None

            history = await eventually(oom_killed, 60, what="an OOM kill in hog's history")
            replicas = {c["Name"] for c in (await api.get("/services/hog/containers")).json()}
            kill = next(e for e in history["Events"] if e["OOMKilled"])
            assert kill["Type"] == "replica" and kill["Action"] == "die" and kill["ExitCode"] == 137
            assert kill["Replica"] in replicas and kill["Message"] == f"{kill['Replica']} was OOM-killed (exit code 137)"
            # the engine really killed it for memory: not a story the backend made up
            container = docker_client.containers.get(kill["Replica"])
            assert container.attrs["HostConfig"]["Memory"] == 64 * 2**20

            top = history["Summary"][0]
            assert top["Cause"] == "OOM-killed" and top["Replicas"] == [kill["Replica"]]
            kills = [e for e in history["Events"] if e["OOMKilled"]]
            assert top["Count"] == len(kills)  # every kill of the last 5 min, all counted
            times = "once" if len(kills) == 1 else f"{len(kills)} times"
            assert history["Window"] == 300 and top["Text"] == f"1 replica OOM-killed {times} in the last 5 min"

            actions = [(e["Action"], e["By"], e["Message"]) for e in history["Events"] if e["Type"] == "action"]
            assert actions[0] == ("create", "local", "created: hyperservice-test/web:1, 1 replica, size s1")
            assert any(e["Type"] == "replica" and e["Action"] == "start" for e in history["Events"])

            # ... and the service's own status says why it fails
            async def says_oom():
                body = (await api.get("/services/hog")).json()
                return body if body["Status"] == "error" and "OOM-killed" in body["Message"] else None

            crashing = await eventually(says_oom, 60, what="hog's error to name the OOM kill")
            assert f"replica {kill['Replica']} keeps exiting (exit code 137, OOM-killed" in crashing["Message"]
            assert "more than its 64 MiB of memory; choose a larger ContainerSize" in crashing["Message"]

            assert (await api.post("/services/hog/update", json={"Replicas": 2})).status_code == 200
            after_scale = (await api.get("/services/hog/events", params={"limit": 500})).json()
            scale = [e for e in after_scale["Events"] if e["Type"] == "action" and e["Action"] == "scale"]
            assert [(e["Message"], e["By"]) for e in scale] == [("scale from 1 to 2 replicas", "local")]
            limited = (await api.get("/services/hog/events", params={"limit": 1})).json()
            assert len(limited["Events"]) == 1 and limited["Events"][0]["Id"] == after_scale["Events"][-1]["Id"]
            assert (await api.get("/services/nope/events")).status_code == 404
            bad = await api.get("/services/hog/events", params={"limit": 0})
            assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "limit"
        first.close()

        second = Backend(settings)  # the same data dir: the same store
        second.start()
        try:
            async with client_for(second) as api:
                again = (await api.get("/services/hog/events", params={"limit": 500})).json()
                kept = {e["Id"]: e for e in again["Events"]}
                assert kept[kill["Id"]] == kill  # the OOM kill, as it was recorded before the restart
                assert kept[scale[0]["Id"]] == scale[0]
        finally:
            second.close()


async def test_scaling_down_is_a_removal_not_trouble_and_health_is_recorded(backend: Backend, api):
    assert (await api.post("/services/create", json=web_body("calm", 2))).status_code == 201
    await wait_status(api, "calm", "active", 60)
    names = {c["Name"] for c in (await api.get("/services/calm/containers")).json()}

    async def both_up():
        events = (await api.get("/services/calm/events")).json()["Events"]
        return {e["Replica"] for e in events if e["Type"] == "health" and e["Action"] == "UP"} == names

    await eventually(both_up, 30, what="both replicas UP in the history")
    feed = backend.hub.subscribe_async()
    try:
        assert (await api.post("/services/calm/update", json={"Replicas": 1})).status_code == 200
        await wait_status(api, "calm", "active", 60)
        left = {c["Name"] for c in (await api.get("/services/calm/containers")).json()}
        (gone,) = names - left
        # Docker's events are handled in order: once the removed replica's `destroy` is on the feed,
        # its `die` went through the history already.
        deadline = time.monotonic() + 30
        while (event := await feed.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if event["Type"] == "container" and event["Action"] == "destroy" and event.get("Name") == gone:
                break
        assert event is not None, f"no destroy of {gone} on the feed"
    finally:
        feed.close()
    body = (await api.get("/services/calm/events")).json()
    about_gone = [(e["Type"], e["Action"], e["Message"]) for e in body["Events"] if e["Replica"] == gone]
    assert ("replica", "remove", f"removed {gone} (scaled down to 1)") in about_gone
    assert not [e for e in about_gone if e[1] == "die"]  # an expected stop is no exit to explain
    assert body["Summary"] == []
    statuses = [e["Action"] for e in body["Events"] if e["Type"] == "status"]
    assert statuses[-1] == "active" and "scaling" in statuses


async def test_a_replica_stopped_by_hand_shows_its_exit_and_its_replacement(backend: Backend, api, docker_client):
    assert (await api.post("/services/create", json=web_body("heal", 1))).status_code == 201
    body = await wait_status(api, "heal", "active", 60)
    victim = docker_client.containers.get(body["Containers"][0])
    victim.stop(timeout=1)  # the restart policy leaves it down: the reconciler replaces it
    victim.reload()
    code = victim.attrs["State"]["ExitCode"]

    async def replaced():
        events = (await api.get("/services/heal/events")).json()
        return events if any(e["Action"] == "replace" for e in events["Events"]) else None

    history = await eventually(replaced, 30, what="the replacement in the history")
    about = [(e["Action"], e["ExitCode"], e["OOMKilled"], e["Message"]) for e in history["Events"] if e["Replica"] == victim.name]
    assert ("die", code, False, f"{victim.name} exited with code {code}") in about
    assert ("replace", code, False, f"replaced {victim.name} (exited {code})") in about
    causes = {g["Cause"]: g for g in history["Summary"]}
    assert causes[f"exited (code {code})"]["Replicas"] == [victim.name] and causes["replaced"]["Count"] == 1
