"""Snapshot tests of every screen (pytest-textual-snapshot), on fixed data from `fakes.FakeClient`.

Update after a deliberate change of the look: `python -m pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import pytest
from fakes import fake_app
from textual.pilot import Pilot
from textual.widgets import Input


@pytest.fixture(autouse=True)
def _no_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The header names the engine an in-process console uses: the pictures must not depend on the
    # DOCKER_HOST of whoever runs the tests.
    monkeypatch.delenv("DOCKER_HOST", raising=False)


async def settle(pilot: Pilot) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False  # a blinking cursor would make the picture depend on timing
    for _ in range(3):
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def keys(*presses: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        for key in presses:
            await pilot.press(key)
            await settle(pilot)

    return run_before


def test_services_view_80x24(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys())


def test_services_view_wide(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(160, 40), run_before=keys("down", "down"))


def test_services_view_filtered(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("slash", "w", "e", "b"))


def test_services_view_empty_and_engine_down(snap_compare):
    problem = ("Docker engine not reachable at unix:///var/run/docker.sock (the default; DOCKER_HOST is not set): "
               "connection refused. Start dockerd, or set DOCKER_HOST to a reachable engine.")
    assert snap_compare(fake_app([], engine_problem=problem), terminal_size=(80, 24), run_before=keys())


def test_create_form(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("n"))


def test_create_form_blocked_submit(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("n", "B", "a", "d", "ctrl+s"))


def test_create_form_wide(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(180, 50), run_before=keys("n"))


def test_service_view_replicas(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter"))


def test_service_view_logs(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(100, 30), run_before=keys("down", "down", "enter", "2"))


def test_service_view_spec(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter", "3"))


def test_scale_dialog(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter", "s"))


def test_delete_dialog(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "d"))


def test_help_screen(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("question_mark"))


def test_service_view_replicas_wide(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(200, 40), run_before=keys("down", "down", "enter"))


def test_fip_dialog(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "f", "down", "down"))


def test_service_view_events(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(100, 30), run_before=keys("down", "down", "enter", "4"))


def test_service_view_events_80x24(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter", "4"))


def test_service_view_balancer(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(100, 30), run_before=keys("down", "down", "enter", "5"))


def test_service_view_balancer_80x24(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter", "5"))


def test_service_view_revisions(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(100, 30), run_before=keys("down", "down", "enter", "6"))


def test_rollback_dialog(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=keys("down", "down", "enter", "6", "down", "r"))
