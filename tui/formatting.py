"""How the console writes values: ages, uptimes, addresses, replica counts and status colours — and
how any string from the backend or the engine reaches the screen (`plain`, `visible`).

Pure functions of their inputs (the time "now" is passed in), so screens and snapshot tests agree.

Terminal safety: names, images, messages, labels, env, commands and log lines are data, never markup
and never terminal control. Textual parses a `str` given to a Static, Label, DataTable cell or
notification as markup (`[/]` raises, `[bold]` styles), and Rich passes ESC through to the terminal (a
log line with `ESC]52;...` would write the operator's clipboard, `ESC[2J` clear the screen). So every such
string goes through `plain()` (a `Text`, never parsed) or `visible()` (control characters shown as
stand-ins: ESC as ␛, BEL as ␇, CR as ␍, the C1 control CSI as \\x9b).
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text

from backend.models import ContainerInfo, Service

DASH = "—"
TAB_SIZE = 8

# C0 controls as their Unicode control pictures (U+2400 + code: ESC → ␛), DEL as ␡, the C1 controls
# (which some terminals obey like ESC sequences) as \x80..\x9f. Each a printable, one-cell stand-in
# (C1: four cells), so what a line says is shown and nothing reaches the terminal as a control.
_STAND_INS: dict[int, str] = {
    **{code: chr(0x2400 + code) for code in range(0x20)},
    0x7F: "\u2421",
    **{code: f"\\x{code:02x}" for code in range(0x80, 0xA0)},
}
_VISIBLE = str.maketrans(_STAND_INS)
_VISIBLE_KEEP_NEWLINES = str.maketrans({code: text for code, text in _STAND_INS.items() if code != 0x0A})

STATUS_STYLE = {
    "active": "bold green",
    "error": "bold red",
    "degraded": "bold #e08000",
    "created": "yellow",
    "scaling": "yellow",
    "updating": "yellow",
    "deleting": "dim",
}
STATE_STYLE = {"running": "green", "restarting": "yellow", "created": "yellow", "exited": "red", "dead": "red"}
HEALTH_STYLE = {"UP": "bold green", "DOWN": "bold red", "starting": "yellow"}


def visible(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character shown as a visible stand-in (ESC → ␛, BEL → ␇, CR → ␍):
    what a value says, never what it would make a terminal do. Tabs become spaces; line breaks stay
    when `newlines` (multi-line text such as a whole message), else they show as ␊."""
    if "\t" in text:
        text = text.expandtabs(TAB_SIZE)
    return text.translate(_VISIBLE_KEEP_NEWLINES if newlines else _VISIBLE)


def plain(text: str, style: str = "", *, newlines: bool = False) -> Text:
    """A string from the backend or the engine, for any widget: a `Text` (never parsed as markup)
    with its control characters made visible (see `visible`)."""
    return Text(visible(text, newlines=newlines), style=style)


def parse_time(value: str) -> datetime | None:
    """RFC 3339 (nanoseconds allowed, as Docker and the backend write it) → aware datetime."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """A short human duration: 42s, 5m, 3h, 2d (with a second unit when it matters: 1h05m)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" if minutes >= 10 or not seconds else f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h" if hours >= 10 or not minutes else f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d" if days >= 10 or not hours else f"{days}d{hours:02d}h"


def since(value: str, now: datetime) -> str:
    when = parse_time(value)
    return duration((now - when).total_seconds()) if when else DASH


def own_address(service: Service) -> str:
    """IP:ServicePort (the service's own address, without the floating IP)."""
    return f"{service.IP}:{service.ServicePort}" if service.IP else f"{DASH}:{service.ServicePort}"


def address(service: Service) -> str:
    """IP:ServicePort, plus the floating IP when one is attached."""
    main = own_address(service)
    return f"{main} {service.FIP}" if service.FIP else main


def copyable_address(service: Service) -> str:
    host = service.FIP or service.IP
    return f"{host}:{service.ServicePort}" if host else ""


def replicas_up(service: Service, containers: list[ContainerInfo] | None) -> int:
    """How many replicas serve: UP as the balancer sees it; running ones before there is a balancer."""
    if containers is None:
        return len(service.Containers or [])
    if any(c.Health for c in containers):
        return sum(1 for c in containers if c.Health == "UP")
    return sum(1 for c in containers if c.State == "running")


def replicas_text(service: Service, containers: list[ContainerInfo] | None) -> Text:
    up = replicas_up(service, containers)
    style = "green" if up >= service.Replicas else ("red" if up == 0 and service.Status != "created" else "yellow")
    return Text(f"{up}/{service.Replicas}", style=style)


def status_text(status: str) -> Text:
    return plain(status or DASH, STATUS_STYLE.get(status, ""))


def state_text(state: str) -> Text:
    return plain(state or DASH, STATE_STYLE.get(state, ""))


def health_text(health: str, since_value: str = "", now: datetime | None = None) -> Text:
    """UP / DOWN / starting as the balancer sees it, with how long it has been so ("UP 2m")."""
    text = plain(health or DASH, HEALTH_STYLE.get(health, "dim"))
    if health and since_value and now is not None and parse_time(since_value) is not None:
        text.append(f" {since(since_value, now)}", style="dim")
    return text


def short_id(container_id: str) -> str:
    return container_id[:12]


def format_bytes(value: float | int | None) -> str:
    """1.5 KiB, 12.3 MiB, 512 MiB, 2.0 GiB: one decimal below 100, none above."""
    if value is None:
        return DASH
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            if unit == "B":
                return f"{size:.0f} B"
            return f"{size:.1f} {unit}" if size < 99.95 else f"{size:.0f} {unit}"
        size /= 1024
    return DASH


BAR_FULL, BAR_EMPTY = "\u2588", "\u2591"  # █ and ░: plain text, drawn the same in a terminal and in the CLI


def traffic_bar(share: float, width: int) -> str:
    """A replica's share of the traffic (0..1) as a bar of `width` cells, e.g. "███░░░░░░░"; a share
    above 0 shows at least one full cell, so a replica that got anything is told apart from none."""
    fraction = min(1.0, max(0.0, share))
    full = round(fraction * width)
    if fraction > 0 and full == 0:
        full = 1
    return BAR_FULL * full + BAR_EMPTY * (width - full)


def share_text(share: float) -> str:
    """A share as a percentage with one decimal: "33.3%"."""
    return f"{min(1.0, max(0.0, share)) * 100:.1f}%"


def cpu_text(percent: float | None) -> str:
    """Percent of one CPU, as `docker stats` shows it (100% = one CPU busy)."""
    if percent is None:
        return DASH
    return f"{percent:.1f}%" if percent < 99.95 else f"{percent:.0f}%"


def memory_text(used: int | None, limit: int | None, wide: bool = False) -> str:
    """Memory in use; when wide, also of how much and the share ("45.2 MiB / 512 MiB (9%)")."""
    if used is None:
        return DASH
    text = format_bytes(used)
    if wide and limit:
        text += f" / {format_bytes(limit)} ({used / limit * 100:.0f}%)"
    return text


def shell_line(words: list[str] | None) -> str:
    """A list of words back to a line the form's shell-like field takes."""
    import shlex

    return shlex.join(words) if words else ""
