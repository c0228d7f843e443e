"""`LogPane`: a service's logs — one replica or all of them interleaved and labelled — following live.

A thin worker reads `logs?follow=true` and hands lines over; the pane keeps the last lines and shows
the ones matching the search box (matches highlighted). Choosing another replica restarts the stream.

A line is shown as the text it is: escape sequences and other control characters in it (a clipboard
write `ESC]52;...`, a screen clear `ESC[2J`, BEL, CR) appear as visible stand-ins (␛ ␇ ␍, see
`tui.formatting.visible`) and never reach the terminal.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, RichLog, Select, Static

from backend.models import ContainerInfo
from tui.formatting import plain, visible

if TYPE_CHECKING:
    from tui.app import ConsoleApp

MAX_LINES = 5000
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green")
FLUSH_SECONDS = 0.05


@dataclass
class LogLines(Message):
    lines: list[str]
    generation: int


class LogPane(Vertical):
    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.lines: deque[str] = deque(maxlen=MAX_LINES)
        self.search = ""
        self.source: str = ""
        self.generation = 0
        self._colors: dict[str, str] = {}
        self._sources: list[str] = []
        self._pending: list[str] = []
        self._flush_scheduled = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="log-bar"):
            yield Select([("All replicas", "")], value="", allow_blank=False, id="log-source", compact=True)
            yield Input(placeholder="/ search the logs", id="log-search", compact=True)
        yield Static("Waiting for log lines…", id="log-empty")
        yield RichLog(id="log", max_lines=MAX_LINES, wrap=False, auto_scroll=True, markup=False)

    def on_mount(self) -> None:
        self.start()

    # -- sources -----------------------------------------------------------------------------

    def set_replicas(self, replicas: list[ContainerInfo]) -> None:
        names = [r.Name for r in replicas]
        if names == self._sources:
            return
        self._sources = names
        select = self.query_one("#log-source", Select)
        options: list[tuple[Text | str, str]] = [("All replicas", "")] + [(plain(n), n) for n in names]
        if self.source and self.source not in names:
            options.append((plain(f"{self.source} (gone)"), self.source))
        with self.prevent(Select.Changed):
            select.set_options(options)
            select.value = self.source

    def choose(self, replica: str) -> None:
        select = self.query_one("#log-source", Select)
        if replica and replica not in self._sources:
            return
        select.value = replica

    @on(Select.Changed, "#log-source")
    def _source_changed(self, event: Select.Changed) -> None:
        value = "" if event.value is Select.BLANK else str(event.value)
        if value != self.source:
            self.source = value
            self.start()

    # -- following ---------------------------------------------------------------------------

    def start(self) -> None:
        self.generation += 1
        self.lines.clear()
        self._pending = []
        self.query_one(RichLog).clear()
        self._empty(f"Waiting for log lines of {self.source or 'all replicas'}…")
        self.follow(self.source, self.generation)

    @work(exclusive=True, group="logs", exit_on_error=False)
    async def follow(self, source: str, generation: int) -> None:
        async for line in self.app.client.follow_logs(self.service, source or None, tail=200):
            self._pending.append(line)
            if not self._flush_scheduled:  # lines come in bursts: draw them together
                self._flush_scheduled = True
                self.set_timer(FLUSH_SECONDS, self._flush_lines)
        self._pending.append("-- the log stream ended (replica gone?) --")
        self._flush_lines()

    def _flush_lines(self) -> None:
        self._flush_scheduled = False
        lines, self._pending = self._pending, []
        if lines:
            self.post_message(LogLines(lines, self.generation))

    def on_log_lines(self, message: LogLines) -> None:
        if message.generation != self.generation:
            return
        log = self.query_one(RichLog)
        for line in message.lines:
            self.lines.append(line)
            if self._matches(line):
                log.write(self._styled(line))
        if self.lines:
            self._empty(None if any(self._matches(line) for line in message.lines) or log.lines else f"No line matches “{self.search}”.")

    # -- searching ---------------------------------------------------------------------------

    def focus_search(self) -> None:
        self.query_one("#log-search", Input).focus()

    @on(Input.Changed, "#log-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.search = event.value
        log = self.query_one(RichLog)
        log.clear()
        shown = 0
        for line in self.lines:
            if self._matches(line):
                log.write(self._styled(line))
                shown += 1
        if self.lines:
            self._empty(None if shown else f"No line matches “{self.search}”.")

    def _matches(self, line: str) -> bool:
        return not self.search or self.search.lower() in visible(line).lower()  # as shown: ␛ finds ESC

    def _empty(self, text: str | None) -> None:
        empty = self.query_one("#log-empty", Static)
        empty.display = bool(text)
        if text:
            empty.update(plain(text))  # it may quote the search or a replica's name

    def _styled(self, line: str) -> Text:
        when, _, rest = line.partition(" ")
        who, sep, text = rest.partition(" | ")
        if not sep:
            rendered = plain(line)
        else:
            color = self._colors.setdefault(who, PALETTE[len(self._colors) % len(PALETTE)])
            clock = when[11:19] if len(when) >= 19 else when
            rendered = Text.assemble((visible(clock) + " ", "dim"), (visible(who), color), (" │ ", "dim"), visible(text))
        if self.search:
            rendered.highlight_words([self.search], style="reverse", case_sensitive=False)
        return rendered
