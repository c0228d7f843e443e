"""bench/console.py's in-memory engine (`MemoryDriver`) held to the real driver's shapes.

The console benchmark replaces Docker with a stand-in, so its figures are only worth something while
the backend reads from the stand-in what it reads from a real engine. Here the backend's read
operations (the replicas of a service and of all services, the log/stats sources, the engine check,
one stats sample) run twice — on a real container made through `backend.docker_driver`, and on the
stand-in's — with every object they get traced: each driver method asked for, each attribute and
key looked up, with the type found. Whatever the backend found on the real engine, the stand-in must
have too, with the same type; a key it lacks fails here, naming the path.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from backend.balancer import LABEL_SLOT
from backend.core import Backend, stats_figures
from backend.docker_driver import DockerDriver, ServiceRef
from backend.models import ServiceSpec, ServiceStatus
from bench.console import MemoryDriver, build_backend
from tests.conftest import WEB_IMAGE, make_settings, remove_tenant_objects

ABSENT = None  # the type recorded for a path looked up and not found


class Reads:
    """What the backend looked up: driver methods, and object paths with the type found there."""

    def __init__(self) -> None:
        self.methods: set[str] = set()
        self.paths: dict[str, type | None] = {}

    def saw(self, path: str, value: object) -> object:
        self.paths[path] = type(value)
        return traced(value, path, self)

    def missed(self, path: str) -> None:
        self.paths.setdefault(path, ABSENT)


def traced(value: object, path: str, reads: Reads) -> object:
    return TracedDict(value, path, reads) if isinstance(value, dict) else value


class TracedDict(dict):  # a dict still (the backend's `or {}` and isinstance checks behave the same)
    def __init__(self, data: dict, path: str, reads: Reads) -> None:
        super().__init__(data)
        self._path, self._reads = path, reads

    def _at(self, key: object) -> str:
        return f"{self._path}[{key!r}]"

    def get(self, key: object, default: object = None) -> object:
        if dict.__contains__(self, key):
            return self._reads.saw(self._at(key), dict.__getitem__(self, key))
        self._reads.missed(self._at(key))
        return default

    def __getitem__(self, key: object) -> object:
        if not dict.__contains__(self, key):
            self._reads.missed(self._at(key))
            raise KeyError(key)
        return self._reads.saw(self._at(key), dict.__getitem__(self, key))

    def __contains__(self, key: object) -> bool:
        found = dict.__contains__(self, key)
        if found:
            self._reads.saw(self._at(key), dict.__getitem__(self, key))
        else:
            self._reads.missed(self._at(key))
        return found

    def values(self) -> list[object]:  # type: ignore[override]
        return [self._reads.saw(self._at("*"), value) for value in dict.values(self)]

    def items(self) -> list[tuple[object, object]]:  # type: ignore[override]
        return [(key, self._reads.saw(self._at("*"), value)) for key, value in dict.items(self)]


class TracedContainer:
    """A container (the SDK's, or the stand-in's) whose every attribute read is noted."""

    def __init__(self, container: object, reads: Reads) -> None:
        self._container, self._reads = container, reads

    def __getattr__(self, name: str) -> object:
        try:
            value = getattr(self._container, name)
        except AttributeError:
            self._reads.missed(f"container.{name}")
            raise
        return self._reads.saw(f"container.{name}", value)


class TracingDriver:
    """Stands where the backend's driver stands; notes the methods asked for, traces what they return."""

    def __init__(self, driver: object, reads: Reads) -> None:
        self._driver, self._reads = driver, reads

    def __getattr__(self, name: str) -> Any:
        self._reads.methods.add(name)
        method = getattr(self._driver, name)
        if name in ("containers", "all_replicas"):
            return lambda *args, **kwargs: [TracedContainer(c, self._reads) for c in method(*args, **kwargs)]
        return method


def read_everything(backend: Backend, name: str) -> Reads:
    """Run the backend's read operations the console uses on `name`; answer what they looked up."""
    reads = Reads()
    real_driver = backend.driver
    backend.driver = TracingDriver(real_driver, reads)  # type: ignore[assignment]
    try:
        for _ in ("current", "outdated"):  # an outdated replica's image comes from the container
            replica_id = backend.containers(name)[0].Id
            assert backend.all_containers()[name] and backend.log_sources(name, None)
            backend.engine_status()
            backend.store.change_image(name, backend.store.get(name).spec.Image)  # type: ignore[union-attr]
        stream = backend.driver.stats(replica_id)
        try:
            sample = next(iter(stream))
        finally:
            stream.close()
        stats_figures(TracedDict(sample, "stats sample", reads))  # type: ignore[arg-type]
    finally:
        backend.driver = real_driver
    return reads


@pytest.fixture
def real_reads(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Reads]:
    backend = Backend(make_settings(tmp_path / "data"))  # not started: nothing reconciles the container away
    try:
        spec = ServiceSpec.model_validate({"Name": "shape", "Image": WEB_IMAGE, "ServicePort": 80, "Replicas": 1,
                                           "ContainerSize": "s1"})
        record = backend.store.insert(spec, ServiceStatus.active, "Scaling complete")
        ref = ServiceRef(record.name, record.uid)
        network = backend.driver.ensure_network(ref)
        backend.driver.create_replica(ref, spec, record.revision, str(network.name), {LABEL_SLOT: "s1"})
        yield read_everything(backend, "shape")
    finally:
        backend.close()
        remove_tenant_objects(docker_client, backend.tenant)


def test_the_stand_in_has_what_the_backend_reads_from_a_real_engine(real_reads: Reads, tmp_path: Path):
    backend, _ = build_backend(services=1, replicas=1, data_dir=tmp_path / "bench")
    try:
        stand_in = read_everything(backend, "svc-000")
    finally:
        backend.close()
    found_on_engine = {path: kind for path, kind in real_reads.paths.items() if kind is not ABSENT}
    # the trace saw the reads that matter (so an empty trace cannot pass)
    assert {"container.id", "container.labels", "container.attrs['State']['StartedAt']",
            "stats sample['memory_stats']['usage']"} <= set(found_on_engine), sorted(found_on_engine)
    lacking = sorted(path for path in found_on_engine if stand_in.paths.get(path) is ABSENT)
    assert not lacking, f"bench/console.py's stand-in lacks what a real engine has: {lacking}"
    other_types = {path: (kind.__name__, stand_in.paths[path].__name__)  # type: ignore[union-attr]
                   for path, kind in found_on_engine.items() if stand_in.paths[path] is not kind}
    assert not other_types, f"real vs stand-in types differ: {other_types}"
    assert real_reads.methods <= {name for name in dir(MemoryDriver) if not name.startswith("_")}


def test_the_stand_in_driver_methods_take_the_real_ones_parameters():
    shared = [name for name in vars(MemoryDriver) if not name.startswith("_") and hasattr(DockerDriver, name)]
    assert {"containers", "all_replicas", "stats", "ping"} <= set(shared)
    for name in shared:
        real, stand_in = (inspect.signature(getattr(driver, name)).parameters for driver in (DockerDriver, MemoryDriver))
        assert [(p.name, p.kind, p.default) for p in stand_in.values()] == [
            (p.name, p.kind, p.default) for p in real.values()], name
