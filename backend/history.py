"""Each service's history: what happened to it and why, kept in the store and told on the change feed.

`History.record` adds one entry (a status change, a replica's start, exit or replacement, a health
change, an operator action) to the store — one small INSERT, bounded per service, on whatever thread
noticed it, never the API's event loop — and publishes it on the change feed as
`{"Type": "history", "Action": <entry type>, "Service": <name>, "Event": {...the entry}}`.

`History.on_docker_event` turns Docker's container events into replica entries. An OOM kill reaches us
as `oom` then `die` (exitCode 137) on the same container; a `die` with 137 and no `oom` before it asks
the engine (the container's State.OOMKilled). The `die` of a replica the reconciler is removing is not
trouble: the reconciler records the removal itself, with its reason (`expect_removal`).

`summarise` (pure) groups recent trouble by cause, for the top of the console's Events tab and the
answer to "why is it 2/3?": "1 replica OOM-killed 3 times in the last 5 min".
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Unpack

from backend.docker_driver import LABEL_ROLE, LABEL_UID, ROLE_REPLICA
from backend.engine import Engine
from backend.events import EventHub
from backend.models import EventGroup, ServiceEvent, ServiceHistory
from backend.store import EventEntry, Store

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 300  # seconds back the summary looks
TRACK_SECONDS = 3600.0  # how long an `oom`, a `die` or an expected removal is remembered per container
OOM_EXIT_CODE = 137  # SIGKILL: what an OOM kill (and a forced stop) ends with

# The causes the summary groups, most telling first (an OOM kill also makes the replica DOWN).
CAUSE_ORDER = ("OOM-killed", "exited", "replaced", "went DOWN")


class History:
    def __init__(
        self, store: Store, hub: EventHub, engine: Engine, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.hub = hub
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        # container id -> when (monotonic): its `oom` came; it died (its next start is a restart); the
        # reconciler is removing it (its `die` is expected).
        self._oom: dict[str, float] = {}
        self._died: dict[str, float] = {}
        self._removing: dict[str, float] = {}

    def record(self, **entry: Unpack[EventEntry]) -> ServiceEvent | None:
        """Add an entry to the history of service `name` (or instance `uid`) and tell the change feed.
        Nothing happens for a service the store does not know (deleted meanwhile, or not ours), nor,
        with `if_changed`, when the replica's latest entry of this type says the same already."""
        try:
            stored = self.store.add_event(at=self.clock(), **entry)
        except sqlite3.Error as exc:  # the store closed under a late event: history is not worth a crash
            log.debug("history entry %s/%s of %s not recorded: %s", entry["type"], entry["action"],
                      entry.get("name") or entry.get("uid"), exc)
            return None
        if stored is None:
            return None
        service, event = stored
        self.hub.publish("history", event.Type, Service=service, Event=event.model_dump())
        return event

    def read(self, name: str, limit: int = 100, window: int = DEFAULT_WINDOW) -> ServiceHistory | None:
        """The service's last `limit` entries (oldest first) and its trouble of the last `window`
        seconds grouped by cause; None if no such service."""
        events = self.store.events(name)
        if events is None:
            return None
        return ServiceHistory(
            Name=name, Window=window, Summary=summarise(events, self.clock(), window), Events=events[-limit:]
        )

    # -- Docker's container events -----------------------------------------------------------

    def expect_removal(self, container_ids: Iterable[str]) -> None:
        """The reconciler is about to remove these replicas: their `die` is no trouble."""
        now = time.monotonic()
        with self._lock:
            for container_id in container_ids:
                self._removing[container_id] = now
            _forget_old(self._removing, now)

    def on_docker_event(self, event: dict[str, Any]) -> None:
        """A container event of this installation (any role; only replicas' matter here)."""
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        if attributes.get(LABEL_ROLE) != ROLE_REPLICA:
            return
        container_id = str(actor.get("ID") or "")
        uid = str(attributes.get(LABEL_UID) or "")
        replica = str(attributes.get("name") or container_id[:12])
        action = str(event.get("Action") or event.get("status") or "").split(":")[0]
        if not container_id or not uid:
            return
        now = time.monotonic()
        if action == "oom":
            with self._lock:
                self._oom[container_id] = now
                _forget_old(self._oom, now)
        elif action == "destroy":
            with self._lock:
                for tracked in (self._oom, self._died, self._removing):
                    tracked.pop(container_id, None)
        elif action == "die":
            with self._lock:
                oom = self._oom.pop(container_id, None) is not None
                expected = container_id in self._removing
                if not expected:
                    self._died[container_id] = now
                    _forget_old(self._died, now)
            if expected:
                return
            exit_code = _int(attributes.get("exitCode"))
            if not oom and exit_code == OOM_EXIT_CODE:  # the `oom` event may come late, or not at all
                try:
                    oom = self.engine.oom_killed(container_id)
                except Exception as exc:  # the engine went away meanwhile: say what we know
                    log.debug("could not inspect %s: %s", replica, exc)
            self.record(
                uid=uid, type="replica", action="die", replica=replica, message=describe_exit(replica, exit_code, oom),
                exit_code=exit_code, oom_killed=oom,
            )
        elif action == "start":
            with self._lock:
                restarted = self._died.pop(container_id, None) is not None
            self.record(
                uid=uid, type="replica", action="restart" if restarted else "start", replica=replica,
                message=f"{replica} restarted by the engine" if restarted else f"{replica} started",
            )


def _forget_old(tracked: dict[str, float], now: float) -> None:
    """Keep the per-container notes bounded: a container whose `destroy` we missed is dropped later."""
    if len(tracked) > 256:
        for key in [key for key, when in tracked.items() if now - when > TRACK_SECONDS]:
            del tracked[key]


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def describe_exit(replica: str, exit_code: int | None, oom_killed: bool) -> str:
    """"web-abcde was OOM-killed (exit code 137)", "web-abcde exited with code 1"."""
    if oom_killed:
        return f"{replica} was OOM-killed (exit code {exit_code if exit_code is not None else OOM_EXIT_CODE})"
    return f"{replica} exited with code {exit_code}" if exit_code is not None else f"{replica} exited"


def exit_reason(exit_code: int | None, oom_killed: bool) -> str:
    """"exited 137, OOM-killed", "exited 1": a replica's last exit, for a replacement's message."""
    text = f"exited {exit_code}" if exit_code is not None else "exited"
    return f"{text}, OOM-killed" if oom_killed else text


# -- the summary ----------------------------------------------------------------------------------


def trouble(event: ServiceEvent) -> str | None:
    """The cause an entry counts towards in the summary, None when it is no trouble."""
    if event.Type == "replica" and event.Action == "die":
        if event.OOMKilled:
            return "OOM-killed"
        return f"exited (code {event.ExitCode})" if event.ExitCode is not None else "exited"
    if event.Type == "replica" and event.Action == "replace":
        return "replaced"
    if event.Type == "health" and event.Action == "DOWN":
        return "went DOWN"
    return None


def window_text(seconds: int) -> str:
    """300 → "5 min", 3600 → "1 h", 90 → "90 s"."""
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def summarise(events: list[ServiceEvent], now: float, window: int) -> list[EventGroup]:
    """The trouble among `events` of the last `window` seconds before `now`, one group per cause:
    how often, which replicas, first and last time, and a sentence. The most telling cause first
    (OOM kills, then exits, replacements, health), then the most frequent."""
    found: dict[str, list[ServiceEvent]] = {}
    for event in events:
        cause = trouble(event)
        if cause is None or now - datetime.fromisoformat(event.Time).timestamp() > window:
            continue
        found.setdefault(cause, []).append(event)
    groups: list[EventGroup] = []
    for cause, items in found.items():
        replicas = list(dict.fromkeys(item.Replica for item in items if item.Replica))
        count = len(items)
        who = f"{len(replicas)} replica{'s' if len(replicas) != 1 else ''}" if replicas else "a replica"
        times = "once" if count == 1 else f"{count} times"
        groups.append(EventGroup(
            Cause=cause, Count=count, Replicas=replicas, First=items[0].Time, Last=items[-1].Time,
            Text=f"{who} {cause} {times} in the last {window_text(window)}",
        ))

    def rank(group: EventGroup) -> tuple[int, int, str]:
        kind = next((index for index, prefix in enumerate(CAUSE_ORDER) if group.Cause.startswith(prefix)), 99)
        return kind, -group.Count, group.Cause

    return sorted(groups, key=rank)

