"""Per-replica health on the `swarm` engine, read from the edge HAProxies' logs (pure: no Docker).

Each edge node runs one task of the service's balancer (a global swarm service); its HAProxy finds the
replicas by DNS (`server-template` on `tasks.<replica service>`) and, with `option log-health-checks`,
logs on stdout every change of a slot's address and of its health (what HAProxy 2.6 logs is in
notes/haproxy-findings.md). The swarm manager relays those logs (`docker service logs --details`: each
line carries the task and node it comes from), so the health needs no access to the nodes' engines:

- `EdgeView`: one edge task's slots, each with the address DNS gave it and its health there. A slot
  whose address changes starts over as "starting" (a new task behind it); it is UP once a check passes
  with the server UP ("status: 2/2 UP"), DOWN when, after being UP, a check leaves it DOWN or HAProxy
  says it is DOWN (as on the docker engine, a replica that never came UP stays "starting"); a slot
  whose address went ("going DOWN for maintenance (No IP ...)") is forgotten. HAProxy puts a freshly
  resolved slot UP before any check ("UP/READY (resolves again)"): that is not a health verdict; and it
  logs a check only when the slot's check status changes, so a new task in a slot whose last check
  passed logs nothing when it passes too: such a slot with no DOWN line one check interval (plus
  timeout and slack) after getting its address counts as UP (`EdgeView.health_of`).
- `SwarmHealthBoard`: every edge task's view, fed with the raw log lines of the balancer service; a
  replica (a task address) is combined over the running edges conservatively (`combine`): DOWN when
  any edge sees it DOWN, UP only when every edge that has it in a slot sees it UP, "starting"
  otherwise (also when no edge has resolved it yet).
- Lines are fed again after a backend restart from the start of the logs (json-file keeps them); a
  line already taken (per edge task, by its timestamp) is skipped, so overlapping reads are harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backend import haproxy

ReplicaHealth = str  # "starting" | "UP" | "DOWN" ("" : no edge runs)

TASK_DETAIL = "com.docker.swarm.task.id"
NODE_DETAIL = "com.docker.swarm.node.id"
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ")
_IP_CHANGE = re.compile(
    r"^(?P<backend>[^\s/]+)/(?P<slot>\S+) changed its IP from (?P<old>\S+) to (?P<new>\S+) by "
)
_NO_IP = "(none)"


@dataclass(frozen=True)
class LogLine:
    """One line of `docker service logs --details --timestamps`: when (ns since the epoch), from which
    task and node, and HAProxy's message."""

    at_ns: int
    task: str
    node: str
    text: str

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.at_ns / 1e9, UTC)


def parse_log_line(line: str) -> LogLine | None:
    """`<RFC3339Nano> <k=v,k=v...> <message>` (timestamps first, then the details); None when the line
    has no timestamp or no task detail."""
    stamp = _TIMESTAMP.match(line)
    if not stamp:
        return None
    seconds, fraction, zone = stamp.groups()
    when = datetime.fromisoformat(f"{seconds}{'+00:00' if zone == 'Z' else zone}")
    at_ns = int(when.timestamp()) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))
    details, _, text = line[stamp.end():].partition(" ")
    pairs = dict(item.partition("=")[::2] for item in details.split(","))
    task = pairs.get(TASK_DETAIL, "")
    if not task:
        return None
    return LogLine(at_ns, task, pairs.get(NODE_DETAIL, ""), text.rstrip("\r\n"))


@dataclass
class SlotHealth:
    address: str
    health: ReplicaHealth
    since: datetime
    down_seen: bool = False  # a DOWN line since the address came: only a passed check makes it UP now


@dataclass
class EdgeView:
    """What one edge task's HAProxy says of its slots."""

    node: str = ""
    last_ns: int = 0  # the newest line taken
    slots: dict[str, SlotHealth] = field(default_factory=dict)
    # slot -> whether its last logged check passed; HAProxy keeps a slot's check status across address
    # changes and logs a check only when that status changes (see `health_of`)
    check_ok: dict[str, bool] = field(default_factory=dict)

    def take(self, line: LogLine) -> None:
        if line.at_ns <= self.last_ns:
            return  # already taken (an overlapping read)
        self.last_ns = line.at_ns
        self.node = line.node or self.node
        text = line.text
        moved = _IP_CHANGE.match(text)
        if moved:
            if moved.group("backend") != haproxy.BACKEND:
                return
            slot, new = moved.group("slot"), moved.group("new")
            if new == _NO_IP:
                self.slots.pop(slot, None)
            else:
                self.slots[slot] = SlotHealth(new, "starting", line.at)
            return
        if "resolves again" in text or "administratively READY" in text:
            return  # a slot given an address is put UP before any check: no verdict yet
        event = haproxy.parse_health_line(text)
        if event is None:
            return
        if not event.transition:
            self.check_ok[event.slot] = not event.detail.startswith("failed")
        current = self.slots.get(event.slot)
        if current is None:
            return  # a slot without an address (a check finishing after its task left)
        if event.state == "MAINT":
            self.slots.pop(event.slot, None)
            return
        if event.state == "DRAIN":
            return
        if event.state == "UP":
            # a failed check that leaves the server UP is no verdict for a slot not UP yet
            passed = event.transition or not event.detail.startswith("failed")
            if current.health != "UP" and passed:
                self.slots[event.slot] = SlotHealth(current.address, "UP", line.at)
        elif current.health == "UP":  # DOWN after UP; a rising slot's DOWN lines keep it "starting"
            self.slots[event.slot] = SlotHealth(current.address, "DOWN", line.at)
        else:
            current.down_seen = True

    def health_of(self, address: str, now_ns: int = 0, grace_ns: int = 0) -> SlotHealth | None:
        """The slot checking `address` (None: not resolved here). HAProxy puts a slot UP when DNS gives
        it an address and logs its first check only if the check status changes: a slot whose last
        check passed (an earlier task's) and that logged no DOWN within `grace_ns` (one check interval
        and its timeout, with slack) of getting its address has passed its first check silently: UP."""
        slot = next(((name, s) for name, s in self.slots.items() if s.address == address), None)
        if slot is None:
            return None
        name, found = slot
        started_ns = int(found.since.timestamp() * 1e9)
        if (found.health == "starting" and not found.down_seen and self.check_ok.get(name) and grace_ns
                and now_ns - started_ns >= grace_ns):
            return SlotHealth(found.address, "UP", datetime.fromtimestamp((started_ns + grace_ns) / 1e9, UTC))
        return found


def combine(views: Iterable[SlotHealth | None]) -> tuple[ReplicaHealth, datetime | None]:
    """One replica's health from every running edge's view of it (None: that edge has no slot for
    it): DOWN if any edge sees it DOWN (since the earliest); UP only if every edge that checks it sees
    it UP (since the latest); else "starting"."""
    known = [v for v in views if v is not None]
    down = [v.since for v in known if v.health == "DOWN"]
    if down:
        return "DOWN", min(down)
    if known and all(v.health == "UP" for v in known):
        return "UP", max(v.since for v in known)
    return "starting", max((v.since for v in known), default=None)


class SwarmHealthBoard:
    """Every edge task's view of one service's replicas (not thread-safe: the engine locks it)."""

    def __init__(self) -> None:
        self.edges: dict[str, EdgeView] = {}

    def feed(self, lines: Iterable[str]) -> None:
        for raw in lines:
            line = parse_log_line(raw)
            if line is not None:
                self.edges.setdefault(line.task, EdgeView()).take(line)

    def since_ns(self, running: Iterable[str], overlap_ns: int = 5_000_000_000) -> int:
        """Where the next read of the logs starts: a little before the oldest newest line of the running
        edge tasks (0, the start, when one has no line yet); duplicates are skipped."""
        marks = [self.edges[t].last_ns if t in self.edges else 0 for t in running]
        if not marks or min(marks) == 0:
            return 0
        return max(0, min(marks) - overlap_ns)

    def forget_except(self, running: Iterable[str]) -> None:
        """Drop the views of edge tasks that no longer run."""
        keep = set(running)
        self.edges = {task: view for task, view in self.edges.items() if task in keep}

    def health(
        self, address: str, running: Iterable[str], now_ns: int = 0, grace_ns: int = 0
    ) -> tuple[ReplicaHealth, datetime | None]:
        """The replica at `address` as the running edge tasks see it ("" when none runs); `now_ns` and
        `grace_ns` as `EdgeView.health_of` takes them."""
        tasks = list(running)
        if not tasks or not address:
            return "", None
        return combine(self.edges[t].health_of(address, now_ns, grace_ns) if t in self.edges else None for t in tasks)
