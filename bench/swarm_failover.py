"""Benchmark: a node crash on the lab swarm, hyperservice's swarm engine beside plain swarm.

Per repetition, on the lab (scripts/swarm-lab; node3 is an edge worker, node2 keeps the front up):
- plain swarm: `docker service create` of the web image, 6 replicas (dnsrr, as the lab needs); node3
  killed (every process); timed until 6 tasks run on the other nodes (swarm's own rescheduling); once
  with swarm's default restart policy (5 s delay), once with the 1 s delay the swarm engine sets;
- hyperservice: a backend with HYPERSERVICE_ENGINE=swarm on the lab's manager, a 6-replica http service,
  `--rate` requests/s through its front on node2; node3 killed; timed until the API shows 6 running
  replicas on the other nodes with the service `active`, and until 6 distinct replicas, none of the
  dead node's, answer through the front; the failed requests counted (and as seconds of traffic).
node3 is started again after each; medians over `--repeat`.

    python -m bench.swarm_failover              # 3 repetitions
    python -m bench.swarm_failover --repeat 1

Needs root, the offline test images (tests/images/build.sh) and the lab to itself: another `up` while
a node is killed rebuilds the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from docker.types import EndpointSpec, RestartPolicy, ServiceMode

from backend.core import Backend
from backend.models import ServiceSpec
from backend.settings import Settings
from bench.lab import Lab, parse_env, swarm_lab
from bench.load import PacedLoad
from bench.polling import wait_until as poll_until

LB_IMAGE = "hyperservice-test/haproxy:2.6"  # built offline by tests/images/build.sh

REPLICAS = 6
IMAGE = "hyperservice-test/web:1"
VICTIM = "node3"
FRONT = "node2"
RESTART_DELAY = 1.0  # seconds: what the swarm engine sets (swarm's default is 5 s)


def victim_containers(lab: Lab) -> set[str]:
    """The 12-character ids (the web image answers with its hostname: that id) on the victim."""
    return {c.id[:12] for c in lab.engine(VICTIM).containers.list()}


def plain_swarm(lab: Lab, restart_delay: float | None = None) -> float:
    """Swarm's own rescheduling: with its default restart policy, or `restart_delay` s (hyperservice's)."""
    manager = lab.manager
    policy = None if restart_delay is None else RestartPolicy(condition="any", delay=int(restart_delay * 1e9))
    ids = {node.attrs["Description"]["Hostname"]: node.id for node in manager.nodes.list()}
    service = manager.services.create(
        IMAGE, name=f"bench-fo-{uuid.uuid4().hex[:6]}", mode=ServiceMode("replicated", replicas=REPLICAS),
        endpoint_spec=EndpointSpec(mode="dnsrr"), restart_policy=policy,
    )
    try:
        def running() -> list[dict[str, Any]]:
            tasks = service.tasks(filters={"desired-state": "running"})
            return [t for t in tasks if t["Status"]["State"] == "running"]

        tasks = poll_until(lambda: len(t := running()) == REPLICAS and t, 120, "6 tasks running")
        assert any(t["NodeID"] == ids[VICTIM] for t in tasks), "no task on the victim"
        swarm_lab("kill", VICTIM)
        started = time.monotonic()
        poll_until(lambda: len(t := running()) == REPLICAS and all(x["NodeID"] != ids[VICTIM] for x in t), 120,
                   "6 tasks running elsewhere", interval=0.1)
        return time.monotonic() - started
    finally:
        swarm_lab("start", VICTIM)
        with contextlib.suppress(Exception):
            service.remove()


def hyperservice(lab: Lab, rate: float) -> dict[str, float]:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()) / "data", engine="swarm", lb_image=LB_IMAGE, resync_seconds=2.0,
                        address_pool=f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
    backend = Backend(settings, lab.manager)
    backend.start()
    port = random.randint(20000, 29999)
    name = f"fo{uuid.uuid4().hex[:6]}"
    try:
        backend.create(ServiceSpec.model_validate({
            "Name": name, "Image": IMAGE, "Replicas": REPLICAS, "ServicePort": port, "ContainerPort": 80,
            "Protocol": "http", "HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 1,
        }))

        def settled() -> bool:
            replicas = backend.containers(name)
            return (backend.get(name).Status == "active" and len(replicas) == REPLICAS
                    and all(r.State == "running" and r.Node != VICTIM for r in replicas))

        poll_until(lambda: backend.get(name).Status == "active", 120, "active")
        poll_until(lambda: any(r.Node == VICTIM for r in backend.containers(name)), 5, "a replica on the victim")
        dead = victim_containers(lab)
        with PacedLoad(lab.address(FRONT), port, rate=rate, timeout=3.0, max_seconds=120) as load:
            poll_until(lambda: load.ok >= 2 * rate, 30, "the front answering")
            swarm_lab("kill", VICTIM)
            started = time.monotonic()
            poll_until(settled, 120, "6 replicas active elsewhere", interval=0.1)
            api_seconds = time.monotonic() - started

            def all_serve() -> bool:
                recent = [r for r in load.results[-int(3 * rate):] if r.ok and r.sent > started]
                names = {r.replica for r in recent}
                return len(names) == REPLICAS and not names & dead

            poll_until(all_serve, 60, "6 live replicas answering through the front", interval=0.1)
            serve_seconds = time.monotonic() - started
            time.sleep(2)
        failed = [r for r in load.results if not r.ok]
        return {"api": api_seconds, "serve": serve_seconds, "failed": float(len(failed)),
                "failed_seconds": len(failed) / rate, "sent": float(len(load.results))}
    finally:
        swarm_lab("start", VICTIM)
        backend.delete(name)
        with contextlib.suppress(Exception):
            poll_until(lambda: not backend.list_services(), 60, "deleted")
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    lab = Lab(parse_env(swarm_lab("up")))
    rows: list[dict[str, float]] = []
    for index in range(args.repeat):
        swarm_lab("up")
        swarm = plain_swarm(lab)
        swarm_lab("up")
        swarm_fast = plain_swarm(lab, restart_delay=RESTART_DELAY)
        swarm_lab("up")
        ours = hyperservice(lab, args.rate)
        rows.append({"swarm": swarm, "swarm_1s": swarm_fast, **ours})
        print(f"round {index + 1}: plain swarm {swarm:.1f} s (restart delay 1 s: {swarm_fast:.1f} s); hyperservice API {ours['api']:.1f} s, all serve "
              f"{ours['serve']:.1f} s, failed {ours['failed']:.0f} of {ours['sent']:.0f} "
              f"({ours['failed_seconds']:.2f} s of traffic)", flush=True)
    print("medians:", {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]})


if __name__ == "__main__":
    main()
