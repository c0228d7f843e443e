"""Shared fixtures: a real backend on the real Docker engine, reached the way the console reaches it.

`backend` is a fresh backend (own data dir, so its own tenant) with its reconciler running; `api` is
an httpx client on it through the ASGI transport (in-process, as the console does). Whatever a test
leaves on the engine is removed afterwards by the tenant label, so tests never see each other.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import httpx
import pytest

from backend.api import create_app
from backend.core import Backend
from backend.docker_driver import LABEL_TENANT
from backend.settings import Settings
from bench.polling import TimedOut
from bench.polling import eventually as poll_until
from tests.registry import Registry, SavedImage

WEB_IMAGE = "hyperservice-test/web:1"
WEB_IMAGE_2 = "hyperservice-test/web:2"
LB_IMAGE = "hyperservice-test/haproxy:2.6"

pytest_plugins = ["tests.swarm_lab"]  # the `lab` fixture: the multi-node test bed (scripts/swarm-lab)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    client.ping()  # no engine: the tests fail loudly, they are not skipped
    for image in (WEB_IMAGE, WEB_IMAGE_2, LB_IMAGE):
        client.images.get(image)  # built by tests/images/build.sh (scripts/test does it)
    return client


def make_settings(data_dir: Path, **overrides) -> Settings:
    values = {
        "data_dir": data_dir,
        "lb_image": LB_IMAGE,
        "resync_seconds": 2.0,
        # Each backend its own block of loopback addresses: tests (and anyone else on this engine)
        # never compete for one IP:port.
        "address_pool": f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24",
        # ... and its own network pool (a clash with another backend's subnet is handled anyway).
        "network_pool": f"10.{random.randint(100, 250)}.0.0/16",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def remove_tenant_objects(client: docker.DockerClient, tenant: str) -> None:
    label = f"{LABEL_TENANT}={tenant}"
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


@pytest.fixture
def backend(settings: Settings, docker_client: docker.DockerClient) -> Iterator[Backend]:
    instance = Backend(settings)
    instance.start()
    tenant = instance.tenant
    try:
        yield instance
    finally:
        instance.close()
        remove_tenant_objects(docker_client, tenant)


@contextlib.contextmanager
def backend_to_restart(settings: Settings, docker_client: docker.DockerClient) -> Iterator[Backend]:
    """A started backend, for a test that closes it and starts the next one on the same data dir (a
    restart). On the way out it is closed (again: closing twice is harmless) and its tenant's Docker
    objects removed, the next backends' included (the same data dir: the same tenant)."""
    instance = Backend(settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.close()
        remove_tenant_objects(docker_client, instance.tenant)


@pytest.fixture
def backend_factory(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Callable[..., Backend]]:
    """Started backends with settings of the test's choosing (`backend_factory(max_replicas=2)`)."""
    made: list[Backend] = []

    def make(**overrides: object) -> Backend:
        instance = Backend(make_settings(tmp_path / f"data{len(made)}", **overrides))
        instance.start()
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()
        remove_tenant_objects(docker_client, instance.tenant)


@pytest.fixture(scope="session")
def saved_web_image(docker_client: docker.DockerClient) -> SavedImage:
    """The test web image as `docker save` gives it, to publish on a test registry."""
    return SavedImage.from_engine(docker_client, WEB_IMAGE)


@pytest.fixture
def registry(docker_client: docker.DockerClient) -> Iterator[Registry]:
    """A registry of the test's own on 127.0.0.1 (tests/registry.py) that the real engine pulls from.
    Afterwards whatever was pulled from it is removed: the containers running it, then the images."""
    server = Registry().start()
    try:
        yield server
    finally:
        server.stop()
        for reference in server.published:
            for container in docker_client.containers.list(all=True, filters={"ancestor": reference}):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(reference, force=True)


def client_for(instance: Backend, token: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(instance, token))
    return httpx.AsyncClient(transport=transport, base_url="http://hyperservice", timeout=60)


@pytest.fixture
async def api(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(backend) as client:
        yield client


async def eventually(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = ""):
    """Poll `check` (sync or async) until it returns something truthy (bench/polling.py's poll); a
    timeout is the test's failure, with the last value."""
    try:
        return await poll_until(check, timeout, what, interval)
    except TimedOut as exc:
        raise AssertionError(str(exc)) from None


async def wait_status(api: httpx.AsyncClient, name: str, status: str, timeout: float = 30.0) -> dict:
    async def check():
        body = (await api.get(f"/services/{name}")).json()
        return body if body.get("Status") == status else None

    return await eventually(check, timeout, what=f"{name} to be {status}")


def web_body(name: str, replicas: int = 2, **extra) -> dict:
    return {"Name": name, "Image": WEB_IMAGE, "ServicePort": 80, "Replicas": replicas, **extra}


def needs_engine(item: pytest.Item) -> bool:
    """A test needs the real engine when it uses the docker fixtures (`docker_client`, and so `backend`
    and `api`) or says so with `@pytest.mark.docker` (one that reaches the engine another way)."""
    return "docker_client" in getattr(item, "fixturenames", ()) or item.get_closest_marker("docker") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every real-engine test carries the `docker` marker, so `-m "not docker"` runs the pure tests
    # alone, in seconds, with no engine; keep unit tests first in a full run (fast feedback).
    for item in items:
        if needs_engine(item) and item.get_closest_marker("docker") is None:
            item.add_marker(pytest.mark.docker)
    items.sort(key=lambda item: 1 if needs_engine(item) else 0)


os.environ.setdefault("HYPERSERVICE_DATA_DIR", "/tmp/hyperservice-tests-default")
