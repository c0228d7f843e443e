"""A backend stopped and started again finds every service and its containers: no duplicates, no orphans."""

from __future__ import annotations

import shutil
import sqlite3

import docker

from backend.core import Backend
from backend.docker_driver import LABEL_ROLE, LABEL_SERVICE, LABEL_TENANT, LABEL_UID
from backend.store import ServiceRecord
from tests.conftest import (
    backend_to_restart,
    client_for,
    eventually,
    make_settings,
    remove_tenant_objects,
    wait_status,
    web_body,
)


def running(docker_client: docker.DockerClient, tenant: str, name: str) -> set[str]:
    labels = [f"{LABEL_TENANT}={tenant}", f"{LABEL_SERVICE}={name}", f"{LABEL_ROLE}=replica"]
    return {c.id for c in docker_client.containers.list(filters={"label": labels})}


async def test_restart_keeps_everything_and_heals_what_changed_while_down(tmp_path, docker_client):
    settings = make_settings(tmp_path / "data")
    with backend_to_restart(settings, docker_client) as first:
        tenant = first.tenant
        async with client_for(first) as api:
            await api.post("/services/create", json=web_body("alpha", 2))
            await api.post("/services/create", json=web_body("beta", 1, Labels={"tier": "db"}))
            alpha = await wait_status(api, "alpha", "active")
            beta = await wait_status(api, "beta", "active")
        first.close()

        # While no backend runs: one replica dies, and an orphan of ours (a service the store never had) appears.
        docker_client.containers.get(alpha["Containers"][0]).remove(force=True)
        orphan = docker_client.containers.create(
            "hyperservice-test/web:1", name=f"orphan-{tenant[:6]}",
            labels={LABEL_TENANT: tenant, LABEL_SERVICE: "ghost", LABEL_UID: "f" * 32, LABEL_ROLE: "replica"},
        )

        second = Backend(settings)
        assert second.tenant == tenant  # the same installation
        clock = [0.0]
        second.reconciler.clock = lambda: clock[0]  # the orphan grace period passes when the test says so
        second.start()
        try:
            async with client_for(second) as api:
                listed = {s["Name"]: s for s in (await api.get("/services")).json()}
                assert set(listed) == {"alpha", "beta"}
                assert listed["beta"]["Created"] == beta["Created"] and listed["beta"]["IP"] == beta["IP"]
                assert listed["beta"]["Labels"] == {"tier": "db"}

                # beta was untouched: the same container, not a duplicate.
                await eventually(lambda: running(docker_client, tenant, "beta") == set(beta["Containers"]),
                                 timeout=10, what="beta to keep its one container")
                # alpha lost a replica while we were down: exactly one new one, the survivor kept.
                await eventually(lambda: len(running(docker_client, tenant, "alpha")) == 2, timeout=20)
                now = running(docker_client, tenant, "alpha")
                assert alpha["Containers"][1] in now and alpha["Containers"][0] not in now
                await wait_status(api, "alpha", "active")

                second.reconciler.collect_orphans()  # the periodic resync does this too
                assert docker_client.containers.get(orphan.id)  # reported first, not removed
                clock[0] += settings.orphan_grace_seconds
                second.reconciler.collect_orphans()  # still unknown after the grace period: removed
                try:
                    docker_client.containers.get(orphan.id)
                    raise AssertionError("the orphan was not collected")
                except docker.errors.NotFound:
                    pass
                # Another sync changes nothing: idempotent.
                before = running(docker_client, tenant, "alpha") | running(docker_client, tenant, "beta")
                second.reconciler.sync("alpha")
                second.reconciler.sync("beta")
                assert running(docker_client, tenant, "alpha") | running(docker_client, tenant, "beta") == before
        finally:
            second.close()


async def test_two_backends_on_one_engine_never_touch_each_other(tmp_path, docker_client):
    one = Backend(make_settings(tmp_path / "one"))
    two = Backend(make_settings(tmp_path / "two"))
    one.start()
    two.start()
    try:
        assert one.tenant != two.tenant
        async with client_for(one) as api_one, client_for(two) as api_two:
            await api_one.post("/services/create", json=web_body("same", 1))
            await api_two.post("/services/create", json=web_body("same", 1))
            a = await wait_status(api_one, "same", "active")
            b = await wait_status(api_two, "same", "active")
            one.reconciler.collect_orphans()
            two.reconciler.collect_orphans()
            assert running(docker_client, one.tenant, "same") == set(a["Containers"])
            assert running(docker_client, two.tenant, "same") == set(b["Containers"])
    finally:
        for instance in (one, two):
            instance.close()
            remove_tenant_objects(docker_client, instance.tenant)


async def test_a_restored_older_state_file_reports_unknown_services_and_removes_them_only_after_the_grace(
    tmp_path, docker_client
):
    """The state file is restored from a backup older than service `newer`: its containers are not
    provably orphans. They are reported, kept through the grace period, removed only if still unknown;
    a uid that becomes known in the meantime (here: released) is never removed."""
    settings = make_settings(tmp_path / "data", orphan_grace_seconds=600)
    backup = tmp_path / "backup.db"
    with backend_to_restart(settings, docker_client) as first:
        tenant = first.tenant
        async with client_for(first) as api:
            await api.post("/services/create", json=web_body("older", 1))
            await wait_status(api, "older", "active")
            with sqlite3.connect(backup) as copy:
                first.store._db.backup(copy)  # what an operator's backup would hold
            await api.post("/services/create", json=web_body("newer", 1))
            newer = await wait_status(api, "newer", "active")
        first.close()
        state = settings.state_file
        for leftover in (state.with_name(state.name + "-wal"), state.with_name(state.name + "-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(backup, state)  # restored

        stray = docker_client.containers.create(
            "hyperservice-test/web:1", name=f"stray-{tenant[:6]}",
            labels={LABEL_TENANT: tenant, LABEL_SERVICE: "stray", LABEL_UID: "e" * 32, LABEL_ROLE: "replica"},
        )
        second = Backend(settings)  # not started: only the collector acts, when the test calls it
        now = [1000.0]
        second.reconciler.clock = lambda: now[0]
        try:
            events = second.hub.subscribe_async()
            try:
                second.reconciler.collect_orphans()  # publishes from this thread: delivered by the loop
                found = [await events.get(timeout=5), await events.get(timeout=5)]
            finally:
                events.close()
            newer_uid = docker_client.containers.get(newer["Containers"][0]).labels[LABEL_UID]
            assert {(e["Type"], e["Action"], e["Name"], e["Uid"]) for e in found} == {
                ("orphan", "found", "newer", newer_uid), ("orphan", "found", "stray", "e" * 32),
            }
            assert running(docker_client, tenant, "newer") == set(newer["Containers"])  # reported, kept

            # The stray's uid becomes known (released: the operator kept it on purpose).
            second.store.forget(ServiceRecord(
                name="stray", uid="e" * 32, spec=None, revision=1, generation=1, ip="", fip="", status="",
                message="", created="", containers=None, deleting=False, keep=True,
            ))
            now[0] += 599
            second.reconciler.collect_orphans()
            assert running(docker_client, tenant, "newer") == set(newer["Containers"])  # within the grace
            now[0] += 1
            second.reconciler.collect_orphans()
            assert running(docker_client, tenant, "newer") == set()  # still unknown after it: removed
            assert docker_client.networks.list(filters={"label": f"{LABEL_UID}={newer_uid}"}) == []
            assert docker_client.containers.get(stray.id)  # known by then: left alone
            assert second.store.names() == ["older"]
        finally:
            second.close()
