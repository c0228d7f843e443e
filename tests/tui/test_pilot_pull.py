"""Pulls in the console, against the real backend and engine: a service whose image is pulled off a
registry of the test's own shows the pull's bytes and % live in the services list and as a filling
progress bar in its view; the create form's Image completes from the images the engine has."""

from __future__ import annotations

import re

from fakes import FakeClient, fake_app
from textual.widgets import Input, ProgressBar, Static
from tui_helpers import cell, open_form, settled, type_into, wait_for

from tests.conftest import wait_status, web_body
from tui.app import ConsoleApp
from tui.client import ApiError
from tui.screens.service import ServiceScreen
from tui.widgets.form.suggesting_input import SuggestingInput

PULLING = re.compile(r"Pulling \d+% \([\d.]+ [kMG]?B of [\d.]+ [kMG]?B\)")  # the list may clip the rest


async def test_a_pull_shows_live_in_the_list_and_as_a_progress_bar_in_the_service_view(
    registry, saved_web_image, backend, api
):
    registry.throttle = 500_000  # bytes per second and blob: the 3 MB layer takes about 6 s
    image = registry.publish("demo/web", "console", saved_web_image, padding=3 * 2**20)
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(140, 36)) as pilot:
        await pilot.pause()
        assert (await api.post("/services/create", json=web_body("pulling", 1, Image=image))).status_code == 201
        await wait_for(pilot, lambda: "pulling" in app.screen.query_one("#services").rows, 20, "the row")
        await wait_for(pilot, lambda: PULLING.search(cell(pilot, "#services", "pulling", "Message")), 60,
                       "the pull's progress in the Message column")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        bar = app.screen.query_one("#progress", ProgressBar)
        summary = app.screen.query_one("#summary", Static)
        seen: list[tuple[float, float]] = []
        said: list[str] = []

        def filling() -> bool:
            if bar.display and bar.total:
                seen.append((bar.progress, bar.total))
            if PULLING.search(str(summary.content)) and "layers of image" in str(summary.content):
                said.append(str(summary.content))
            return len({done for done, total in seen if 0 < done < total}) >= 2 and bool(said)

        await wait_for(pilot, filling, 60, "the progress bar to fill with the pull's bytes")
        pull = app.catalog.pulls["pulling"]
        assert pull.image == image and seen[-1][1] == pull.total
        await wait_status(api, "pulling", "active", 120)
        await wait_for(pilot, lambda: not bar.display, 20, "the bar to go once active")
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # only ever forward


async def test_image_completes_from_the_engines_images_with_tab_or_right(backend, docker_client):
    references = sorted(tag for image in docker_client.images.list() for tag in image.tags)
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_form(pilot)
        field = app.screen.query_one("#Image", SuggestingInput)
        await type_into(pilot, "#Image", "hyperservice-t")
        expected = next(r for r in references if r.startswith("hyperservice-t"))
        await wait_for(pilot, lambda: field.suggestion == expected, 10, "the suggestion")
        assert field.value == "hyperservice-t"  # shown, not taken yet
        await pilot.press("tab")
        assert field.value == expected and app.focused is field  # taken; the focus stays
        await pilot.press("tab")
        assert app.focused is app.screen.query_one("#Replicas", Input)  # nothing to take: moves on

        await type_into(pilot, "#Image", "hyperservice-test/web:")
        await wait_for(pilot, lambda: field.suggestion == "hyperservice-test/web:1", 10, "the web image")
        await pilot.press("right")
        assert field.value == "hyperservice-test/web:1"
        await type_into(pilot, "#Image", "hbx-nothing-like-it")
        await wait_for(pilot, lambda: settled(app), 10, "the suggestion lookups to end")
        assert field.suggestion == ""


async def test_without_the_images_route_the_form_completes_nothing_and_says_nothing():
    client = FakeClient()

    async def missing(prefix: str = "", limit: int | None = None) -> list[str]:
        raise ApiError(404, "Not Found")

    client.images = missing  # type: ignore[method-assign]
    app = ConsoleApp(client=client)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_form(pilot)
        await type_into(pilot, "#Image", "ngi")
        await wait_for(pilot, lambda: settled(app), 10, "the images read and the suggestion lookups to end")
        assert app.screen.query_one("#Image", SuggestingInput).suggestion == ""
        assert not app._notifications  # no error for a missing nicety


async def test_the_form_reads_the_images_once_and_suggests_in_their_order():
    app = fake_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_form(pilot)
        await type_into(pilot, "#Image", "hyperservice-test/w")
        field = app.screen.query_one("#Image", SuggestingInput)
        await wait_for(pilot, lambda: field.suggestion == "hyperservice-test/web:1", 5, "the suggestion")
        await type_into(pilot, "#Image", "r")
        await wait_for(pilot, lambda: field.suggestion == "redis:7-alpine", 5, "another")
        assert app.client.calls.count("images") == 1  # type: ignore[attr-defined]
