"""The console's picture of the backend: services by name, the replicas it has read, and what is wrong.

Only the app writes it (from API answers and the /events stream); screens read it when told (see
`tui.messages`). Nothing here is the truth: the backend is; this is the last thing it said.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.models import ContainerInfo, Service


@dataclass(frozen=True)
class Pull:
    """The latest `pull`/`progress` event of a service: how far the pull of `image` is."""

    image: str
    done: int
    total: int
    layers: int
    layers_done: int


@dataclass
class Catalog:
    services: dict[str, Service] = field(default_factory=dict)
    containers: dict[str, list[ContainerInfo]] = field(default_factory=dict)
    pulls: dict[str, Pull] = field(default_factory=dict)  # by service name, while its image is pulled
    engine_problem: str | None = None  # the Docker engine cannot be reached (the backend says why)
    connection_problem: str | None = None  # the backend itself cannot be reached
    loaded: bool = False  # the list was read at least once

    @property
    def problem(self) -> str | None:
        return self.connection_problem or self.engine_problem

    def replace_all(self, services: list[Service]) -> None:
        self.services = {s.Name: s for s in services}
        self.containers = {name: c for name, c in self.containers.items() if name in self.services}
        self.loaded = True

    def put(self, service: Service) -> None:
        self.services[service.Name] = service

    def remove(self, name: str) -> None:
        self.services.pop(name, None)
        self.containers.pop(name, None)
        self.pulls.pop(name, None)

    def pull_of(self, service: Service) -> Pull | None:
        """How far the pull of the service's image is, while its status says it is pulling."""
        pull = self.pulls.get(service.Name)
        if pull is None or pull.image != service.Image or not service.Message.startswith("Pulling"):
            return None
        return pull

    def sorted_services(self) -> list[Service]:
        return sorted(self.services.values(), key=lambda s: s.Name)
