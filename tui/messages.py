"""The messages the console passes around: what the app learns from the backend, told to the screens.

The app owns the connection (the /events stream and the refetches it triggers) and the `Catalog`;
it posts these to every screen on the stack, which redraw what they show.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ServicesChanged(Message):
    """Services were added, changed or removed; `names` None means the whole list was re-read."""

    names: frozenset[str] | None = None


@dataclass
class ContainersChanged(Message):
    """The replicas of service `name` were re-read (the Catalog has them)."""

    name: str


@dataclass
class HistoryChanged(Message):
    """Service `name`'s history grew (a `history` event on the change feed)."""

    name: str


@dataclass
class ConnectionChanged(Message):
    """The backend or its Docker engine became reachable (`problem` None) or unreachable."""

    problem: str | None


@dataclass
class LimitsChanged(Message):
    """The backend said which limits it validates against (`GET /limits`, when attached remotely)."""

    max_replicas: int


@dataclass
class PullProgressed(Message):
    """The pull of service `name`'s image got further (the Catalog's `pulls` has how far)."""

    name: str
