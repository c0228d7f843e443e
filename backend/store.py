"""The embedded state: each service's desired spec and last known status, in one SQLite file.

Docker holds the observed state (containers, networks, labels); this file holds what Docker cannot:
the spec as the operator asked for it, the address allocated to the service, its revision (bumped by
every image update, so the reconciler knows which replicas are outdated) and the status it last
reported. A backend that starts again reads both and carries on. It also keeps each service's
history (status changes, replica exits, health changes, operator actions), bounded per service.

It also owns the data directory's safety: the directory is private (0700), the database and its
WAL/SHM files are 0600 from the moment they exist (they hold SSLCert private keys), and one lock file
(`backend.lock`, holding the holder's pid) keeps a second backend off the same directory. Every write
is one transaction that either commits or is rolled back: a failed write never leaves the connection
inside an open transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

from backend.models import EventType, Revision, RevisionOutcome, ServiceEvent, ServiceSpec

log = logging.getLogger(__name__)

LOCK_FILE = "backend.lock"
EVENTS_KEPT = 500  # history entries kept per service; older ones are pruned as new ones come
REVISIONS_KEPT = 20  # revisions kept per service; the oldest are pruned as new ones come

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
    remove_volumes INTEGER NOT NULL DEFAULT 0, -- the delete asked for the service's volumes to go too
    subnet    TEXT UNIQUE               -- the service network's subnet, from the network pool
);
-- service instances deleted with keep=true: their containers are left alone, never collected.
CREATE TABLE IF NOT EXISTS released (uid TEXT PRIMARY KEY, name TEXT NOT NULL, at TEXT NOT NULL);
-- names whose service was deleted (the last instance): a repeated DELETE answers "already gone".
CREATE TABLE IF NOT EXISTS deleted (name TEXT PRIMARY KEY, uid TEXT NOT NULL, at TEXT NOT NULL);
-- each service's history (GET /services/{name}/events): the last EVENTS_KEPT entries per service
-- instance, dropped with it.
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    uid       TEXT NOT NULL,            -- services.uid
    at        REAL NOT NULL,            -- seconds since the epoch
    type      TEXT NOT NULL,            -- status, replica, health, action
    action    TEXT NOT NULL,
    replica   TEXT NOT NULL DEFAULT '',
    message   TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    by        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_service ON events (uid, id);
-- each service's revisions (GET /services/{name}/revisions): every change of its Image is one; the
-- last REVISIONS_KEPT per service instance, dropped with it. services.revision is the current one.
CREATE TABLE IF NOT EXISTS revisions (
    uid       TEXT NOT NULL,            -- services.uid
    number    INTEGER NOT NULL,         -- never reused: a new revision is the highest number + 1
    image     TEXT NOT NULL,
    created   TEXT NOT NULL,            -- RFC 3339
    by        TEXT NOT NULL DEFAULT '',
    outcome   TEXT NOT NULL,            -- rolling, active, failed, rolled back, superseded
    reason    TEXT NOT NULL DEFAULT '',
    ready     INTEGER NOT NULL DEFAULT 0, -- all its replicas were ready once: a revision to go back to
    PRIMARY KEY (uid, number)
);
"""


Column = ServiceSpec | list[str] | str | int | None
"""A value `Store.update` writes: a spec, the replicas' ids, text, a number or flag (bool is an int)."""


class NameTaken(Exception):
    """A service of that name exists already."""


class AddressPoolExhausted(Exception):
    """Every address of the pool is in use."""


class NetworkPoolExhausted(Exception):
    """No subnet of the network pool is free."""


class FipTaken(Exception):
    """The floating IP is attached to another service (`holder`); nothing was changed."""

    def __init__(self, fip: str, holder: str) -> None:
        super().__init__(f"{fip} is attached to service {holder}")
        self.holder = holder


class ServiceDeleting(Exception):
    """The service is being deleted: it takes no more changes."""


class DataDirInUse(Exception):
    """Another backend holds the data directory's lock."""


class DataDirUnsafe(Exception):
    """The data directory is open to other users and cannot be made private."""


def private_dir(path: Path) -> None:
    """Make `path` a directory only its owner can enter (0700): created so, or tightened when wider.

    A directory we own is tightened (and the change logged): an upgrade from a version that made it
    0755 fixes itself. One we cannot tighten, or a shared one (sticky bit, e.g. /tmp), is refused.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if mode & stat.S_ISVTX:
        raise DataDirUnsafe(
            f"data directory {path} is a shared directory (mode {mode:o}); give hyperservice a directory of its own"
        )
    try:
        path.chmod(0o700)
    except OSError as exc:
        raise DataDirUnsafe(
            f"data directory {path} is open to other users (mode {mode:o}) and could not be restricted: {exc}"
        ) from exc
    log.warning("data directory %s was open to other users (mode %o); restricted it to its owner (700)", path, mode)


def private_file(path: Path) -> None:
    """Create `path` as a 0600 file if it does not exist (no window with wider modes); tighten it if it does."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class DataDirLock:
    """An exclusive flock on `<data dir>/backend.lock`, which holds the holder's pid.

    The kernel drops a flock when its holder dies, so a lock file left by a dead backend (a stale pid)
    is simply taken over; a live holder makes the second backend refuse to start, naming its pid.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {path.parent} is in use by another hyperservice backend (pid {holder}); "
                "stop that one first, or give this one its own HYPERSERVICE_DATA_DIR"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        previous = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if previous and previous != str(os.getpid()):
            log.info("taking over the lock of %s from pid %s, which no longer holds it", path.parent, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


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
    remove_volumes: bool = False
    subnet: str | None = None


def rfc3339_now() -> str:
    """UTC now with nanoseconds, as in the seed: 2016-10-08T13:12:15.405946064Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


SUBNET_CURSOR = "subnet_cursor"  # meta key: the subnet handed out last (where next-fit goes on from)


def _network_or_none(text: str) -> ipaddress.IPv4Network | None:
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        return None
    return network if isinstance(network, ipaddress.IPv4Network) else None


def next_fit_subnet(
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix: int,
    taken: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], after: ipaddress.IPv4Network | None,
) -> ipaddress.IPv4Network | None:
    """The first /`prefix` subnet of `pool` after `after` (going round to the pool's start) that overlaps
    nothing in `taken`; None when there is none. Next-fit, not first-fit: a freed subnet is handed out
    again only after the rest of the pool has been, because an engine may hold a deleted network's
    subnet a while longer (a swarm node keeps an overlay's until its tasks are cleaned up there:
    "Pool overlaps with other one on this address space")."""
    if not isinstance(pool, ipaddress.IPv4Network):
        return None  # the pool is IPv4 (settings check it)
    blocked = [net for net in taken if isinstance(net, ipaddress.IPv4Network)]
    size = 2 ** (32 - prefix)
    count = 2 ** (prefix - pool.prefixlen)
    base = int(pool.network_address)
    start = 0
    if after is not None and after.prefixlen == prefix and after.subnet_of(pool):
        start = (int(after.network_address) - base) // size + 1
    for step in range(count):
        candidate = ipaddress.IPv4Network((base + ((start + step) % count) * size, prefix))
        if not any(candidate.overlaps(other) for other in blocked):
            return candidate
    return None


class EventEntry(TypedDict, total=False):
    """One history entry to add, as `Store.add_event` and `History.record` take it: the service by
    `name` or by instance `uid` (one of them); what happened (`type`, `action`, and for a replica its
    name, exit code, whether it was OOM-killed); a `message`; who asked (`by`, for an action). With
    `if_changed`, nothing is added when the latest entry of this type and replica has this action."""

    name: str | None
    uid: str | None
    type: Required[EventType]
    action: Required[str]
    replica: str
    message: str
    exit_code: int | None
    oom_killed: bool
    by: str
    if_changed: bool


class Store:
    """Thread-safe access to the state file. Every method is one short transaction."""

    events_kept = EVENTS_KEPT

    def __init__(
        self, path: Path, address_pool: str, network_pool: str | None = None, subnet_prefix: int = 27
    ) -> None:
        private_dir(path.parent)
        self._dir_lock = DataDirLock(path.parent / LOCK_FILE)
        try:
            # SQLite gives the -wal and -shm files the database file's mode: a 0600 database makes
            # all three 0600 from their first byte, whatever the umask.
            private_file(path)
            for companion in ("-wal", "-shm", "-journal"):
                extra = path.with_name(path.name + companion)
                if extra.exists():
                    private_file(extra)
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
        except BaseException:
            self._dir_lock.release()
            raise

    def _migrate(self) -> None:
        """Columns added since the first release, for state files written before them."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(services)")}
        if "remove_volumes" not in columns:
            self._db.execute("ALTER TABLE services ADD COLUMN remove_volumes INTEGER NOT NULL DEFAULT 0")
        if "subnet" not in columns:  # before per-service subnets: the networks got Docker's defaults
            self._db.execute("ALTER TABLE services ADD COLUMN subnet TEXT")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS services_subnet ON services (subnet)")
        # services from before revisions were kept: their current revision is the one known good one
        self._db.execute(
            "INSERT INTO revisions (uid, number, image, created, outcome, ready)"
            " SELECT uid, revision, json_extract(spec, '$.Image'), created, 'active', 1 FROM services"
            " WHERE NOT EXISTS (SELECT 1 FROM revisions WHERE revisions.uid = services.uid)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._dir_lock.release()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if anything in it (or the
        commit itself) fails, so the connection never stays inside a half-done transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _meta(self, key: str, default: Callable[[], str]) -> str:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return str(row[0])
            value = default()
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    # -- services -------------------------------------------------------------------------

    def insert(self, spec: ServiceSpec, status: str, message: str, by: str = "") -> ServiceRecord:
        """Store a new service with a free address, and its revision 1; NameTaken if the name exists
        (atomic)."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM services WHERE name = ?", (spec.Name,)).fetchone():
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
            db.execute(
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
            self._add_revision(db, record.uid, 1, spec.Image, by)
            return record

    def _add_revision(self, db: sqlite3.Connection, uid: str, number: int, image: str, by: str, reason: str = "") -> None:
        """A new revision, being rolled out; the oldest beyond REVISIONS_KEPT go (inside a transaction)."""
        db.execute(
            "INSERT INTO revisions (uid, number, image, created, by, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uid, number, image, rfc3339_now(), by, RevisionOutcome.rolling.value, reason),
        )
        db.execute(
            "DELETE FROM revisions WHERE uid = ? AND number <= "
            "(SELECT number FROM revisions WHERE uid = ? ORDER BY number DESC LIMIT 1 OFFSET ?)",
            (uid, uid, REVISIONS_KEPT),
        )

    def _free_address(self) -> str:
        used = {row[0] for row in self._db.execute("SELECT ip FROM services")}
        for address in self._pool.hosts() if self._pool.num_addresses > 2 else self._pool:
            if str(address) not in used:
                return str(address)
        raise AddressPoolExhausted(f"every address of {self._pool} is in use")

    def _free_subnet(self, avoid: set[ipaddress.IPv4Network]) -> str:
        """The next subnet of the network pool (`next_fit_subnet`, after the last one handed out) that
        overlaps none in use here nor any in `avoid` (inside a transaction: it moves the cursor)."""
        assert self._network_pool is not None
        taken = {
            ipaddress.ip_network(row[0]) for row in self._db.execute("SELECT subnet FROM services") if row[0]
        } | avoid
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (SUBNET_CURSOR,)).fetchone()
        after = _network_or_none(str(row[0])) if row else None
        found = next_fit_subnet(self._network_pool, self._subnet_prefix, taken, after)
        if found is not None:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (SUBNET_CURSOR, str(found)))
            return str(found)
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
        with self._transaction() as db:
            db.execute("UPDATE services SET subnet = NULL WHERE name = ?", (name,))
            subnet = self._free_subnet(blocked)
            db.execute("UPDATE services SET subnet = ? WHERE name = ?", (subnet, name))
            return subnet

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
        """Change bookkeeping columns of one service (one statement). None if it is gone.

        The spec is never rewritten whole here (a spec read earlier would undo a concurrent change):
        its fields change through `apply_update`.
        """
        if not changes:
            return self.get(name)
        if "spec" in changes:
            raise ValueError("the spec changes field by field: use apply_update")
        columns: list[str] = []
        values: list[str | int | None] = []
        if {"fip", "deleting"} & set(changes):
            columns.append("generation = generation + 1")
        for key, value in changes.items():
            if isinstance(value, list):  # containers
                value = json.dumps(value)
            elif isinstance(value, ServiceSpec):
                raise ValueError("the spec changes field by field: use apply_update")
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

    def apply_update(
        self, name: str, *, replicas: int | None = None, image: str | None = None, fip: str | None = None,
        by: str = "", reason: str = "", ending: tuple[RevisionOutcome, str] | None = None,
    ) -> ServiceRecord | None:
        """Change the given fields of one service, and only those, in one transaction.

        Each field is written in place (`json_set` on the stored spec), never by rewriting a spec read
        earlier, so concurrent updates of different fields never undo each other. A new image is a new
        revision, even when the reference is the same (a redeploy): numbered above every earlier one,
        recorded with `by` and `reason`; the revision it replaces, if it was still rolling out, ends
        `superseded` (or as `ending` says: outcome, reason). `fip` "" detaches. None if the
        service is gone; ServiceDeleting if it is being deleted; FipTaken if another service holds
        the floating IP (then nothing changed).
        """
        with self._transaction() as db:
            row = db.execute("SELECT deleting, uid, revision FROM services WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            if row[0]:
                raise ServiceDeleting(name)
            uid, revision = row[1], row[2]
            spec_expression = "spec"
            columns: list[str] = []
            values: list[object] = []
            if replicas is not None:
                spec_expression = f"json_set({spec_expression}, '$.Replicas', ?)"
                values.append(replicas)
            if image is not None:
                spec_expression = f"json_set({spec_expression}, '$.Image', ?)"
                values.append(image)
                highest = db.execute("SELECT MAX(number) FROM revisions WHERE uid = ?", (uid,)).fetchone()[0]
                number = max(highest or 0, revision) + 1
                columns.append(f"revision = {number}")
                outcome, why = ending or (RevisionOutcome.superseded, "replaced before it was ready")
                db.execute(
                    "UPDATE revisions SET outcome = ?, reason = ? WHERE uid = ? AND number = ? AND outcome = ?",
                    (outcome.value, why, uid, revision, RevisionOutcome.rolling.value),
                )
                if ending:  # the revision left is rolled back even when it was serving already
                    db.execute(
                        "UPDATE revisions SET outcome = ?, reason = ? WHERE uid = ? AND number = ? AND outcome = ?",
                        (outcome.value, why, uid, revision, RevisionOutcome.active.value),
                    )
                self._add_revision(db, uid, number, image, by, reason)
            if fip is not None:
                if fip:
                    holder = db.execute("SELECT name FROM services WHERE fip = ? AND name != ?", (fip, name)).fetchone()
                    if holder:
                        raise FipTaken(fip, holder[0])
                columns.append("fip = ?")
                values.append(fip)
            if values:
                db.execute(
                    f"UPDATE services SET spec = {spec_expression}, {', '.join(columns + ['generation = generation + 1'])}"
                    " WHERE name = ?",
                    (*values, name),
                )
            found = db.execute(f"SELECT {_COLUMNS} FROM services WHERE name = ?", (name,)).fetchone()
        return _record(found)

    def scale(self, name: str, replicas: int) -> ServiceRecord | None:
        return self.apply_update(name, replicas=replicas)

    def change_image(self, name: str, image: str) -> ServiceRecord | None:
        """A new image is a new revision, even when the reference is the same (a redeploy)."""
        return self.apply_update(name, image=image)

    def attach_fip(self, name: str, fip: str) -> str | None:
        """Attach `fip` ("" detaches) unless another service holds it; answer that service's name."""
        try:
            self.apply_update(name, fip=fip)
        except FipTaken as exc:
            return exc.holder
        return None

    def fip_owners(self) -> dict[str, str]:
        """Floating IP -> the service it is attached to."""
        with self._lock:
            return dict(self._db.execute("SELECT fip, name FROM services WHERE fip != ''").fetchall())

    def mark_deleting(self, name: str, keep: bool, volumes: bool = False) -> bool:
        """Mark the service for deletion; False when it was marked already (its `keep` stays as the
        first DELETE asked) or is gone."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE services SET deleting = 1, keep = ?, remove_volumes = ?, status = 'deleting',"
                " message = 'Deleting', generation = generation + 1 WHERE name = ? AND deleting = 0",
                (int(keep), int(volumes), name),
            ).rowcount
        return changed > 0

    def was_deleted(self, name: str) -> bool:
        """A service of this name existed and was deleted (and none exists now)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM deleted WHERE name = ?", (name,)).fetchone() is not None

    def forget(self, record: ServiceRecord) -> None:
        """Drop a deleted service; with keep, remember its uid so its containers are left alone."""
        with self._transaction() as db:
            db.execute("DELETE FROM services WHERE name = ? AND uid = ?", (record.name, record.uid))
            db.execute(
                "INSERT OR REPLACE INTO deleted (name, uid, at) VALUES (?, ?, ?)", (record.name, record.uid, rfc3339_now())
            )
            db.execute("DELETE FROM events WHERE uid = ?", (record.uid,))
            db.execute("DELETE FROM revisions WHERE uid = ?", (record.uid,))
            if record.keep:
                db.execute(
                    "INSERT OR REPLACE INTO released (uid, name, at) VALUES (?, ?, ?)",
                    (record.uid, record.name, rfc3339_now()),
                )

    def known_uids(self) -> set[str]:
        """Uids whose Docker objects are ours to keep: live services and released ones."""
        with self._lock:
            live = {row[0] for row in self._db.execute("SELECT uid FROM services")}
            released = {row[0] for row in self._db.execute("SELECT uid FROM released")}
        return live | released

    # -- history ------------------------------------------------------------------------------

    def add_event(self, *, at: float | None = None, **entry: Unpack[EventEntry]) -> tuple[str, ServiceEvent] | None:
        """Add one entry to the history of the service named `name` (or of instance `uid`) and prune
        its oldest beyond `events_kept`, in one transaction. Answers (service name, the entry); None
        when no such service is known (an event of a deleted or foreign instance is dropped), or, with
        `if_changed`, when the latest entry of this type and replica has this action already (a health
        seen again after a restart is no change)."""
        name, uid, type, action = entry.get("name"), entry.get("uid"), entry["type"], entry["action"]
        replica, message, by = entry.get("replica", ""), entry.get("message", ""), entry.get("by", "")
        exit_code, oom_killed = entry.get("exit_code"), entry.get("oom_killed", False)
        if (name is None) == (uid is None):
            raise ValueError("give the service's name or its uid")
        at = time.time() if at is None else at
        with self._transaction() as db:
            row = db.execute(
                "SELECT name, uid FROM services WHERE " + ("name = ?" if name is not None else "uid = ?"),
                (name if name is not None else uid,),
            ).fetchone()
            if row is None:
                return None
            service, instance = row
            if entry.get("if_changed", False):
                last = db.execute(
                    "SELECT action FROM events WHERE uid = ? AND type = ? AND replica = ? ORDER BY id DESC LIMIT 1",
                    (instance, type, replica),
                ).fetchone()
                if last is not None and last[0] == action:
                    return None
            cursor = db.execute(
                "INSERT INTO events (uid, at, type, action, replica, message, exit_code, oom_killed, by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (instance, at, type, action, replica, message, exit_code, int(oom_killed), by),
            )
            db.execute(
                "DELETE FROM events WHERE uid = ? AND id <= "
                "(SELECT id FROM events WHERE uid = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (instance, instance, self.events_kept),
            )
            event_id = cursor.lastrowid
        assert event_id is not None
        return service, _event((event_id, at, type, action, replica, message, exit_code, oom_killed, by))

    def events(self, name: str, limit: int | None = None) -> list[ServiceEvent] | None:
        """The service's history, oldest first (the last `limit` entries); None if it is not known."""
        with self._lock:
            row = self._db.execute("SELECT uid FROM services WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT id, at, type, action, replica, message, exit_code, oom_killed, by FROM events"
                " WHERE uid = ? ORDER BY id DESC LIMIT ?",
                (row[0], -1 if limit is None else limit),
            ).fetchall()
        return [_event(item) for item in reversed(rows)]


    # -- revisions ----------------------------------------------------------------------------

    def revisions(self, name: str) -> list[Revision] | None:
        """The service's revisions, newest first; None if it is not known."""
        with self._lock:
            row = self._db.execute("SELECT uid FROM services WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE uid = ? ORDER BY number DESC", (row[0],)
            ).fetchall()
        return [_revision(item) for item in rows]

    def revision(self, uid: str, number: int) -> Revision | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE uid = ? AND number = ?", (uid, number)
            ).fetchone()
        return _revision(row) if row else None

    def last_good(self, uid: str, before: int) -> Revision | None:
        """The newest revision below `before` whose replicas were all ready once (one to go back to)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE uid = ? AND number < ? AND ready = 1"
                " ORDER BY number DESC LIMIT 1",
                (uid, before),
            ).fetchone()
        return _revision(row) if row else None

    def revision_ready(self, uid: str, number: int) -> bool:
        """All replicas of revision `number`, the current one, are ready: it is `active` (and one to go
        back to), the one active before it `superseded`. True when that changed anything."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE revisions SET outcome = ?, ready = 1 WHERE uid = ? AND number = ? AND outcome = ?"
                " AND EXISTS (SELECT 1 FROM services WHERE uid = ? AND revision = ?)",
                (RevisionOutcome.active.value, uid, number, RevisionOutcome.rolling.value, uid, number),
            ).rowcount
            if changed:
                db.execute(
                    "UPDATE revisions SET outcome = ? WHERE uid = ? AND number != ? AND outcome = ?",
                    (RevisionOutcome.superseded.value, uid, number, RevisionOutcome.active.value),
                )
        return changed > 0

    def roll_back(self, uid: str, failed: int, to: int, reason: str) -> ServiceRecord | None:
        """Automatic rollback: revision `failed` (still the current one, still rolling out) ends
        `rolled back` with `reason`, and `to` becomes the current revision again, with its image (its
        replicas, labelled with its number, are the ones to keep). None when the service changed
        meanwhile (another revision, being deleted) or `to` is not known: nothing was done."""
        with self._transaction() as db:
            target = db.execute("SELECT image FROM revisions WHERE uid = ? AND number = ?", (uid, to)).fetchone()
            moved = target is not None and db.execute(
                "UPDATE services SET spec = json_set(spec, '$.Image', ?), revision = ?, generation = generation + 1"
                " WHERE uid = ? AND revision = ? AND deleting = 0",
                (target[0], to, uid, failed),
            ).rowcount
            if not moved:
                return None
            db.execute(
                "UPDATE revisions SET outcome = ?, reason = ? WHERE uid = ? AND number = ?",
                (RevisionOutcome.rolled_back.value, reason, uid, failed),
            )
            db.execute(
                "UPDATE revisions SET outcome = ? WHERE uid = ? AND number = ?",
                (RevisionOutcome.active.value, uid, to),
            )
            found = db.execute(f"SELECT {_COLUMNS} FROM services WHERE uid = ?", (uid,)).fetchone()
        return _record(found)


_REVISION_COLUMNS = "number, image, created, by, outcome, reason"


def _revision(row: Sequence[Any]) -> Revision:
    number, image, created, by, outcome, reason = row
    return Revision(Number=number, Image=image, Created=created, By=by, Outcome=outcome, Reason=reason)


def rfc3339(at: float) -> str:
    """Seconds since the epoch as RFC 3339 in UTC, to the microsecond: 2016-10-08T13:12:15.405946Z."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _event(row: Sequence[Any]) -> ServiceEvent:
    event_id, at, type_, action, replica, message, exit_code, oom_killed, by = row
    return ServiceEvent(
        Id=event_id, Time=rfc3339(at), Type=type_, Action=action, Replica=replica, Message=message,
        ExitCode=exit_code, OOMKilled=bool(oom_killed), By=by,
    )


_COLUMNS = (
    "name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep,"
    " remove_volumes, subnet"
)


def _record(row: Sequence[Any]) -> ServiceRecord:
    (name, uid, spec, revision, generation, ip, fip, status, message, created, containers, deleting, keep, volumes,
     subnet) = row
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
        remove_volumes=bool(volumes),
        subnet=subnet,
    )

