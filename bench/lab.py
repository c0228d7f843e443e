"""The multi-node test bed (scripts/swarm-lab) as the benchmarks and the tests drive it: `swarm_lab()`
runs the script, `parse_env()` reads what `up`/`env` export, a `Lab` knows the manager, each node's
engine and its address on the lab bridge (reached from the host through the lab's veth).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import docker

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swarm-lab"


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
