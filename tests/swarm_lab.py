"""The multi-node test bed for tests: the `lab` session fixture over scripts/swarm-lab.

`lab` brings the lab up (`scripts/swarm-lab up` is idempotent: a healthy lab left by an earlier session
is reused) and takes it down when the session ends, unless HYPERSERVICE_LAB_KEEP=1 asks to keep it for
later runs. A `Lab` knows what the script exported: the manager, each node's engine and address on the
lab bridge (reached from the host through the lab's veth). Registered in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import docker
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swarm-lab"
KEEP_VARIABLE = "HYPERSERVICE_LAB_KEEP"

T = TypeVar("T")


def swarm_lab(*args: str, timeout: float = 180) -> str:
    """Run scripts/swarm-lab; its stdout. A failure shows the script's own explanation."""
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"scripts/swarm-lab {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def parse_env(output: str) -> dict[str, str]:
    """The `export NAME=value` lines `up` and `env` print."""
    env: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    return env


def poll_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy; fail with its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)
        last = check()
    return last


@dataclass(frozen=True)
class Lab:
    env: dict[str, str]

    def _list(self, name: str) -> list[str]:
        return [item for item in self.env[f"HYPERSERVICE_LAB_{name}"].split(",") if item]

    @property
    def nodes(self) -> list[str]:
        return self._list("NODES")

    @property
    def edge_nodes(self) -> list[str]:
        return self._list("EDGE_NODES")

    @property
    def manager(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.env["HYPERSERVICE_LAB_MANAGER"], timeout=30)

    def engine(self, node: str) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host(node), timeout=30)

    def docker_host(self, node: str) -> str:
        return self.env[f"HYPERSERVICE_LAB_{node.upper()}_DOCKER_HOST"]

    def address(self, node: str) -> str:
        """The node's address on the lab bridge."""
        return self.env[f"HYPERSERVICE_LAB_{node.upper()}_ADDR"]

    def route_device(self, node: str) -> str:
        """The host's interface towards the node's address."""
        out = subprocess.run(["ip", "-j", "route", "get", self.address(node)], capture_output=True, text=True)
        return str(json.loads(out.stdout or "[{}]")[0].get("dev", ""))


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
