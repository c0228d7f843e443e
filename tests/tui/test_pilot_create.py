"""The create form against the real backend and Docker engine: a service created from the form turns
active in the list, live; invalid input is shown on its field and blocks the submit; 409 lands on Name."""

from __future__ import annotations

from textual.widgets import Input
from tui_helpers import cell, fill, open_form, submit_form, type_into, wait_for

from tests.conftest import WEB_IMAGE, web_body
from tui.app import ConsoleApp
from tui.screens.create import CreateServiceScreen
from tui.widgets.form.field_row import FieldRow


def error_of(app: ConsoleApp, field: str) -> str:
    return app.screen.query_one(f"#row-{field}", FieldRow).error_text


async def test_form_creates_a_service_that_turns_active_live(backend):
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_form(pilot)
        await fill(pilot, Name="formweb", Image=WEB_IMAGE, Replicas="2", ServicePort="80")
        assert app.screen.query_one("#ContainerPort", Input).value == "80"  # follows ServicePort
        await submit_form(pilot, "formweb")
        seen = set()

        def active() -> bool:
            status = cell(pilot, "#services", "formweb", "Status")
            seen.add(status)
            return status == "active" and cell(pilot, "#services", "formweb", "Up") == "2/2"

        await wait_for(pilot, active, 60, "formweb to turn active in the table")
        service = backend.get("formweb")
        assert service.Status == "active" and service.Replicas == 2 and service.ContainerPort == 80
        assert "active" in seen


async def test_invalid_value_shows_on_its_field_and_blocks_submit(backend):
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_form(pilot)
        await type_into(pilot, "#Name", "Bad_Name")
        assert "DNS label" in error_of(app, "Name")  # as typed, from the backend's model
        await type_into(pilot, "#Replicas", "0")
        assert error_of(app, "Replicas") == "✗ must be at least 1"
        assert error_of(app, "Image") == ""  # untouched fields stay quiet until a submit
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, CreateServiceScreen)  # blocked
        assert error_of(app, "Image") == "✗ is required"
        assert error_of(app, "ServicePort") == "✗ is required"
        summary = str(app.screen.query_one("#form-summary").content)
        assert "Name" in summary and "Replicas" in summary and "Image" in summary
        assert backend.list_services() == []
        # fixing the fields clears their errors
        await type_into(pilot, "#Name", "good-name")
        assert error_of(app, "Name") == ""


async def test_name_taken_lands_on_name(backend, api):
    assert (await api.post("/services/create", json=web_body("taken", 1))).status_code == 201
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_form(pilot)
        await fill(pilot, Name="taken", Image=WEB_IMAGE, Replicas="1", ServicePort="8080")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: error_of(app, "Name") != "", 20, "the 409 on Name")
        assert isinstance(app.screen, CreateServiceScreen)
        assert "taken" in error_of(app, "Name")
        assert app.focused is app.screen.query_one("#Name")
        await type_into(pilot, "#Name", "taken2")
        assert error_of(app, "Name") == ""  # editing the field clears the server's error
