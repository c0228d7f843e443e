"""`ListEditor` and `KeyValueEditor`: edit a list of strings, or of key=value pairs, one per row.

There is always one empty row at the end to type a new item into; ✕ removes a row. `value` gives the
non-empty items (KeyValueEditor: "key=value" strings) and can be set. Any edit posts `Changed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label


class _Row(Horizontal):
    def __init__(self, pair: bool, key: str = "", value: str = "", placeholders: tuple[str, str] = ("", "")) -> None:
        super().__init__(classes="editor-row")
        self.pair = pair
        self._initial = (key, value)
        self._placeholders = placeholders

    def compose(self) -> ComposeResult:
        key, value = self._initial
        if self.pair:
            yield Input(key, placeholder=self._placeholders[0], classes="editor-key", compact=True)
            yield Label("=", classes="editor-eq")
            yield Input(value, placeholder=self._placeholders[1], classes="editor-value", compact=True)
        else:
            yield Input(key, placeholder=self._placeholders[0], classes="editor-item", compact=True)
        yield Button("✕", classes="editor-remove", compact=True, tooltip="remove this row")

    @property
    def text(self) -> str:
        inputs = list(self.query(Input))
        if self.pair:
            key, value = inputs[0].value, inputs[1].value
            return f"{key}={value}" if key or value else ""
        return inputs[0].value.strip()

    @property
    def empty(self) -> bool:
        return all(not i.value for i in self.query(Input))


class ListEditor(Vertical):
    """Rows of single values (Volumes, SecurityGroups)."""

    pair = False

    @dataclass
    class Changed(Message):
        editor: ListEditor

        @property
        def control(self) -> ListEditor:
            return self.editor

    def __init__(self, *, id: str, placeholder: str = "", value_placeholder: str = "", value: list[str] | None = None) -> None:
        super().__init__(id=id, classes="list-editor")
        self._placeholders = (placeholder, value_placeholder)
        self._initial = list(value or [])

    def compose(self) -> ComposeResult:
        for item in self._initial:
            yield self._make_row(item)
        yield self._make_row("")

    def _make_row(self, item: str) -> _Row:
        if self.pair:
            key, _, value = item.partition("=")
            return _Row(True, key, value, self._placeholders)
        return _Row(False, item, "", self._placeholders)

    @property
    def value(self) -> list[str]:
        return [row.text for row in self.query(_Row) if row.text]

    @value.setter
    def value(self, items: list[str] | dict[str, str] | None) -> None:
        if isinstance(items, dict):
            items = [f"{k}={v}" for k, v in items.items()]
        self.remove_children()
        self.mount_all([*(self._make_row(i) for i in items or []), self._make_row("")])
        self.call_after_refresh(self.post_message, self.Changed(self))

    @on(Input.Changed)
    def _edited(self, event: Input.Changed) -> None:
        event.stop()
        rows = list(self.query(_Row))
        if rows and not rows[-1].empty:
            self.mount(self._make_row(""))
        self.post_message(self.Changed(self))

    @on(Input.Submitted)
    def _next(self, event: Input.Submitted) -> None:
        event.stop()
        self.screen.focus_next()

    @on(Button.Pressed, ".editor-remove")
    def _remove(self, event: Button.Pressed) -> None:
        event.stop()
        row = event.button.parent
        rows = list(self.query(_Row))
        if isinstance(row, _Row):
            if row is rows[-1]:
                for box in row.query(Input):
                    box.value = ""
            else:
                row.remove()
        self.call_after_refresh(self.post_message, self.Changed(self))


class KeyValueEditor(ListEditor):
    """Rows of key = value (Labels, Env); `value` is a list of "key=value" strings."""

    pair = True
