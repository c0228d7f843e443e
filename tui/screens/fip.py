"""`FloatingIPDialog`: attach a floating IP to a service, or detach it.

It offers the backend's pool (`GET /fips`, read when the dialog opens): the free addresses, the one the
service holds, the ones other services hold (shown, not choosable) and "Detach". `up`/`down` walk the
choices and put the chosen one into the address box; any address can still be typed there (checked as
it is typed with the backend's `ServiceUpdate` model). `enter` answers the box's value ("" detaches),
`escape` cancels (answering is `ValueDialog`'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from backend.models import Service
from tui.client import ApiError, FloatingIP
from tui.formatting import plain, visible
from tui.screens.actions import update_problem
from tui.screens.value_dialog import ValueDialog

if TYPE_CHECKING:
    from tui.app import ConsoleApp

DETACH = "\0detach"  # the option id of "Detach" (no address looks like it)


@dataclass
class PoolLoaded(Message):
    pool: list[FloatingIP] | None
    problem: str | None = None


class Choices(OptionList, can_focus=False):
    """The pool's addresses; focus stays in the address box (typing works), `up`/`down` walk these."""


class FloatingIPDialog(ValueDialog):
    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    BINDINGS = [
        Binding("down", "walk(1)", "Next address", show=False),
        Binding("up", "walk(-1)", "Previous address", show=False),
    ]

    def __init__(self, service: Service) -> None:
        super().__init__(classes="dialog-screen")
        self.service = service
        self.pool: list[FloatingIP] | None = None

    def compose(self) -> ComposeResult:
        now = Text.assemble("attached now: ", plain(self.service.FIP, "bold")) if self.service.FIP else "none attached now"
        with Vertical(classes="dialog", id="fip-dialog"):
            yield Label(plain(f"Floating IP of {self.service.Name}"), classes="dialog-title")
            yield Static(Text.assemble(f"The service also answers on FIP:{self.service.ServicePort} — ", now, "."),
                         classes="help")
            yield Static("Reading the backend's pool…", id="fip-pool-note", classes="help")
            yield Choices(id="fip-choices")
            with Horizontal(id="fip-line"):
                yield Label("Address ", id="fip-label")
                yield Input(visible(self.service.FIP), id="FIP", placeholder="a.b.c.d from the pool (empty: detach)",
                            select_on_focus=True, compact=True)
            yield Static("", classes="help", id="FIP-note")
            yield Static("", classes="error", id="FIP-error")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="confirm", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(Choices).display = False
        self.query_one(Input).focus()
        self._problem()
        self.load_pool()

    # -- the pool ----------------------------------------------------------------------------

    @work(exclusive=True, group="fips", exit_on_error=False)
    async def load_pool(self) -> None:
        try:
            pool = await self.app.client.floating_ips()
        except ApiError as exc:
            self.post_message(PoolLoaded(None, exc.message))
            return
        self.post_message(PoolLoaded(pool))

    def on_pool_loaded(self, message: PoolLoaded) -> None:
        note = self.query_one("#fip-pool-note", Static)
        choices = self.query_one(Choices)
        self.pool = message.pool
        if message.pool is None:
            note.update(plain(f"The backend did not list its pool ({message.problem}); type an address."))
            return
        options: list[Option] = []
        for fip in message.pool:
            if fip.Service == self.service.Name:
                options.append(Option(Text.assemble(plain(fip.Address), ("  attached here", "green")), id=fip.Address))
            elif fip.Service:
                options.append(Option(Text.assemble(plain(fip.Address), plain(f"  on {fip.Service}", "dim")),
                                      id=fip.Address, disabled=True))
            else:
                options.append(Option(Text.assemble(plain(fip.Address), ("  free", "dim")), id=fip.Address))
        if self.service.FIP:
            options.append(Option(plain(f"Detach {self.service.FIP} (no floating IP)"), id=DETACH))
        free = sum(1 for fip in message.pool if not fip.Service)
        if not message.pool:
            note.update("The backend has no floating IP pool (HYPERSERVICE_FIP_POOL is empty); "
                        "you can still type an address.")
        else:
            note.update(f"Pool: {free} of {len(message.pool)} free. ↑↓ choose, or type an address.")
        choices.clear_options()
        choices.add_options(options)
        choices.highlighted = None
        choices.display = bool(options)
        self._problem()

    def action_walk(self, step: int) -> None:
        """Highlight the next (or previous) choosable option and put it into the address box."""
        choices = self.query_one(Choices)
        count = choices.option_count
        if not count:
            return
        index = choices.highlighted
        for _ in range(count):
            index = (0 if step > 0 else count - 1) if index is None else (index + step) % count
            if not choices.get_option_at_index(index).disabled:
                self._choose(index)
                return

    def _choose(self, index: int) -> None:
        choices = self.query_one(Choices)
        choices.highlighted = index
        option_id = choices.get_option_at_index(index).id or ""
        box = self.query_one(Input)
        box.value = "" if option_id == DETACH else option_id
        box.cursor_position = len(box.value)

    @on(OptionList.OptionSelected, "#fip-choices")
    def _clicked(self, event: OptionList.OptionSelected) -> None:
        self._choose(event.option_index)
        self.query_one(Input).focus()

    # -- the answer --------------------------------------------------------------------------

    def _problem(self) -> str | None:
        value = self.query_one(Input).value.strip()
        problem = update_problem("FIP", value, 100)
        error = self.query_one("#FIP-error", Static)
        error.update(plain(f"✗ {problem}") if problem else "")
        error.display = bool(problem)
        self.query_one("#FIP-note", Static).update(plain(self._note(value)) if not problem else "")
        return problem

    def _note(self, value: str) -> str:
        """What applying `value` will do, in words (never blocks: the pool may have changed)."""
        if not value:
            return f"Apply detaches {self.service.FIP}." if self.service.FIP else "Empty: nothing to detach."
        if value == self.service.FIP:
            return "Already attached: nothing to change."
        holder = next((fip.Service for fip in self.pool or [] if fip.Address == value), None)
        if self.pool is not None and holder is None:
            return f"⚠ {value} is not in the backend's pool: it will refuse it."
        if holder and holder != self.service.Name:
            return f"⚠ {value} is attached to {holder}: detach it there first."
        return f"Apply attaches {value}" + (f" instead of {self.service.FIP}." if self.service.FIP else ".")
