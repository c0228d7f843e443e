"""The state file's guarantees, without Docker: private files, one backend per data dir, no lost update,
and a failed write that leaves nothing half-done behind it."""

from __future__ import annotations

import os
import random
import selectors
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backend.core import Backend
from backend.models import ServiceSpec, ServiceUpdate
from backend.store import LOCK_FILE, DataDirInUse, DataDirUnsafe, Store
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
POOL = "127.9.0.0/24"


def spec(name: str, image: str = "web:0", replicas: int = 1) -> ServiceSpec:
    return ServiceSpec(Name=name, Image=image, Replicas=replicas, ServicePort=80)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


# -- 11. keys at rest ---------------------------------------------------------------------------


def test_data_dir_and_database_files_are_private_from_the_start_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = tmp_path / "data"

    def tightened(*args: object, **kwargs: object) -> None:  # a mode fixed after creation had a window
        raise AssertionError(f"created open, then tightened: {args}")

    monkeypatch.setattr(os, "chmod", tightened)  # Path.chmod calls it
    monkeypatch.setattr(os, "fchmod", tightened)
    with umask(0):  # the most open umask: anything not created 0600/0700 on purpose shows here
        store = Store(data / "state.db", POOL)
        try:
            store.insert(spec("a"), "created", "Service is created")
            store.scale("a", 3)
            files = {name: mode(data / name) for name in ("state.db", "state.db-wal", "state.db-shm", LOCK_FILE)}
        finally:
            store.close()
    assert mode(data) == 0o700
    assert files == {name: 0o600 for name in files}


def test_an_open_data_dir_and_database_of_an_older_version_are_tightened(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with sqlite3.connect(data / "state.db") as old:
        old.execute("CREATE TABLE t (x)")
    (data / "state.db").chmod(0o644)
    store = Store(data / "state.db", POOL)
    try:
        store.insert(spec("a"), "created", "Service is created")
        assert mode(data) == 0o700
        assert {mode(data / n) for n in ("state.db", "state.db-wal", "state.db-shm")} == {0o600}
    finally:
        store.close()


def test_a_shared_directory_is_refused_as_data_dir(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(DataDirUnsafe, match="shared directory"):
        Store(shared / "state.db", POOL)
    assert mode(shared) == 0o1777  # left as it was
    assert not (shared / "state.db").exists()


# -- 13. one backend per data dir -------------------------------------------------------------


def test_a_second_backend_on_the_same_data_dir_refuses_to_start_naming_the_holder(tmp_path: Path):
    settings = make_settings(tmp_path / "data")
    first = Backend(settings)
    try:
        first.store.insert(spec("a"), "created", "Service is created")
        with pytest.raises(DataDirInUse) as refused:
            Backend(settings)
        assert f"pid {os.getpid()}" in str(refused.value) and str(settings.data_dir) in str(refused.value)
        first.store.scale("a", 2)  # the refused one changed nothing and holds nothing
        assert first.store.get("a").spec.Replicas == 2
    finally:
        first.close()
    second = Backend(settings)  # the holder is gone: the next one starts
    try:
        assert second.store.get("a").spec.Replicas == 2
    finally:
        second.close()


def _hold_in_child(data: Path) -> subprocess.Popen[str]:
    """Another process holding the data dir (a Store of its own), ready when it has printed 'ready'."""
    code = (
        "import sys; from pathlib import Path; from backend.store import Store;"
        f"s = Store(Path({str(data)!r}) / 'state.db', {POOL!r}); print('ready', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=60), "the child never got the lock"
    assert child.stdout.readline().strip() == "ready"
    return child


def test_another_process_holding_the_data_dir_is_named_and_its_stale_lock_taken_over_once_it_died(tmp_path: Path):
    settings = make_settings(tmp_path / "data")
    child = _hold_in_child(settings.data_dir)
    try:
        with pytest.raises(DataDirInUse, match=f"pid {child.pid}\\b"):
            Backend(settings)
    finally:
        child.kill()  # dies without releasing anything: its pid stays in the lock file
        child.wait(timeout=30)
    assert (settings.data_dir / LOCK_FILE).read_text().strip() == str(child.pid)
    backend = Backend(settings)
    try:
        assert (settings.data_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        backend.close()


# -- 12. no lost update ------------------------------------------------------------------------


def test_scale_racing_image_updates_loses_neither_and_the_revision_matches_the_image(tmp_path: Path):
    """Image web:<i> is always revision i+1; a scale that rewrote a spec read earlier would put an
    older image back under a newer revision (and the last image update would be lost)."""
    backend = Backend(make_settings(tmp_path / "data"))
    rounds = 400
    broken: list[str] = []
    last_replicas: list[int] = []
    try:
        backend.create(spec("race", "web:0"))
        context = backend.validation_context

        def consistent(where: str) -> None:
            record = backend.store.get("race")
            if record.spec.Image != f"web:{record.revision - 1}":
                broken.append(f"{where}: {record.spec.Image} at revision {record.revision}")

        def images() -> None:
            for index in range(1, rounds + 1):
                backend.update("race", ServiceUpdate.model_validate({"Image": f"web:{index}"}, context=context))
                consistent("after an image update")

        def scales() -> None:
            for _ in range(rounds):
                replicas = random.randint(1, 9)
                backend.update("race", ServiceUpdate.model_validate({"Replicas": replicas}, context=context))
                last_replicas.append(replicas)
                consistent("after a scale")

        threads = [threading.Thread(target=images), threading.Thread(target=scales)]
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often: every interleaving gets its chance
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            sys.setswitchinterval(switch_interval)
        assert not any(thread.is_alive() for thread in threads)
        record = backend.store.get("race")
        assert broken == []
        assert (record.spec.Image, record.revision) == (f"web:{rounds}", rounds + 1)
        assert record.spec.Replicas == last_replicas[-1]
    finally:
        backend.close()


def test_one_request_changing_several_fields_is_one_transaction(tmp_path: Path):
    """A request whose FIP is taken changes nothing, not even the image it also asked for."""
    backend = Backend(make_settings(tmp_path / "data", fip_pool="127.9.9.9"))
    try:
        backend.create(spec("one"))
        backend.create(spec("two"))
        context = backend.validation_context
        backend.update("one", ServiceUpdate.model_validate({"FIP": "127.9.9.9"}, context=context))
        before = backend.store.get("two")
        with pytest.raises(Exception, match="attached to service one"):
            backend.update("two", ServiceUpdate.model_validate({"Image": "web:9", "Replicas": 4, "FIP": "127.9.9.9"}, context=context))
        after = backend.store.get("two")
        assert (after.spec.Image, after.spec.Replicas, after.revision, after.fip) == (
            before.spec.Image, before.spec.Replicas, before.revision, "",
        )
    finally:
        backend.close()


def test_a_failed_write_is_rolled_back_and_later_writes_persist(tmp_path: Path):
    path = tmp_path / "data" / "state.db"
    store = Store(path, POOL)
    try:
        kept = store.insert(spec("kept"), "created", "Service is created")
        # The disk refuses the second half of forget() (remembering a released uid).
        store._db.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON released BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        with pytest.raises(sqlite3.DatabaseError, match="disk says no"):
            store.forget(kept.__class__(**{**kept.__dict__, "keep": True}))
        store._db.execute("DROP TRIGGER refuse")
        # Nothing half-done: the service is still there, no uid was released.
        assert store.get("kept") is not None and store.known_uids() == {kept.uid}
        # Later writes work and are not left inside a transaction that a restart would lose.
        store.insert(spec("later"), "created", "Service is created")
        store.scale("kept", 5)
        store.set_status("kept", "active", "Scaling complete")
    finally:
        store.close()
    reopened = Store(path, POOL)
    try:
        assert reopened.names() == ["kept", "later"]
        kept_now = reopened.get("kept")
        assert (kept_now.spec.Replicas, kept_now.status) == (5, "active")
    finally:
        reopened.close()
