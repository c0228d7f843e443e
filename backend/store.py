"""The embedded state: each service's desired spec and last known status, in one SQLite file.

Docker holds the observed state (containers, networks, labels); this file holds what Docker cannot:
the spec as the operator asked for it, the address allocated to the service, its revision (bumped by
every image update, so the reconciler knows which replicas are outdated) and the status it last
reported. A backend that starts again reads both and carries on.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.models import ServiceSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name      TEXT PRIMARY KEY,
    uid       TEXT NOT NULL UNIQUE,     -- labels every Docker object of this service instance
    spec      TEXT NOT NULL,            -- ServiceSpec as JSON (includes SSLCert; never served)
    revision  INTEGER NOT NULL DEFAULT 1,
    generation INTEGER NOT NULL DEFAULT 1, -- bumped by every change of what is desired
    ip        TEXT NOT NULL UNIQUE,
    fip       TEXT NOT NULL DEFAULT '',
    status    TEXT NOT NULL,
    message   TEXT NOT NULL,
    created   TEXT NOT NULL,
    containers TEXT,                    -- JSON list of the replicas' ids as last observed; NULL before
    deleting  INTEGER NOT NULL DEFAULT 0,
    keep      INTEGER NOT NULL DEFAULT 0,
    subnet    TEXT UNIQUE               -- the service network's subnet, from the network pool
);
-- service instances deleted with keep=true: their containers are left alone, never collected.
CREATE TABLE IF NOT EXISTS released (uid TEXT PRIMARY KEY, name TEXT NOT NULL, at TEXT NOT NULL);
"""


Column = ServiceSpec | list[str] | str | int | None
"""A value `Store.update` writes: a spec, the replicas' ids, text, a number or flag (bool is an int)."""


class NameTaken(Exception):
    """A service of that name exists already."""


class AddressPoolExhausted(Exception):
    """Every address of the pool is in use."""


class NetworkPoolExhausted(Exception):
    """No subnet of the network pool is free."""


@dataclass(frozen=True)
class ServiceRecord:
    """One row of the services table."""

    name: str
    uid: str
    spec: ServiceSpec
    revision: int
    generation: int
    ip: str
    fip: str
    status: str
    message: str
    created: str
    containers: list[str] | None
    deleting: bool
    keep: bool
    subnet: str | None = None


def rfc3339_now() -> str:
    """UTC now with nanoseconds, as in the seed: 2016-10-08T13:12:15.405946064Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


class Store:
    """Thread-safe access to the state file. Every method is one short transaction."""

    def __init__(
        self, path: Path, address_pool: str, network_pool: str | None = None, subnet_prefix: int = 25
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._pool = ipaddress.ip_network(address_pool, strict=False)
        self._network_pool = ipaddress.ip_network(network_pool) if network_pool else None
        self._subnet_prefix = subnet_prefix
        self.tenant = self._meta("tenant", lambda: secrets.token_hex(16))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        """Bring a state file written by an older version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(services)")}
        if "subnet" not in columns:  # before per-service subnets: the networks got Docker's defaults
            self._db.execute("ALTER TABLE services ADD COLUMN subnet TEXT")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS services_subnet ON services (subnet)")

    def _meta(self, key: str, default: Callable[[], str]) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return str(row[0])
            value = default()
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    # -- services -------------------------------------------------------------------------

    def insert(self, spec: ServiceSpec, status: str, message: str) -> ServiceRecord:
        """Store a new service with a free address; NameTaken if the name exists (atomic)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM services WHERE name = ?", (spec.Name,)).fetchone():
                    raise NameTaken(spec.Name)
                ip = self._free_address()
                subnet = self._free_subnet(set()) if self._network_pool else None
                record = ServiceRecord(
                    name=spec.Name,
                    uid=uuid.uuid4().hex,
                    spec=spec,
                    revision=1,
                    generation=1,
                    ip=ip,
                    fip="",
                    status=status,
                    message=message,
                    created=rfc3339_now(),
                    containers=None,
                    deleting=False,
                    keep=False,
                    subnet=subnet,
                )
                self._db.execute(
                    "INSERT INTO services (name, uid, spec, revision, ip, fip, status, message, created, subnet)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.uid,
                        spec.model_dump_json(),
                        record.revision,
                        record.ip,
                        record.fip,
                        status,
                        message,
                        record.created,
                        subnet,
                    ),
                )
                self._db.execute("COMMIT")
                return record
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _free_address(self) -> str:
        used = {row[0] for row in self._db.execute("SELECT ip FROM services")}
        for address in self._pool.hosts() if self._pool.num_addresses > 2 else self._pool:
            if str(address) not in used:
                return str(address)
        raise AddressPoolExhausted(f"every address of {self._pool} is in use")

    def _free_subnet(self, avoid: set[ipaddress.IPv4Network]) -> str:
        """The first subnet of the network pool that overlaps none in use here nor any in `avoid`."""
        assert self._network_pool is not None
        taken = {
            ipaddress.ip_network(row[0]) for row in self._db.execute("SELECT subnet FROM services") if row[0]
        } | avoid
        for candidate in self._network_pool.subnets(new_prefix=self._subnet_prefix):
            if not any(candidate.overlaps(other) for other in taken):
                return str(candidate)
        size = 2 ** (self._subnet_prefix - self._network_pool.prefixlen)
        raise NetworkPoolExhausted(
            f"no free network left in HYPERSERVICE_NETWORK_POOL {self._network_pool} "
            f"({size} networks of /{self._subnet_prefix}, all in use here or on the engine): "
            "delete a service or widen the pool"
        )

    def assign_subnet(self, name: str, avoid: Iterable[str] = ()) -> str | None:
        """Give the service a (new) subnet from the pool, skipping `avoid` (subnets the engine already
        has); None without a network pool (Docker then picks from its own defaults)."""
        if self._network_pool is None:
            return None
        blocked = {
            net for item in avoid if isinstance(net := ipaddress.ip_network(item, strict=False), ipaddress.IPv4Network)
        }
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE services SET subnet = NULL WHERE name = ?", (name,))
                subnet = self._free_subnet(blocked)
                self._db.execute("UPDATE services SET subnet = ? WHERE name = ?", (subnet, name))
                self._db.execute("COMMIT")
                return subnet
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, name: str) -> ServiceRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM services WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[ServiceRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM services ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    def names(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT name FROM services ORDER BY name")]

    def update(self, name: str, **changes: Column) -> ServiceRecord | None:
        """Change columns of one service; `spec` is given as a ServiceSpec. None if it is gone."""
        if not changes:
            return self.get(name)
        columns: list[str] = []
        values: list[str | int | None] = []
        if {"spec", "fip", "deleting"} & set(changes):
            columns.append("generation = generation + 1")
        for key, value in changes.items():
            if isinstance(value, ServiceSpec):
                value = value.model_dump_json()
            elif isinstance(value, list):  # containers
                value = json.dumps(value)
            columns.append(f"{key} = ?")
            values.append(value)
        with self._lock:
            self._db.execute(f"UPDATE services SET {', '.join(columns)} WHERE name = ?", (*values, name))
        return self.get(name)

    def set_status(self, name: str, status: str, message: str, generation: int | None = None) -> bool:
        """Record a status; True when it changed (so callers know whether to tell anyone).

        With `generation`, only if the desired state is still the one the status was worked out for:
        a sync that read the spec before an update must not report on the old spec afterwards.
        """
        query = "UPDATE services SET status = ?, message = ? WHERE name = ? AND (status != ? OR message != ?)"
        values: list[str | int] = [status, message, name, status, message]
        if generation is not None:
            query += " AND generation = ?"
            values.append(generation)
        with self._lock:
            return self._db.execute(query, values).rowcount > 0

    def scale(self, name: str, replicas: int) -> ServiceRecord | None:
        record = self.get(name)
        if record is None:
            return None
        return self.update(name, spec=record.spec.model_copy(update={"Replicas": replicas}))

    def change_image(self, name: str, image: str) -> ServiceRecord | None:
        """A new image is a new revision, even when the reference is the same (a redeploy)."""
        with self._lock:
            row = self._db.execute("SELECT spec, revision FROM services WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            spec = json.loads(row[0])
            spec["Image"] = image
            self._db.execute(
                "UPDATE services SET spec = ?, revision = ?, generation = generation + 1 WHERE name = ?",
                (json.dumps(spec), row[1] + 1, name),
            )
        return self.get(name)

    def attach_fip(self, name: str, fip: str) -> str | None:
        """Attach `fip` ("" detaches) unless another service holds it; answer that service's name."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if fip:
                    row = self._db.execute(
                        "SELECT name FROM services WHERE fip = ? AND name != ?", (fip, name)
                    ).fetchone()
                    if row:
                        self._db.execute("ROLLBACK")
                        return str(row[0])
                self._db.execute(
                    "UPDATE services SET fip = ?, generation = generation + 1 WHERE name = ? AND fip != ?",
                    (fip, name, fip),
                )
                self._db.execute("COMMIT")
                return None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def fip_owners(self) -> dict[str, str]:
        """Floating IP -> the service it is attached to."""
        with self._lock:
            return dict(self._db.execute("SELECT fip, name FROM services WHERE fip != ''").fetchall())

    def mark_deleting(self, name: str, keep: bool) -> ServiceRecord | None:
        return self.update(name, deleting=1, keep=int(keep), status="deleting", message="Deleting")

    def forget(self, record: ServiceRecord) -> None:
        """Drop a deleted service; with keep, remember its uid so its containers are left alone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM services WHERE name = ? AND uid = ?", (record.name, record.uid))
            if record.keep:
                self._db.execute(
                    "INSERT OR REPLACE INTO released (uid, name, at) VALUES (?, ?, ?)",
                    (record.uid, record.name, rfc3339_now()),
                )
            self._db.execute("COMMIT")

    def known_uids(self) -> set[str]:
        """Uids whose Docker objects are ours to keep: live services and released ones."""
        with self._lock:
            live = {row[0] for row in self._db.execute("SELECT uid FROM services")}
            released = {row[0] for row in self._db.execute("SELECT uid FROM released")}
        return live | released


_COLUMNS = (
    "name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep, subnet"
)


def _record(row: Sequence[Any]) -> ServiceRecord:
    name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep, subnet = row
    return ServiceRecord(
        name=name,
        uid=uid,
        spec=ServiceSpec.model_construct(**json.loads(spec)),
        revision=revision,
        generation=generation,
        ip=ip,
        fip=fip,
        status=status,
        message=message,
        created=created,
        containers=None if containers is None else json.loads(containers),
        deleting=bool(deleting),
        keep=bool(keep),
        subnet=subnet,
    )

