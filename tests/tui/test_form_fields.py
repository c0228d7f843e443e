"""The create form's controls (fast, fixed data): defaults and help filled in, ContainerPort following
ServicePort, SSLCert from a file only for httpsTerm, key=value and list editors, shell-like lines —
all validated with the backend's own model and shown on their fields."""

from __future__ import annotations

import trustme
from fakes import fake_app
from textual.widgets import Input, Select, Switch
from tui_helpers import open_form, type_into

from backend.models import ServiceSpec
from tui.screens.create import FIELD_ORDER, CreateServiceScreen
from tui.widgets.form.field_row import FieldRow
from tui.widgets.form.list_editor import KeyValueEditor, ListEditor


def error_of(screen, field: str) -> str:
    return screen.query_one(f"#row-{field}", FieldRow).error_text


async def test_every_field_has_a_control_named_after_it_with_its_default():
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        form = await open_form(pilot)
        assert set(FIELD_ORDER) == set(ServiceSpec.model_fields)
        for field in FIELD_ORDER:
            form.query_one(f"#{field}")  # raises when missing
        assert form.query_one("#ContainerSize", Select).value == "s4"
        assert form.query_one("#Protocol", Select).value == "tcp"
        assert form.query_one("#Algorithm", Select).value == "roundrobin"
        assert form.query_one("#StopSignal", Select).value == "SIGTERM"
        assert form.query_one("#HealthCheckInterval", Input).value == "5"
        assert form.query_one("#HealthCheckFall", Input).value == "3"
        assert form.query_one("#HealthCheckRise", Input).value == "2"
        assert form.query_one("#Tty", Switch).value is False
        assert isinstance(form.query_one("#Env"), KeyValueEditor) and isinstance(form.query_one("#Labels"), KeyValueEditor)
        assert isinstance(form.query_one("#Volumes"), ListEditor) and isinstance(form.query_one("#SecurityGroups"), ListEditor)
        sizes = [str(prompt) for prompt, _ in form.query_one("#ContainerSize", Select)._options]
        assert "s4  512 MB, 1 CPU" in sizes and "l3  16 GB, 8 CPUs" in sizes  # memory/CPUs shown
        for row in form.query(FieldRow):
            assert row.help, row.field  # one line of help each


async def test_container_port_follows_service_port_until_edited():
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        form = await open_form(pilot)
        await type_into(pilot, "#ServicePort", "8080")
        assert form.query_one("#ContainerPort", Input).value == "8080"
        await type_into(pilot, "#ContainerPort", "9000")
        await type_into(pilot, "#ServicePort", "81")
        assert form.query_one("#ContainerPort", Input).value == "9000"
        assert form.request_body()[0]["ContainerPort"] == 9000


async def test_ssl_cert_is_read_from_a_file_and_only_for_https_term(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: typed key by key, a long one takes long
    ca = trustme.CA()
    bundle = tmp_path / "site.pem"
    cert = ca.issue_cert("site.example")
    bundle.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems) + cert.private_key_pem.bytes())
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        form = await open_form(pilot)
        assert form.query_one("#SSLCert", Input).disabled
        form.query_one("#Protocol", Select).value = "httpsTerm"
        await pilot.pause()
        assert not form.query_one("#SSLCert", Input).disabled
        assert "required for httpsTerm" in error_of(form, "SSLCert")
        await type_into(pilot, "#SSLCert", "missing.pem")
        assert "cannot read" in error_of(form, "SSLCert")
        await type_into(pilot, "#SSLCert", bundle.name)
        assert error_of(form, "SSLCert") == ""
        body, _ = form.request_body()
        assert "BEGIN CERTIFICATE" in body["SSLCert"] and "PRIVATE KEY" in body["SSLCert"]
        form.query_one("#Protocol", Select).value = "http"
        await pilot.pause()
        assert form.query_one("#SSLCert", Input).disabled and "SSLCert" not in form.request_body()[0]


async def test_editors_and_shell_lines_are_validated_on_their_fields():
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        form = await open_form(pilot)
        env = form.query_one("#Env", KeyValueEditor)
        keys = env.query(".editor-key")
        keys.first().focus()
        await pilot.press("1", "B", "A", "D")
        await pilot.pause()
        assert "not a valid variable name" in error_of(form, "Env")
        assert len(env.query(".editor-row")) == 2  # a fresh empty row to type the next one into
        env.value = ["MODE=prod", "EMPTY="]
        await pilot.pause()
        await pilot.pause()
        assert error_of(form, "Env") == ""
        form.query_one("#Volumes", ListEditor).value = ["/etc:/etc"]
        await pilot.pause()
        await pilot.pause()
        assert "host paths are not allowed" in error_of(form, "Volumes")
        form.query_one("#Labels", KeyValueEditor).value = {"team": "web"}
        await type_into(pilot, "#Cmd", "httpd -f -p '8080'")
        await type_into(pilot, "#Entrypoint", "sh -c 'unbalanced")
        assert "shell-like line" in error_of(form, "Entrypoint")
        body, _ = form.request_body()
        assert body["Env"] == ["MODE=prod", "EMPTY="] and body["Labels"] == ["team=web"]
        spec = ServiceSpec.model_validate({**body, "Name": "x", "Image": "nginx", "Replicas": 1, "ServicePort": 80,
                                           "Entrypoint": None, "Volumes": None})
        assert spec.Cmd == ["httpd", "-f", "-p", "8080"]


async def test_escape_cancels_the_form():
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await open_form(pilot)
        await type_into(pilot, "#Name", "abandoned")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CreateServiceScreen)
