"""The multi-node test bed for tests: the `lab` session fixture over scripts/swarm-lab.

`lab` brings the lab up (`scripts/swarm-lab up` is idempotent: a healthy lab left by an earlier session
is reused) and takes it down when the session ends, unless HYPERSERVICE_LAB_KEEP=1 asks to keep it for
later runs. A `Lab` knows what the script exported: the manager, each node's engine and address on the
lab bridge (reached from the host through the lab's veth): bench/lab.py, shared with the benchmarks.
Registered in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from bench.lab import Lab, parse_env, swarm_lab

KEEP_VARIABLE = "HYPERSERVICE_LAB_KEEP"


@pytest.fixture(scope="session")
def lab(docker_client: docker.DockerClient) -> Iterator[Lab]:
    # docker_client: the main engine answers and has the images the lab copies
    if os.geteuid() != 0:
        pytest.fail("the swarm tests need root (network namespaces, mounts, cgroups); leave them out: -m 'not swarm'")
    instance = Lab(parse_env(swarm_lab("up")))
    for node in instance.nodes:
        # test traffic goes only to the lab's own addresses, through the lab's own veth
        device = instance.route_device(node)
        if device != instance.env["HYPERSERVICE_LAB_HOST_IFACE"]:
            pytest.fail(f"{node}'s address {instance.address(node)} is routed via {device!r}, not the lab's veth")
    yield instance
    if os.environ.get(KEEP_VARIABLE) != "1":
        swarm_lab("down")
