"""`CreateServiceScreen`: the create form — one control per field of the create request.

Every control's id is its field's name (`#Name`, `#Image`, `#Replicas`, ...). As the operator types,
the would-be request is validated with the backend's own `ServiceSpec` model and each problem is
shown under its field (once the field was touched; all of them on a blocked submit). The server's
answer lands the same way: 400 per field, 409 on Name. Image completes from the images the engine
has (`GET /images`, read once as the form opens; `right` or `tab` takes the suggestion). `ctrl+s`
submits, `escape` cancels; the screen answers the created `Service`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.events import DescendantBlur
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, Label, Select, Static, Switch

from backend.models import (
    ALGORITHMS,
    COMMON_STOP_SIGNALS,
    CONTAINER_SIZES,
    PROTOCOLS,
    ServiceSpec,
    describe_size,
    field_errors,
)
from backend.settings import DEMO_IMAGE
from tui.client import ApiError
from tui.formatting import plain
from tui.messages import LimitsChanged
from tui.screens.base import Banner, ConsoleScreen
from tui.widgets.form.field_row import FieldRow
from tui.widgets.form.list_editor import KeyValueEditor, ListEditor
from tui.widgets.form.suggesting_input import SuggestingInput

log = logging.getLogger(__name__)

INT_FIELDS = ("ServicePort", "ContainerPort", "Replicas", "HealthCheckInterval", "HealthCheckFall", "HealthCheckRise")
TEXT_FIELDS = ("Name", "Image", "WorkingDir", "Entrypoint", "Cmd")
SELECT_FIELDS = ("ContainerSize", "Protocol", "Algorithm", "StopSignal", "NetMode")
SWITCH_FIELDS = ("Stdin", "Tty", "SessionAffinity")
LIST_FIELDS = ("Env", "Volumes", "Labels", "SecurityGroups")
REQUIRED = ("Name", "Image", "ServicePort", "Replicas")
IMAGE_CHOICES = 500  # the most image references the Image field completes from (the route's maximum)

PROTOCOL_LABELS = {
    "tcp": "tcp — TCP proxy",
    "http": "http — HTTP proxy",
    "https": "https — TLS passed through",
    "httpsTerm": "httpsTerm — TLS ended at the balancer",
}
ALGORITHM_LABELS = {
    "roundrobin": "roundrobin — each replica in turn",
    "leastconn": "leastconn — fewest connections",
    "source": "source — by client address",
}

SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("Service", ("Name", "Image", "Replicas", "ContainerSize")),
    ("Network", ("ServicePort", "ContainerPort", "Protocol", "SSLCert", "Algorithm", "SessionAffinity", "NetMode")),
    ("Health checks", ("HealthCheckInterval", "HealthCheckFall", "HealthCheckRise")),
    ("Container", ("Entrypoint", "Cmd", "WorkingDir", "Env", "Volumes", "StopSignal", "Tty", "Stdin")),
    ("Metadata", ("Labels", "SecurityGroups")),
]
FIELD_ORDER = [f for _, fields in SECTIONS for f in fields]

HELP_OVERRIDES = {
    "SSLCert": "Path of a PEM file (certificate chain + private key); only with Protocol httpsTerm",
    "Entrypoint": "A shell-like line, e.g. /bin/sh -c 'exec httpd -f'; empty: the image's",
    "Cmd": "A shell-like line, e.g. httpd -f -p 8080; empty: the image's",
    "Env": "VAR = value, one per row",
    "Labels": "key = value, one per row",
    "Volumes": "volume_name:/container/path[:ro], one per row; named volumes only",
    "ContainerPort": "Port the replicas listen on; follows ServicePort until you change it",
    "Replicas": "Number of replicas (1-{max})",
}
PLACEHOLDERS = {
    "Name": "e.g. web (a DNS label)",
    "Image": f"e.g. {DEMO_IMAGE}",  # the demo image scripts/up builds: it exists on a set-up machine
    "Replicas": "e.g. 2",
    "ServicePort": "e.g. 80",
    "WorkingDir": "e.g. /app (empty: the image's)",
    "SSLCert": "e.g. ~/certs/site.pem",
}


def _help(field: str, max_replicas: int) -> str:
    text = HELP_OVERRIDES.get(field) or ServiceSpec.model_fields[field].description or ""
    return text.replace("{max}", str(max_replicas))


def _default(field: str) -> Any:
    info = ServiceSpec.model_fields[field]
    return None if info.is_required() else info.default


class CreateServiceScreen(ConsoleScreen):
    BINDINGS = [
        Binding("ctrl+s", "submit", "Create", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__(id="create-screen")
        self.touched: set[str] = set()
        self.server_errors: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.container_port_edited = False
        self._syncing_port = False
        self._cert_cache: tuple[str, float, str] | None = None
        self.submitting = False
        self._summary_text: str | None = None

    # -- building the form -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        max_replicas = getattr(self.app, "max_replicas", 100)
        yield Header(icon="≡")
        yield Banner(id="banner")
        yield Label("New service  [dim]— * required · ctrl+s creates · esc cancels[/dim]", id="form-title")
        yield Static("", id="form-summary")
        with VerticalScroll(id="form"), Vertical(id="form-sections"):
            for section, fields in SECTIONS:
                with Vertical(classes="form-section"):
                    yield Label(section, classes="section-title")
                    for field in fields:
                        yield FieldRow(field, self._control(field), _help(field, max_replicas), field in REQUIRED)
        yield Footer()

    def _control(self, field: str) -> Widget:
        default = _default(field)
        if field == "Image":  # completes from the images on the engine (loaded on mount)
            return SuggestingInput("", id=field, placeholder=PLACEHOLDERS[field], compact=True)
        if field in INT_FIELDS or field in TEXT_FIELDS:
            value = "" if default is None else str(default)
            return Input(value, id=field, placeholder=PLACEHOLDERS.get(field, ""), compact=True)
        if field == "SSLCert":
            return Input("", id=field, placeholder=PLACEHOLDERS["SSLCert"], compact=True, disabled=True)
        if field == "ContainerSize":
            options = [(f"{size}  {describe_size(size)}", size) for size in CONTAINER_SIZES]
            return Select(options, value=default, id=field, allow_blank=False, compact=True)
        if field == "Protocol":
            return Select([(PROTOCOL_LABELS[p], p) for p in PROTOCOLS], value=default, id=field, allow_blank=False, compact=True)
        if field == "Algorithm":
            return Select([(ALGORITHM_LABELS[a], a) for a in ALGORITHMS], value=default, id=field, allow_blank=False,
                          compact=True)
        if field == "StopSignal":
            return Select([(s, s) for s in COMMON_STOP_SIGNALS], value=default, id=field, allow_blank=False, compact=True)
        if field == "NetMode":
            return Select([("bridge — the service's own bridge network", "bridge")], value="bridge", id=field,
                          allow_blank=False, compact=True)
        if field in SWITCH_FIELDS:
            return Switch(bool(default), id=field)
        if field in ("Env", "Labels"):
            placeholders = ("VAR", "value") if field == "Env" else ("key", "value")
            return KeyValueEditor(id=field, placeholder=placeholders[0], value_placeholder=placeholders[1])
        if field == "Volumes":
            return ListEditor(id=field, placeholder="data:/var/lib/data")
        if field == "SecurityGroups":
            return ListEditor(id=field, placeholder="group name")
        raise ValueError(f"no control for {field}")

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).display = False
        self.query_one("#form-summary", Static).display = False
        self.query_one("#Name", Input).focus()
        self._layout_for(self.size.width)
        self.validate()
        self.load_image_choices()

    @work(exclusive=True, group="images", exit_on_error=False)
    async def load_image_choices(self) -> None:
        """The engine's image references, for the Image field's completion (once, as the form opens).
        Without them (an older backend, the engine away) the field simply completes nothing."""
        try:
            references = await self.app.client.images(limit=IMAGE_CHOICES)
        except ApiError as exc:
            log.info("no image suggestions: %s", exc.message)
            return
        self.query_one("#Image", SuggestingInput).set_choices(references)

    def on_resize(self, event) -> None:
        self._layout_for(event.size.width)

    def on_limits_changed(self, message: LimitsChanged) -> None:
        """Attached remotely, the backend's own maximum arrives after connecting: check against it."""
        self.query_one("#row-Replicas", FieldRow).set_help(_help("Replicas", message.max_replicas))
        self.validate()

    def _layout_for(self, width: int) -> None:
        self.query_one("#form-sections").set_class(width >= 150, "wide")

    # -- the would-be request ----------------------------------------------------------------

    def _read_cert(self, path_text: str) -> tuple[str | None, str | None]:
        """(PEM text, problem) for the SSLCert path."""
        path = Path(os.path.expanduser(path_text.strip()))
        try:
            mtime = path.stat().st_mtime
            if self._cert_cache and self._cert_cache[:2] == (str(path), mtime):
                return self._cert_cache[2], None
            if path.stat().st_size > 1_000_000:
                return None, f"{path} is larger than 1 MB: not a PEM bundle"
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        self._cert_cache = (str(path), mtime, text)
        return text, None

    def request_body(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The create request the form stands for, and problems found before the model (file reads)."""
        body: dict[str, Any] = {}
        local: dict[str, str] = {}
        for field in FIELD_ORDER:
            control = self.query_one(f"#{field}")
            if field == "SSLCert":
                path_text = self.query_one("#SSLCert", Input).value.strip()
                if self._protocol() == "httpsTerm" and path_text:
                    text, problem = self._read_cert(path_text)
                    if problem:
                        local[field] = problem
                    else:
                        body[field] = text
                continue
            if isinstance(control, ListEditor):
                if control.value:
                    body[field] = control.value
            elif isinstance(control, Switch):
                body[field] = control.value
            elif isinstance(control, Select):
                if control.value is not Select.BLANK:
                    body[field] = control.value
            elif isinstance(control, Input):
                text = control.value.strip() if field != "WorkingDir" else control.value
                if field in INT_FIELDS:
                    if text:
                        body[field] = int(text) if text.lstrip("-").isdigit() else text
                elif field in ("Name", "Image", "Entrypoint", "Cmd"):
                    if text:
                        body[field] = text
                else:
                    body[field] = text
        return body, local

    def _protocol(self) -> str:
        return str(self.query_one("#Protocol", Select).value)

    def validate(self) -> dict[str, str]:
        """Check the form with the backend's model; show the problems of touched fields."""
        body, local = self.request_body()
        errors = self._model_errors(body)
        if errors:
            # The model's cross-field checks (SSLCert vs Protocol) only run once every field is valid:
            # run them again with stand-ins for the fields that are not, so they show up now too.
            stand_ins = {"Name": "x", "Image": "x", "ServicePort": 80, "Replicas": 1}
            retry = {k: v for k, v in body.items() if k not in errors}
            retry.update({k: v for k, v in stand_ins.items() if k in errors or k not in retry})
            for field, message in self._model_errors(retry).items():
                errors.setdefault(field, message)
        for field, problem in local.items():
            errors[field] = problem
        for field, problem in self.server_errors.items():
            errors.setdefault(field, problem)
        self.errors = errors
        for row in self.query(FieldRow):
            shown = errors.get(row.field) if row.field in self.touched else None
            row.show_error(shown)
        if not errors:
            self._summary(None)
        return errors

    def _model_errors(self, body: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        try:
            ServiceSpec.model_validate(body, context={"max_replicas": getattr(self.app, "max_replicas", 100)})
        except ValidationError as exc:
            for error in field_errors(exc):
                errors.setdefault(error.field if error.field in FIELD_ORDER else "Name", error.message)
        return errors

    def _summary(self, text: str | None) -> None:
        if text == self._summary_text:
            return
        self._summary_text = text
        summary = self.query_one("#form-summary", Static)
        summary.display = bool(text)
        summary.update(plain(text or ""))

    # -- reacting to edits -------------------------------------------------------------------

    def _edited(self, field: str | None) -> None:
        if field is None:
            return
        self.touched.add(field)
        self.server_errors.pop(field, None)
        if field == "Name":
            self.server_errors.pop("Name", None)
        self.validate()

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        field = event.input.id
        if field not in FIELD_ORDER:
            return
        if field == "ServicePort" and not self.container_port_edited:
            self._syncing_port = True
            self.query_one("#ContainerPort", Input).value = event.value
        elif field == "ContainerPort":
            if self._syncing_port:
                self._syncing_port = False
                self.validate()
                return
            self.container_port_edited = bool(event.value.strip())
        self._edited(field)

    @on(Input.Submitted)
    def _input_submitted(self, event: Input.Submitted) -> None:
        self.focus_next()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        field = event.select.id
        if field == "Protocol":
            if event.value == "httpsTerm":
                self.touched.add("SSLCert")  # say at once that it needs a certificate
            cert = self.query_one("#SSLCert", Input)
            cert.disabled = event.value != "httpsTerm"
            self.query_one("#row-SSLCert").set_class(cert.disabled, "disabled")
        self._edited(field)

    @on(Switch.Changed)
    def _switch_changed(self, event: Switch.Changed) -> None:
        self._edited(event.switch.id)

    @on(ListEditor.Changed)
    def _list_changed(self, event: ListEditor.Changed) -> None:
        self._edited(event.editor.id)

    @on(DescendantBlur)
    def _left_field(self, event: DescendantBlur) -> None:
        row = next((a for a in event.widget.ancestors_with_self if isinstance(a, FieldRow)), None)
        if row is not None and row.field not in self.touched and row.field in REQUIRED:
            value = getattr(row.control, "value", "")
            if value in ("", None) and not self.submitting:
                return  # leaving an empty required field is not an error yet
            self.touched.add(row.field)
            self.validate()

    # -- submitting --------------------------------------------------------------------------

    def action_submit(self) -> None:
        if self.submitting:
            return
        self.touched.update(FIELD_ORDER)
        errors = self.validate()
        if errors:
            fields = [f for f in FIELD_ORDER if f in errors]
            self._summary(f"✗ Cannot create yet — {len(fields)} field{'s' if len(fields) > 1 else ''} need attention: "
                          f"{', '.join(fields)}")
            self.notify(f"Fix {', '.join(fields)} first", title="Not created", severity="warning", timeout=6)
            self._focus_field(fields[0])
            return
        body, _ = self.request_body()
        self.submitting = True
        self._summary(f"Creating {body['Name']}…")
        self.create(body)

    def _focus_field(self, field: str) -> None:
        control = self.query_one(f"#{field}")
        target = control if control.focusable else next(iter(control.query(Input)), control)
        target.focus()
        self.query_one(f"#row-{field}").scroll_visible()

    @work(exclusive=True, group="create", exit_on_error=False)
    async def create(self, body: dict[str, Any]) -> None:
        try:
            service = await self.app.client.create_service(body)
        except ApiError as exc:
            self.submitting = False
            self._server_said(exc)
            return
        self.submitting = False
        self.notify(f"Service {service.Name} created; provisioning…", timeout=4)
        self.dismiss(service)

    def _server_said(self, exc: ApiError) -> None:
        placed = []
        for error in exc.errors:
            field = error.field if error.field in FIELD_ORDER else None
            if field is None and exc.status == 409:
                field = "Name"
            if field:
                self.server_errors[field] = error.message
                self.touched.add(field)
                placed.append(field)
        if exc.status == 409 and not placed:
            self.server_errors["Name"] = exc.message
            self.touched.add("Name")
            placed.append("Name")
        self.validate()
        self._summary(f"✗ {exc.message}")
        self.app.report_error(exc, title="Not created")
        if placed:
            self._focus_field(next(f for f in FIELD_ORDER if f in placed))

    def action_cancel(self) -> None:
        self.dismiss(None)
