"""Terminal safety: strings from the backend and the engine are shown as the text they are.

Markup characters in a service's values (`[/]` used to crash the console, and the in-process backend
with it) show literally everywhere; escape sequences in log lines (an OSC 52 clipboard write, a screen
clear) show as visible stand-ins and never reach the terminal. On fixed data (fakes.FakeClient), plus
one test with a real replica writing those bytes on the real engine.
"""

from __future__ import annotations

import asyncio
import re

from fakes import NOW, FakeClient, _at, _service, sample_services
from textual.widgets import DataTable, RichLog
from tui_helpers import cell, type_into, wait_for

from tests.conftest import wait_status, web_body
from tui.app import ConsoleApp
from tui.client import ApiError
from tui.formatting import plain, visible
from tui.screens.message import MessageScreen
from tui.screens.service import ServiceScreen

MESSAGE = "rolled [/] out [bold]x[/bold] [link=https://evil.example]here[/link] :smile:"
OSC52 = "\x1b]52;c;SGVsbG8=\x07"  # "write 'Hello' to the clipboard"
CLEAR = "\x1b[2J\x1b[H"
# Control characters Textual's own output never contains (it writes ESC only for its own CSI sequences).
FOREIGN_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1a\x1c-\x1f\x7f-\x9f]|\x1b\]|\x1b\[2J")


def screen_text(app: ConsoleApp) -> str:
    """The screen as the terminal would show it, one line per row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def terminal_output(app: ConsoleApp) -> str:
    """What the console writes to a real terminal to draw the current screen (headless tests write
    nothing, so the same rendering call the driver output comes from is made here)."""
    return app.screen._compositor.render_full_update().render_segments(app.console)


def tricky_service():
    return _service("tricky", "nginx:1.27", 1, "active", MESSAGE, "127.77.0.9", 60, 1,
                    Labels={"k": "[/]"}, Env=["A=[bold]x"], Cmd=["echo", "[red]"], Entrypoint=["/bin/sh", "-c"])


def test_visible_shows_every_control_character_and_keeps_the_rest():
    assert visible(f"copy {OSC52} clear {CLEAR}") == "copy ␛]52;c;SGVsbG8=␇ clear ␛[2J␛[H"
    assert visible("a\rb\x08c\x00d\x7fe\x9b31mf") == "a␍b␈c␀d␡e\\x9b31mf"
    assert visible("one\ntwo") == "one␊two" and visible("one\ntwo", newlines=True) == "one\ntwo"
    assert visible("a\tb") == "a       b"
    assert visible("[/] [bold]x ünïcode → ✓") == "[/] [bold]x ünïcode → ✓"
    assert all(ch.isprintable() for ch in visible("".join(map(chr, range(0xA0)))))
    text = plain("[/] [bold]x")
    assert text.plain == "[/] [bold]x" and not text.spans


async def test_markup_in_a_services_values_shows_literally_and_crashes_nothing():
    client = FakeClient([tricky_service(), *sample_services()[:1]])

    async def refuse(name, **changes):
        raise ApiError(400, "Replicas: '[/]' is not [bold]a number[/bold]")

    client.update_service = refuse  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: NOW)
    async with app.run_test(size=(160, 36), notifications=True) as pilot:
        await wait_for(pilot, lambda: "tricky" in app.screen.query_one("#services", DataTable).rows, 5, "the row")
        assert cell(pilot, "#services", "tricky", "Message") == MESSAGE
        app.screen.query_one("#services").select_name("tricky")
        await pilot.pause()
        assert MESSAGE in screen_text(app)  # the row and the detail line under the table

        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)
        assert MESSAGE in screen_text(app)
        await pilot.press("escape")

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ServiceScreen), 5, "the service view")
        assert MESSAGE in screen_text(app)  # the summary
        await pilot.press("3")
        await pilot.pause()
        assert cell(pilot, "#spec-table", "Labels", "Value") == "k=[/]"
        assert cell(pilot, "#spec-table", "Env", "Value") == "A=[bold]x"
        assert cell(pilot, "#spec-table", "Cmd", "Value") == "echo '[red]'"
        shown = screen_text(app)
        assert "k=[/]" in shown and "A=[bold]x" in shown and "echo '[red]'" in shown

        await pilot.press("s")  # the server's answer (with markup characters) becomes a notification
        await pilot.pause()
        await type_into(pilot, "#Replicas", "2")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "'[/]' is not [bold]a number[/bold]" in screen_text(app), 5, "the notification")
        assert app.is_running and app._exception is None


async def test_escape_sequences_in_log_lines_show_as_text_and_never_reach_the_terminal():
    lines = [
        f"{_at(30)} quiet-abcde | copy {OSC52} done",
        f"{_at(20)} quiet-abcde | clear {CLEAR} home",
        f"{_at(10)} quiet-abcde | back\x08\x08space cr\rover c1\x9b31m del\x7f bell\x07",
    ]
    client = FakeClient([_service("quiet", "nginx:1.27", 1, "active", "Scaling complete", "127.77.0.8", 60, 1)])

    async def follow_logs(name, container=None, tail=200):
        for line in lines:
            yield line
        await asyncio.Event().wait()

    client.follow_logs = follow_logs  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ServiceScreen), 5, "the service view")
        await pilot.press("2")
        log = app.screen.query_one("#log", RichLog)
        await wait_for(pilot, lambda: len(log.lines) == 3, 5, "the three lines")
        shown = [strip.text for strip in log.lines]
        assert shown[0].endswith("quiet-abcde │ copy ␛]52;c;SGVsbG8=␇ done")
        assert shown[1].endswith("quiet-abcde │ clear ␛[2J␛[H home")
        assert shown[2].endswith("quiet-abcde │ back␈␈space cr␍over c1\\x9b31m del␡ bell␇")
        screen = screen_text(app)
        assert "copy ␛]52;c;SGVsbG8=␇ done" in screen and "clear ␛[2J␛[H home" in screen
        output = terminal_output(app)
        assert "SGVsbG8=" in output  # the line is drawn...
        assert not FOREIGN_CONTROLS.search(output), FOREIGN_CONTROLS.search(output)  # ...none of its controls

        await type_into(pilot, "#log-search", "␛[2J")  # searching finds what is shown
        await wait_for(pilot, lambda: len(log.lines) == 1, 5, "the one matching line")
        assert log.lines[0].text.endswith("clear ␛[2J␛[H home")
        await type_into(pilot, "#log-search", "[/]")  # markup characters that match nothing
        await wait_for(pilot, lambda: "No line matches “[/]”." in screen_text(app), 5, "the note")
        assert app.is_running and app._exception is None


async def test_a_replica_writing_escape_sequences_shows_them_as_text(backend, api):
    printf = "printf 'copy \\033]52;c;SGVsbG8=\\007 clear \\033[2J cr\\rover\\n'"
    created = await api.post("/services/create", json=web_body("esc", 1, Cmd=["sh", "-c", f"{printf}; exec /bin/serve"]))
    assert created.status_code == 201, created.text
    await wait_status(api, "esc", "active", 60)
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: "esc" in app.screen.query_one("#services", DataTable).rows, 10, "the row")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ServiceScreen), 5, "the service view")
        await pilot.press("2")
        log = app.screen.query_one("#log", RichLog)
        expected = "│ copy ␛]52;c;SGVsbG8=␇ clear ␛[2J cr␍over"  # labelled, one line: not cut at the CR
        await wait_for(pilot, lambda: any(s.text.endswith(expected) for s in log.lines), 30, "the line")
        output = terminal_output(app)
        assert "SGVsbG8=" in output and not FOREIGN_CONTROLS.search(output)
