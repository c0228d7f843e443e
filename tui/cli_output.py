"""How the scriptable CLI (tui/cli_verbs.py) writes: aligned tables, the readable `inspect` block, any
JSON answer as a table (`events`), the `--json` dump, and the `--wait` progress line.

Pure text functions (no Textual): each takes the terminal's width and whether to colour, so they are
tested without a terminal. Every string from the backend or the engine goes through `visible()` (as in
the console): a name, a message or a label can never move the cursor, clear the screen or write the
clipboard of whoever reads the table. Colour only on a terminal, never with NO_COLOR set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.cells import cell_len

from backend.models import SERVICE_KEYS, BalancerView, ContainerInfo, Revision, Service
from tui.formatting import format_bytes, replicas_up, share_text, shell_line, traffic_bar, visible

EMPTY = "-"
GAP = "   "
ELLIPSIS = "…"
_COLOURS = {"active": "32", "error": "31", "degraded": "33", "created": "33", "scaling": "33", "updating": "33",
            "deleting": "2", "UP": "32", "DOWN": "31", "starting": "33", "running": "32", "exited": "31", "dead": "31",
            "MAINT": "33", "DRAIN": "33", "rolling": "33", "failed": "31", "rolled back": "31"}


def wants_colour(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return is_tty(stream) and not os.environ.get("NO_COLOR")


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_width(stream: TextIO) -> int | None:
    """The terminal's width when `stream` is one, else None (no truncation in a pipe or a file)."""
    return shutil.get_terminal_size((100, 24)).columns if is_tty(stream) else None


def cell(value: Any) -> str:
    """One value as a table cell: "-" when empty, lists joined, control characters made visible."""
    if value is None or value == "" or value == [] or value == {}:
        return EMPTY
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return visible(", ".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, list):
        if all(not isinstance(item, (dict, list)) for item in value):
            return visible(", ".join(str(item) for item in value))
        return visible(json.dumps(value, separators=(",", ":")))
    return visible(str(value))


def clip(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells, with an ellipsis when cut."""
    if cell_len(text) <= width:
        return text
    out = ""
    for char in text:
        if cell_len(out + char) > width - 1:
            break
        out += char
    return out + ELLIPSIS


def paint(text: str, key: str, colour: bool) -> str:
    code = _COLOURS.get(key)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, width: int | None = None,
          colour_column: int | None = None, colour: bool = False) -> str:
    """Aligned columns (cells already made safe with `cell`); on a terminal (`width`) the last
    column is cut to fit; `colour_column`'s cells are coloured by their value when `colour`."""
    body = [list(row) for row in rows]
    widths = [max([cell_len(h), *(cell_len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    # never narrower than its header: too narrow a terminal wraps rather than shows nothing
    room = None if width is None else max(cell_len(headers[-1]), width - sum(widths[:-1]) - len(GAP) * (len(widths) - 1))

    def line(row: list[str], painted: bool) -> str:
        parts = []
        for index, text in enumerate(row):
            if index == len(row) - 1:
                parts.append(text if room is None else clip(text, room))
                continue
            padding = " " * (widths[index] - cell_len(text))
            parts.append((paint(text, text, colour) if painted and index == colour_column else text) + padding)
        return GAP.join(parts).rstrip()

    return "\n".join([line(list(headers), False), *(line(row, True) for row in body)])


def ready_text(service: Service, replicas: list[ContainerInfo] | None) -> str:
    return f"{replicas_up(service, replicas)}/{service.Replicas}"


def address_text(service: Service) -> str:
    return f"{service.IP}:{service.ServicePort}" if service.IP else EMPTY


SERVICE_COLUMNS = ("NAME", "STATUS", "REPLICAS", "IMAGE", "ADDRESS", "FIP", "MESSAGE")


def service_row(service: Service, replicas: list[ContainerInfo] | None) -> list[str]:
    return [cell(service.Name), cell(service.Status), ready_text(service, replicas), cell(service.Image),
            address_text(service), cell(service.FIP), cell(service.Message)]


def services_table(services: list[Service], replicas: dict[str, list[ContainerInfo]] | None, *,
                   width: int | None = None, colour: bool = False) -> str:
    rows = [service_row(s, None if replicas is None else replicas.get(s.Name, [])) for s in services]
    return table(SERVICE_COLUMNS, rows, width=width, colour_column=1, colour=colour)


REPLICA_COLUMNS = ("NAME", "ID", "STATE", "HEALTH", "ADDRESS", "IMAGE", "RESTARTS", "STARTED")


def replicas_table(replicas: list[ContainerInfo], *, width: int | None = None, colour: bool = False) -> str:
    rows = [[cell(r.Name), cell(r.Id[:12]), cell(r.State), cell(r.Health), cell(r.Address),
             cell(r.Image) + (" (outdated)" if r.Outdated else ""), str(r.Restarts), cell(r.Started)]
            for r in replicas]
    return table(REPLICA_COLUMNS, rows, width=width, colour_column=2, colour=colour)


REVISION_COLUMNS = ("REVISION", "IMAGE", "CREATED", "BY", "OUTCOME", "REASON")


def revisions_table(revisions: list[Revision], *, width: int | None = None, colour: bool = False) -> str:
    """The service's revisions, newest first, as the API lists them."""
    rows = [[str(r.Number), cell(r.Image), cell(r.Created), cell(r.By), cell(r.Outcome.value), cell(r.Reason)]
            for r in revisions]
    return table(REVISION_COLUMNS, rows, width=width, colour_column=4, colour=colour) if rows else "(no revisions)"


BALANCER_COLUMNS = ("SLOT", "REPLICA", "STATE", "CHECK", "SESSIONS", "TOTAL", "RATE/S", "SHARE", "5XX", "IN", "OUT", "TRAFFIC")
FRONT_COLUMNS = ("FRONT", "ADDRESS", "SESSIONS", "TOTAL", "RATE/S", "5XX", "IN", "OUT")
BAR_WIDTH = 20


def balancer_table(view: BalancerView, *, width: int | None = None, colour: bool = False) -> str:
    """The balancer's view: its fronts, then one row per replica with a bar of its traffic share."""
    fronts = [[cell(f.Front), cell(f.Address), str(f.Sessions), str(f.Total), str(f.Rate), str(f.Http5xx),
               format_bytes(f.BytesIn), format_bytes(f.BytesOut)] for f in view.Fronts]
    replicas = [[cell(r.Slot), cell(r.Replica), cell(r.State),
                 (cell(r.Check) + f" ({r.CheckMs} ms)") if r.Check else EMPTY, str(r.Sessions), str(r.Total),
                 str(r.Rate), share_text(r.Share), str(r.Http5xx), format_bytes(r.BytesIn), format_bytes(r.BytesOut),
                 traffic_bar(r.Share, BAR_WIDTH)] for r in view.Replicas]
    parts = [table(FRONT_COLUMNS, fronts, width=width) if fronts else "(no balancer answered)"]
    parts.append(table(BALANCER_COLUMNS, replicas, width=width, colour_column=2, colour=colour)
                 if replicas else "(no replica in the balancer)")
    return "\n\n".join(parts)


def _block_value(key: str, value: Any) -> list[str]:
    """A field of the service as the lines of its value (lists: one item per line)."""
    if key in ("Cmd", "Entrypoint"):
        return [visible(shell_line(value)) or EMPTY]
    if key == "Labels" and value:
        return [visible(f"{k}={v}") for k, v in value.items()]
    if isinstance(value, list) and value:
        return [visible(str(item)) for item in value]
    return [cell(value)]


def service_block(service: Service, replicas: list[ContainerInfo] | None, *, width: int | None = None,
                  colour: bool = False) -> str:
    """`inspect` without --json: every field of the service object, one per line, then its replicas."""
    data = service.model_dump()
    keys = [k for k in SERVICE_KEYS if k not in ("Containers", "SSLCert")]
    label_width = max(len(k) for k in keys) + 2
    lines = []
    for key in keys:
        values = _block_value(key, data[key])
        if key == "Status":
            values = [paint(values[0], data[key], colour)]
        if key == "Replicas" and replicas is not None:
            values = [f"{data[key]} ({ready_text(service, replicas)} ready)"]
        lines.append(f"{key + ':':<{label_width}}{values[0]}")
        lines.extend(" " * label_width + more for more in values[1:])
    if replicas is not None:
        lines.append("")
        lines.append(replicas_table(replicas, width=width, colour=colour) if replicas else "No replicas.")
    return "\n".join(lines)


def _is_blank(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def any_table(value: Any, *, width: int | None = None) -> str:
    """Any JSON answer as text: a list of objects as a table (columns: every key met, in order; a column
    empty in every row left out), an object as `Key: value` lines with its lists as tables below."""
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(isinstance(item, dict) for item in value):
            columns: list[str] = []
            for item in value:
                columns.extend(k for k in item if k not in columns)
            columns = [c for c in columns if not all(_is_blank(item.get(c)) for item in value)]
            if not columns:
                return "(none)"
            rows = [[cell(item.get(c)) for c in columns] for item in value]
            return table([visible(c.upper()) for c in columns], rows, width=width)
        return "\n".join(cell(item) for item in value)
    if isinstance(value, dict):
        scalars = [(k, v) for k, v in value.items() if not isinstance(v, (list, dict))]
        nested = [(k, v) for k, v in value.items() if isinstance(v, (list, dict))]
        parts = []
        if scalars:
            label_width = max(len(k) for k, _ in scalars) + 2
            parts.append("\n".join(f"{visible(k + ':'):<{label_width}}{cell(v)}" for k, v in scalars))
        for key, inner in nested:
            parts.append(f"{visible(key)}:\n{any_table(inner, width=width)}")
        return "\n\n".join(parts)
    return cell(value)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


class Progress:
    """The `--wait` progress: on a terminal one line rewritten in place (carriage return, cut to the
    width so it never wraps); elsewhere a plain line each time the text changes."""

    def __init__(self, stream: TextIO, tty: bool | None = None, width: int | None = None) -> None:
        self.stream = stream
        self.tty = is_tty(stream) if tty is None else tty
        self.width = width
        self._last = ""
        self._written = ""  # the line on the terminal now
        self._shown = False

    def show(self, text: str, elapsed: str = "") -> None:
        if self.tty:
            width = self.width or shutil.get_terminal_size((100, 24)).columns
            line = clip(f"{text} ({elapsed})" if elapsed else text, max(10, width - 1))
            if line != self._written or not self._shown:
                self.stream.write("\r" + line + "\x1b[K")
                self.stream.flush()
                self._written, self._shown = line, True
        elif text != self._last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last = text

    def end(self) -> None:
        """Clear the rewritten line (a terminal), so what follows starts on a clean line."""
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
