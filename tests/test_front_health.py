"""Failures found fast, replacements gated, new replicas checked at once: the service front on the real
engine, through real sockets on loopback (the service's 127.x address) and to the test's own replicas.

Timing here is a deadline to poll against (derived from the check settings), never an exact value.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from backend import haproxy
from bench.load import PacedLoad, get
from tests.conftest import eventually, wait_status, web_body

FAST_CHECKS = {"HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 2}
CONNECT_TIMEOUT = float(haproxy.CONNECT_TIMEOUT.removesuffix("s"))
REPORTING_SLACK = 2.0  # HAProxy's log line -> the backend's follower -> the API, on a busy machine


async def create_active(api: httpx.AsyncClient, name: str, replicas: int, timeout: float = 60, **fields) -> dict:
    response = await api.post("/services/create", json=web_body(name, replicas, **{**FAST_CHECKS, **fields}))
    assert response.status_code == 201, response.text
    return await wait_status(api, name, "active", timeout=timeout)


async def replicas_by_name(api: httpx.AsyncClient, name: str) -> dict[str, dict]:
    return {c["Name"]: c for c in (await api.get(f"/services/{name}/containers")).json()}


def out_of_rotation_bound(interval: int, fall: int) -> float:
    """When HAProxy's checks alone have a replica that accepts but never answers DOWN: its next check
    (within `inter`) times out after `timeout check`; each further one of the `fall` comes after
    `fastinter` and, its listen backlog full by then, fails within min(inter, timeout connect)."""
    check_timeout = min(interval, haproxy.CHECK_TIMEOUT_MAX)
    further = (fall - 1) * (haproxy.FAST_CHECK_MS / 1000 + min(interval, CONNECT_TIMEOUT))
    return interval + check_timeout + further


# -- 4. a hung replica: out of rotation fast, at most a second of failed requests ---------------------


async def test_a_paused_replica_leaves_rotation_fast_and_costs_at_most_a_second_of_requests(api, docker_client):
    service = await create_active(api, "hung", 3, Protocol="http")
    replicas = await replicas_by_name(api, "hung")
    victim = sorted(replicas)[0]
    container = docker_client.containers.get(replicas[victim]["Id"])
    bound = out_of_rotation_bound(FAST_CHECKS["HealthCheckInterval"], FAST_CHECKS["HealthCheckFall"])
    statuses: list[tuple[str, str]] = []

    async def victim_down() -> bool:
        statuses.append(((body := (await api.get("/services/hung")).json())["Status"], body["Message"]))
        return (await replicas_by_name(api, "hung"))[victim]["Health"] == "DOWN"

    rate = 20.0
    with PacedLoad(service["IP"], 80, rate=rate, timeout=3.0, max_seconds=60) as load:
        # steady load over all three first (two seconds' worth of answers)
        await eventually(lambda: len(load.answered_by()) == 3 and load.ok >= 2 * rate, 60,
                         what="the load answered by all three replicas")
        assert not load.failed, load.failed[:3]
        await asyncio.to_thread(container.pause)
        paused_at = time.monotonic()
        try:
            await eventually(victim_down, timeout=bound + REPORTING_SLACK, interval=0.05,
                             what=f"the paused {victim} DOWN within {bound:.2f} s + reporting")
            took = time.monotonic() - paused_at
            print(f"\npaused replica DOWN after {took:.2f} s (bound {bound:.2f} s + {REPORTING_SLACK} s reporting)")
            # The requests it had swallowed end at the client's timeout: keep counting until they have.
            swallowed = load.in_flight()
            await eventually(lambda: not any(request.is_alive() for request in swallowed), load.timeout + 30,
                             what="the requests sent before it went DOWN to end")
            body = (await api.get("/services/hung")).json()
        finally:
            await asyncio.to_thread(container.unpause)
    failed = load.failed
    print(f"{len(load.results)} requests at {rate:g}/s, {len(failed)} failed")
    assert len(failed) <= rate, [f.error for f in failed][:5]  # at most one second's worth
    assert load.ok > 100
    # What the status says: a paused replica, not a scale that nobody asked for.
    assert body["Status"] == "degraded" and victim in body["Message"], body
    assert all(status != "scaling" for status, _ in statuses), statuses
    # Unpaused, it comes back through its checks (not replaced: it was DOWN for less than a minute).
    await wait_status(api, "hung", "active", timeout=30)
    assert victim in await replicas_by_name(api, "hung")


# -- 4. a replacement takes no traffic until it answers ------------------------------------------

# Every replica of this service starts answering only 6 s after it starts (sh ignores SIGTERM, hence
# SIGKILL to stop it).
SLOW_START = {"Cmd": ["sh", "-c", "sleep 6; exec /bin/serve"], "StopSignal": "SIGKILL"}


class FirstAnswer:
    """Polls one replica's own address (a container of this test) until it first answers."""

    def __init__(self, address: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if get(self.host, self.port, timeout=0.5)[0] == 200:
                    self.at = time.monotonic()
                    return
            except OSError:
                pass
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def test_a_replacement_that_starts_slowly_takes_no_traffic_until_it_answers(api, backend, docker_client):
    service = await create_active(api, "phoenix", 2, timeout=90, Protocol="http", **SLOW_START)
    before = await replicas_by_name(api, "phoenix")
    victim = sorted(before)[0]
    observed: list[tuple[float, str, str, str]] = []  # (when, replacement's health, service status, message)
    probe: FirstAnswer | None = None
    events = backend.hub.subscribe_async()
    with PacedLoad(service["IP"], 80, rate=10, timeout=5.0, max_seconds=80) as load:
        await eventually(lambda: len(load.answered_by()) == 2, 60, what="the load answered by both replicas")
        await asyncio.to_thread(docker_client.containers.get(before[victim]["Id"]).kill)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                replicas = await replicas_by_name(api, "phoenix")
                body = (await api.get("/services/phoenix")).json()
                new = [r for name, r in replicas.items() if name not in before]
                if new:
                    if probe is None and new[0]["Address"]:
                        probe = FirstAnswer(new[0]["Address"])
                    observed.append((time.monotonic(), new[0]["Health"], body["Status"], body["Message"]))
                    answered = probe is not None and probe.at is not None
                    if answered and new[0]["Health"] == "UP" and body["Status"] == "active":
                        break
                await asyncio.sleep(0.1)
        finally:
            if probe is not None:
                probe.stop()
        if new and probe is not None and probe.at is not None:  # UP and active: it takes its share of the load
            await eventually(lambda: new[0]["Name"] in load.answered_by(), 30, what="the replacement to take traffic")
    assert probe is not None and probe.at is not None, observed[-3:]
    before_answer = [o for o in observed if o[0] < probe.at]
    after_answer = [o for o in observed if o[0] >= probe.at]
    assert len(before_answer) > 10, observed  # it was visible for seconds before it answered
    # Not UP (nor DOWN) while it could not answer, and the service not active meanwhile...
    assert {health for _, health, _, _ in before_answer} <= {"starting", ""}, before_answer
    assert "starting" in {health for _, health, _, _ in before_answer}
    assert all(status != "active" for _, _, status, _ in before_answer), before_answer
    # ...saying what happens (a heal, not a scale)...
    assert all(status == "degraded" and victim in message and "replacing" in message
               for _, _, status, message in before_answer), before_answer
    # ...and UP, active, once it answers its checks.
    assert after_answer and after_answer[-1][1:3] == ("UP", "active"), after_answer
    # It took no traffic before it answered: nothing failed, though a replica was killed under load.
    assert not load.failed, [f.error for f in load.failed][:5]
    heals = []
    while (event := await events.get(timeout=0.1)) is not None:
        if event["Type"] == "service" and event["Action"] == "heal":
            heals.append(event)
    events.close()
    assert [(e["Name"], e["Replica"]) for e in heals] == [("phoenix", victim)], heals
    assert heals[0]["Reason"].startswith("exited") and heals[0]["Replaced"] is True


# -- 3. a new replica is checked at once, not after a whole interval --------------------------------


async def test_new_replicas_enter_rotation_without_waiting_a_check_interval(api):
    """With a 30 s check interval, a replica waiting for its first regular check could wait 30 s;
    new replicas (of a new service, of a scale-up) are checked at once (backend/first_checks.py)."""
    slow_checks = {"HealthCheckInterval": 30, "HealthCheckFall": 3, "HealthCheckRise": 2}
    response = await api.post("/services/create", json=web_body("prompt", 2, Protocol="http", **slow_checks))
    assert response.status_code == 201, response.text
    service = await wait_status(api, "prompt", "active", timeout=15)  # half an interval
    assert (await asyncio.to_thread(get, service["IP"], 80))[0] == 200
    assert (await api.post("/services/prompt/update", json={"Replicas": 4})).status_code == 200

    async def four_up() -> bool:
        replicas = await replicas_by_name(api, "prompt")
        return len(replicas) == 4 and all(r["Health"] == "UP" for r in replicas.values())

    await eventually(four_up, timeout=15, what="the two new replicas UP within half an interval")
