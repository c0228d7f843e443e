"""`HelpScreen`: every key of the console, screen by screen (`?` opens it anywhere)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

KEYS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Everywhere", [
        ("?", "this help"),
        ("ctrl+p", "command palette: every action, and open a service by name"),
        ("q", "quit (in the form: escape first)"),
        ("esc", "back / cancel / close"),
        ("tab / shift+tab", "next / previous control"),
    ]),
    ("Services (home)", [
        ("n", "new service (the create form)"),
        ("enter", "open the highlighted service"),
        ("/", "filter by name, image, status, address or message"),
        ("m", "the highlighted service's whole message"),
        ("s / u / f / d", "scale, update image, floating IP, delete the highlighted service"),
        ("a", "copy the service's address"),
        ("↑ ↓ pgup pgdn", "move in the table; mouse: click a row, click again to open"),
    ]),
    ("Create form", [
        ("ctrl+s", "create the service (blocked, with the reasons, while a field is wrong)"),
        ("escape", "cancel"),
        ("enter", "next field"),
    ]),
    ("Service", [
        ("s", "scale: change the number of replicas"),
        ("u", "rolling update to a new image"),
        ("f", "floating IP: ↑ ↓ pick a free pool address (or Detach), or type one; enter applies"),
        ("d", "delete (asks first; can keep the containers running)"),
        ("c", "copy the highlighted container's id"),
        ("a", "copy the service's address"),
        ("1 – 6", "replicas / logs / spec / events / balancer / revisions tab (events: what happened and why, live;"
                  " balancer: each replica's share of the traffic, live)"),
        ("r", "roll back (asks first): to the highlighted revision in the revisions tab, else the last good one"),
        ("l", "logs of the highlighted replica (again: all replicas)"),
        ("/", "search the logs (in the logs tab)"),
        ("escape", "back to the services"),
    ]),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen", id="help-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="help"):
            yield Label("hyperservice — keys", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                yield Static(self._table(), id="help-table")
            yield Static("esc closes · every action is also in the command palette (ctrl+p)", classes="help")

    @staticmethod
    def _table() -> Table:
        table = Table.grid(padding=(0, 2), expand=True)
        table.add_column("key", style="bold", no_wrap=True, min_width=14)
        table.add_column("does", ratio=1)
        for index, (section, keys) in enumerate(KEYS):
            if index:
                table.add_row("", "")
            table.add_row(Text(section, style="bold underline"), "")
            for key, does in keys:
                table.add_row(key, does)
        return table

    def action_close(self) -> None:
        self.dismiss(None)
