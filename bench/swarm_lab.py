"""Benchmark: how fast the multi-node test bed (scripts/swarm-lab) comes up and fails over.

Per repetition: `down`, then `up` from nothing (fresh), `up` again (the idempotent check); a 6-replica
dnsrr service of the web image, published in host mode; `kill` of the worker with most tasks, timing
until the manager has it Down and until 6 tasks run on the other nodes; `start` until it is Ready again.
Medians over `--repeat` repetitions; the lab is taken down at the end unless `--keep`.

    python -m bench.swarm_lab             # 3 repetitions (~2 minutes)
    python -m bench.swarm_lab --repeat 1

Needs root and the offline test images on the main engine (tests/images/build.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from docker.types import EndpointSpec, ServiceMode

from bench.lab import Lab, parse_env, swarm_lab
from bench.polling import wait_until as poll_until

REPLICAS = 6
IMAGE = "hyperservice-test/web:1"


def timed(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = swarm_lab(*args)
    return time.monotonic() - started, out


def one_round() -> dict[str, float]:
    figures: dict[str, float] = {}
    swarm_lab("down")
    figures["up (fresh)"], out = timed("up")
    lab = Lab(parse_env(out))
    figures["up (already up)"], _ = timed("up")
    manager = lab.manager
    service = manager.services.create(
        IMAGE,
        name=f"bench-lab-{uuid.uuid4().hex[:6]}",
        mode=ServiceMode("replicated", replicas=REPLICAS),
        endpoint_spec=EndpointSpec(mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}]),
    )

    def running() -> list[dict]:
        return [t for t in service.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]

    tasks = poll_until(lambda: len(r := running()) == REPLICAS and r, 120, "all tasks running")
    names = {node.id: node.attrs["Description"]["Hostname"] for node in manager.nodes.list()}
    victim = max(lab.nodes[1:], key=lambda name: sum(names[t["NodeID"]] == name for t in tasks))
    victim_id = next(node_id for node_id, name in names.items() if name == victim)

    killed = time.monotonic()
    swarm_lab("kill", victim)
    figures["kill (every process)"] = time.monotonic() - killed
    poll_until(lambda: manager.nodes.get(victim_id).attrs["Status"]["State"] == "down", 120, "node down", 0.1)
    figures["kill -> node Down"] = time.monotonic() - killed
    poll_until(
        lambda: len(r := running()) == REPLICAS and all(t["NodeID"] != victim_id for t in r), 120, "tasks moved", 0.1
    )
    figures["kill -> tasks running elsewhere"] = time.monotonic() - killed
    figures["start -> node Ready"], _ = timed("start", victim)
    service.remove()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    options = parser.parse_args()
    rounds = [one_round() for _ in range(options.repeat)]
    print(f"medians of {options.repeat} (load average {os.getloadavg()[0]:.1f}):")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        print(f"  {key:34} {statistics.median(values):5.1f} s   ({', '.join(f'{v:.1f}' for v in values)})")
    if not options.keep:
        swarm_lab("down")


if __name__ == "__main__":
    main()
