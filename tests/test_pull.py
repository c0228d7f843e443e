"""Pulling a missing image: its progress (bytes, %, layers) in the service's status message and as
`pull` events, from a real pull by the real engine off a registry of the test's own (tests/registry.py);
a missing image on that registry turns the service to `error`; `GET /images` lists the engine's images.
The adding-up of Docker's pull stream and the rate limit are unit-tested on recorded lines."""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from backend.docker_driver import DockerDriver, ImageUnavailable, PullProgress, PullTracker, format_size
from tests.conftest import LB_IMAGE, WEB_IMAGE, WEB_IMAGE_2, wait_status, web_body
from tui.client import ApiClient

# Lines of a real pull of a registry image of 4 layers (two small, one 1.1 MB, one 3.1 MB waiting).
RECORDED = [
    {"status": "Pulling from demo/web", "id": "1"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "aaa"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"},
    {"status": "Already exists", "progressDetail": {}, "id": "ccc"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "ddd"},
    {"status": "Waiting", "progressDetail": {}, "id": "ddd"},
    {"status": "Downloading", "progressDetail": {"current": 16384, "total": 1093408}, "id": "aaa"},
    {"status": "Downloading", "progressDetail": {"current": 477, "total": 477}, "id": "bbb"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbb"},
    {"status": "Download complete", "progressDetail": {}, "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 593408, "total": 1093408}, "id": "aaa"},
    {"status": "Downloading", "progressDetail": {"current": 32768, "total": 3146944}, "id": "ddd"},
    {"status": "Downloading", "progressDetail": {"current": 1093408, "total": 1093408}, "id": "aaa"},
    {"status": "Download complete", "progressDetail": {}, "id": "aaa"},
    {"status": "Extracting", "progressDetail": {"current": 32768, "total": 1093408}, "id": "aaa"},
    {"status": "Pull complete", "progressDetail": {}, "id": "aaa"},
    {"status": "Extracting", "progressDetail": {"current": 477, "total": 477}, "id": "bbb"},
    {"status": "Pull complete", "progressDetail": {}, "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 3146944, "total": 3146944}, "id": "ddd"},
    {"status": "Download complete", "progressDetail": {}, "id": "ddd"},
    {"status": "Extracting", "progressDetail": {"current": 65536, "total": 3146944}, "id": "ddd"},
    {"status": "Pull complete", "progressDetail": {}, "id": "ddd"},
    {"status": "Digest: sha256:2e2c6e156696a80cd4d0e62d7b466a62c81cc910daf3b34c05bc029532000b58"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:5000/demo/web:1"},
]
TOTAL = 1093408 + 477 + 3146944


def test_the_tracker_adds_up_downloaded_bytes_and_pulled_layers():
    tracker = PullTracker("127.0.0.1:5000/demo/web:1")
    seen = []
    for line in RECORDED:
        if tracker.feed(line):
            seen.append(tracker.progress())
    assert [p.done for p in seen] == sorted(p.done for p in seen)  # never goes back
    # The tag's line counts no layer; "Already exists" is a layer pulled, of no bytes.
    assert seen[0] == PullProgress("127.0.0.1:5000/demo/web:1", 0, 0, 1, 0)
    middle = next(p for p in seen if p.done == 593408 + 477)  # aaa half-way, bbb downloaded
    assert (middle.total, middle.layers, middle.layers_done) == (1093408 + 477, 4, 1)
    assert middle.percent == (593408 + 477) * 100 // (1093408 + 477)
    # Extracting re-counts bytes already downloaded: it does not move `done` back or forth.
    assert tracker.progress() == PullProgress("127.0.0.1:5000/demo/web:1", TOTAL, TOTAL, 4, 4)
    assert tracker.progress().percent == 100


def test_the_progress_reads_as_bytes_percent_and_layers():
    assert PullProgress("web:1").describe() == "Pulling image web:1"
    progress = PullProgress("127.0.0.1:5000/demo/web:1", done=3_100_000, total=7_900_000, layers=3, layers_done=2)
    assert progress.describe() == "Pulling 39% (3.1 MB of 7.9 MB), 2 of 3 layers of image 127.0.0.1:5000/demo/web:1"
    assert PullProgress("x:1", done=10, total=0, layers=2).describe() == "Pulling 0 of 2 layers of image x:1"
    assert [format_size(n) for n in (0, 999, 1000, 1_234_567, 999_960_000, 3 * 10**12)] == [
        "0 B", "999 B", "1.0 kB", "1.2 MB", "1.0 GB", "3.0 TB"]


class _FakeDocker:
    """Just what ensure_image calls: images.get (missing until pulled) and api.pull (recorded lines)."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.lines = lines
        self.pulled: list[tuple[str, str]] = []
        self.images = self
        self.api = self

    def get(self, reference: str) -> Any:
        if not self.pulled:
            raise docker.errors.ImageNotFound(f"No such image: {reference}")
        return type("Image", (), {"id": "sha256:feed"})()

    def pull(self, repository: str, tag: str, stream: bool, decode: bool) -> Any:
        self.pulled.append((repository, tag))
        return iter(self.lines)


def test_ensure_image_reports_at_once_then_at_most_every_interval_and_at_the_end():
    fake = _FakeDocker(RECORDED)
    every_change: list[PullProgress] = []
    driver = DockerDriver("tenant", client=fake)  # type: ignore[arg-type]
    assert driver.ensure_image("127.0.0.1:5000/demo/web:1", every_change.append, every=0) == "sha256:feed"
    assert fake.pulled == [("127.0.0.1:5000/demo/web", "1")]
    assert every_change[0] == PullProgress("127.0.0.1:5000/demo/web:1")  # before the engine says anything
    assert len(every_change) > 5 and every_change[-1].done == TOTAL

    fake = _FakeDocker(RECORDED)
    rare: list[PullProgress] = []
    DockerDriver("tenant", client=fake).ensure_image("demo/web", rare.append, every=3600)  # type: ignore[arg-type]
    assert fake.pulled == [("demo/web", "latest")]  # no tag: latest, never every tag of the repository
    assert rare == [PullProgress("demo/web"), PullProgress("demo/web", TOTAL, TOTAL, 4, 4)]


def test_an_error_line_in_the_pull_stream_says_the_image_is_not_found():
    fake = _FakeDocker([RECORDED[0], {"error": "unauthorized: authentication required\nmore", "errorDetail": {}}])
    with pytest.raises(ImageUnavailable, match=r"^image demo/web:1 not found \(unauthorized: authentication required\)$"):
        DockerDriver("tenant", client=fake).ensure_image("demo/web:1")  # type: ignore[arg-type]


# -- on the real engine ---------------------------------------------------------------------------


async def test_a_pull_shows_bytes_percent_and_layers_live_and_the_service_turns_active(
    registry, saved_web_image, api: httpx.AsyncClient, backend, docker_client
):
    registry.throttle = 1_000_000  # bytes per second and blob: the 3 MB layer takes about 3 s
    image = registry.publish("demo/web", "progress", saved_web_image, padding=3 * 2**20)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)
    client = ApiClient.in_process(backend)
    progress: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    try:
        events = client.events()
        assert (await anext(events))["Type"] == "hello"
        assert (await api.post("/services/create", json=web_body("pulled", 1, Image=image))).status_code == 201

        async def watch() -> None:
            async for event in events:
                if event.get("Type") == "pull" and event.get("Name") == "pulled":
                    progress.append(event)
                if event.get("Type") == "service" and event.get("Name") == "pulled" and "Status" in event:
                    statuses.append(event)
                    if event["Status"] == "active":
                        return

        await asyncio.wait_for(watch(), timeout=120)
    finally:
        await client.aclose()
    layer_bytes = registry.layer_bytes(image)
    done = [event["Done"] for event in progress]
    assert done == sorted(done) and len(set(done)) >= 3, done  # several, increasing
    assert any(0 < e["Done"] < e["Total"] and 0 <= e["Percent"] < 100 for e in progress), progress
    last = progress[-1]
    assert (last["Image"], last["Done"], last["Total"], last["Percent"]) == (image, layer_bytes, layer_bytes, 100)
    assert last["Layers"] == last["LayersDone"] == len(saved_web_image.layers) + 1
    pulling = [e["Message"] for e in statuses if e["Status"] == "scaling" and e["Message"].startswith("Pulling")]
    assert pulling[0] == f"Pulling image {image}"  # said at once, before the engine answers
    partial = next(e for e in progress if 0 < e["Done"] < e["Total"])
    assert (
        f"Pulling {partial['Percent']}% ({format_size(partial['Done'])} of {format_size(partial['Total'])}), "
        f"{partial['LayersDone']} of {partial['Layers']} layers of image {image}"
    ) in pulling
    assert docker_client.images.get(image).id
    service = await wait_status(api, "pulled", "active")
    assert service["Message"] == "Scaling complete"
    assert any(r.startswith("GET /v2/demo/web/blobs/") for r in registry.requests)  # really pulled from it


async def test_an_image_missing_on_its_registry_turns_the_service_to_error(registry, api: httpx.AsyncClient):
    image = f"{registry.host}/demo/missing:1"
    assert (await api.post("/services/create", json=web_body("nothere", 1, Image=image))).status_code == 201
    service = await wait_status(api, "nothere", "error", timeout=60)
    assert service["Message"].startswith(f"image {image} not found (")
    assert "manifest unknown" in service["Message"]
    assert "GET /v2/demo/missing/manifests/1" in registry.requests


async def test_images_lists_the_engines_references_by_prefix(api: httpx.AsyncClient, docker_client):
    on_engine = sorted(tag for image in docker_client.images.list() for tag in image.tags)
    answer = await api.get("/images", params={"prefix": "hyperservice-test/"})
    assert answer.status_code == 200
    assert answer.json() == [t for t in on_engine if t.startswith("hyperservice-test/")]
    assert {WEB_IMAGE, WEB_IMAGE_2, LB_IMAGE} <= set(answer.json())
    assert (await api.get("/images", params={"prefix": "hyperservice-test/web:"})).json() == [WEB_IMAGE, WEB_IMAGE_2]
    assert (await api.get("/images", params={"prefix": "hyperservice-test/", "limit": 1})).json() == [LB_IMAGE]
    everything = (await api.get("/images")).json()  # other images come and go on a shared engine
    assert everything == sorted(everything) and 0 < len(everything) <= 50 and "<none>:<none>" not in everything
    refused = await api.get("/images", params={"limit": 0})
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "limit"
