"""The first five minutes, in the console on the real backend and engine: the demo image scripts/up
builds, created from the form with its defaults, turns active and answers at its address, while the
configured balancer image is missing and the offline fallback stands in (and the console says so)."""

from __future__ import annotations

import asyncio
import uuid

import docker
import pytest
from textual.widgets import Input
from tui_helpers import cell, fill, open_form, submit_form, wait_for

from backend.docker_driver import LABEL_ROLE, LABEL_TENANT
from backend.settings import DEMO_IMAGE
from bench.load import get
from tests.conftest import LB_IMAGE, make_settings
from tui.app import ConsoleApp

# A registry on loopback that does not exist: the pull fails at once, and no traffic leaves the host.
MISSING_LB_IMAGE = f"127.0.0.1:9/hyperservice-test/absent-{uuid.uuid4().hex[:8]}:1"


@pytest.fixture
def settings(tmp_path):
    # As on a fresh offline machine after scripts/up: the configured balancer image cannot be had, the
    # offline fallback (here the tests' Debian HAProxy image, the same recipe) is on the engine.
    return make_settings(tmp_path / "data", lb_image=MISSING_LB_IMAGE, lb_fallback_image=LB_IMAGE)


@pytest.fixture
def demo_image(docker_client: docker.DockerClient) -> str:
    docker_client.images.get(DEMO_IMAGE)  # built by scripts/up (images/ensure) and tests/images/build.sh
    return DEMO_IMAGE


async def test_the_demo_from_the_form_defaults_turns_active_and_answers(backend, demo_image, docker_client):
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_form(pilot)
        assert demo_image in app.screen.query_one("#Image", Input).placeholder  # the form's example exists
        # only the required fields; everything else keeps the form's defaults
        await fill(pilot, Name="demo", Image=demo_image, Replicas="2", ServicePort="80")
        await submit_form(pilot, "demo")

        def active() -> bool:
            return cell(pilot, "#services", "demo", "Status") == "active" and cell(pilot, "#services", "demo", "Up") == "2/2"

        await wait_for(pilot, active, 90, "demo to turn active in the table")
        # the console said the balancer runs the fallback image, and how to use the configured one
        notes = [str(n.message) for n in app._notifications]
        assert any(MISSING_LB_IMAGE in note and LB_IMAGE in note for note in notes), notes

    service = backend.get("demo")
    assert service.Status == "active" and service.Replicas == 2 and service.ContainerPort == 80
    tenant = f"{LABEL_TENANT}={backend.tenant}"
    replicas = docker_client.containers.list(filters={"label": [tenant, f"{LABEL_ROLE}=replica"]})
    hostnames = {c.attrs["Config"]["Hostname"] for c in replicas}
    assert len(hostnames) == 2
    (balancer,) = docker_client.containers.list(filters={"label": [tenant, f"{LABEL_ROLE}=balancer"]})
    assert balancer.attrs["Config"]["Image"] == LB_IMAGE  # the fallback, as nothing else was to be had
    # the service's address answers with a replica's hostname; every replica takes its turn
    answered: set[str] = set()
    for _ in range(20):
        status, body, _headers = await asyncio.to_thread(get, service.IP, 80)
        assert status == 200, body
        answered.add(body.split()[0])
        if answered == hostnames:
            break
    assert answered == hostnames
