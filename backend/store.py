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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
    keep      INTEGER NOT NULL DEFAULT 0
);
-- service instances deleted with keep=true: their containers are left alone, never collected.
CREATE TABLE IF NOT EXISTS released (uid TEXT PRIMARY KEY, name TEXT NOT NULL, at TEXT NOT NULL);
-- names whose service was deleted (the last instance): a repeated DELETE answers "already gone".
CREATE TABLE IF NOT EXISTS deleted (name TEXT PRIMARY KEY, uid TEXT NOT NULL, at TEXT NOT NULL);
"""


class NameTaken(Exception):
    """A service of that name exists already."""


class AddressPoolExhausted(Exception):
    """Every address of the pool is in use."""


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


def rfc3339_now() -> str:
    """UTC now with nanoseconds, as in the seed: 2016-10-08T13:12:15.405946064Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


class Store:
    """Thread-safe access to the state file. Every method is one short transaction."""

    def __init__(self, path: Path, address_pool: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._pool = ipaddress.ip_network(address_pool, strict=False)
        self.tenant = self._meta("tenant", lambda: secrets.token_hex(16))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str, default) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0]
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
                )
                self._db.execute(
                    "INSERT INTO services (name, uid, spec, revision, ip, fip, status, message, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def update(self, name: str, **changes) -> ServiceRecord | None:
        """Change columns of one service; `spec` is given as a ServiceSpec. None if it is gone."""
        if not changes:
            return self.get(name)
        columns, values = [], []
        if {"spec", "fip", "deleting"} & set(changes):
            columns.append("generation = generation + 1")
        for key, value in changes.items():
            if key == "spec":
                value = value.model_dump_json()
            elif key == "containers":
                value = None if value is None else json.dumps(value)
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
        values: list = [status, message, name, status, message]
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
                        return row[0]
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

    def mark_deleting(self, name: str, keep: bool) -> bool:
        """Mark the service for deletion; False when it was marked already (its `keep` stays as the
        first DELETE asked) or is gone."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE services SET deleting = 1, keep = ?, status = 'deleting', message = 'Deleting',"
                " generation = generation + 1 WHERE name = ? AND deleting = 0",
                (int(keep), name),
            ).rowcount
        return changed > 0

    def was_deleted(self, name: str) -> bool:
        """A service of this name existed and was deleted (and none exists now)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM deleted WHERE name = ?", (name,)).fetchone() is not None

    def forget(self, record: ServiceRecord) -> None:
        """Drop a deleted service; with keep, remember its uid so its containers are left alone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM services WHERE name = ? AND uid = ?", (record.name, record.uid))
            self._db.execute(
                "INSERT OR REPLACE INTO deleted (name, uid, at) VALUES (?, ?, ?)", (record.name, record.uid, rfc3339_now())
            )
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

    def released_uids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT uid FROM released")}


_COLUMNS = "name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep"


def _record(row: Iterable) -> ServiceRecord:
    name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep = row
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
    )

