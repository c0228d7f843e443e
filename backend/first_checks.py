"""First checks: a newly gated replica's `rise` checks, made by the backend the moment it is assigned.

HAProxy 2.6 checks a DOWN server on its own clock (`downinter`, haproxy.DOWN_CHECK_MS): a replica just
assigned to a slot waits up to that long for its first check, and no runtime-API command brings the
check forward (a command changes a server's state, never its check task's timer). Where the backend
shares the balancers' network namespace (the engine is on this host: the runtime API is asked over the
loopback, backend/runtime_api.py), it makes the same checks itself, at once: a TCP connect, or for
http/httpsTerm the balancer's `GET /` over HTTP/1.0 answered 2xx/3xx, each bounded by the balancer's
`timeout check`. A failed check (not listening yet) is tried again RETRY_MS later; passed checks are
spaced like HAProxy's own (`fastinter`). After `rise` in a row the caller's `admit` puts the slot in
rotation (`set server … health up`), unless the slot was gated again meanwhile (the caller's business).

Checks that keep failing go on, RETRY_MS apart for FAST_PHASE seconds then haproxy.DOWN_CHECK_MS apart
(HAProxy's own pace for a DOWN server), until the spec's window is over: by then the balancer's own
checks of the slot run (they start within an interval of the assignment) and a slow starter is theirs
to admit. HAProxy keeps checking an admitted replica as it does every other. Such checks are what
lets the balancers keep no armed spare slots (backend/balancer.py, `Balancers.armed`): an idle spare
costs nothing, where an armed one costs a refused connect every DOWN_CHECK_MS on every balancer.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backend import haproxy

log = logging.getLogger(__name__)

RETRY_MS = 20  # after a failed first check: the replica's process is usually a few ms from listening
FAST_PHASE = 2.0  # seconds of checks RETRY_MS apart; then at HAProxy's DOWN-server pace
HANDOVER_SLACK = 0.5  # seconds past the check interval that the first checks go on (see CheckSpec.window)
WORKERS = 32  # replicas checked at once (mostly asleep between checks); more queue behind them
CONNECT_TIMEOUT = 1.0  # as the balancer's `timeout connect`
MAX_STATUS_LINE = 1024


@dataclass(frozen=True)
class CheckSpec:
    """What the balancer's own check of a replica is (see haproxy.render_config)."""

    http: bool  # `option httpchk GET /`; else a TCP connect
    timeout: float  # `timeout check`: seconds to wait for the answer once connected
    rise: int  # consecutive passes that put a replica in rotation
    spacing: float = haproxy.FAST_CHECK_MS / 1000  # between two passed checks (`fastinter`)
    window: float = FAST_PHASE  # seconds of first checks at most; then HAProxy's own checks decide


def check_once(address: str, spec: CheckSpec) -> bool:
    """One check of the replica at `address` ("ip:port"), as the balancer makes it."""
    host, port = haproxy.split_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as connection:
            if not spec.http:
                return True
            connection.settimeout(spec.timeout)
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return _status_passes(_status_line(connection))
    except OSError:
        return False


def _status_line(connection: socket.socket) -> bytes:
    received = b""
    while b"\n" not in received and len(received) < MAX_STATUS_LINE:
        chunk = connection.recv(MAX_STATUS_LINE)
        if not chunk:
            break
        received += chunk
    return received.split(b"\n", 1)[0]


def _status_passes(line: bytes) -> bool:
    """HAProxy's `option httpchk` without an `http-check expect`: a 2xx or 3xx status passes."""
    parts = line.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3") and len(parts[1]) == 3


def passes_rise(
    address: str, spec: CheckSpec, stopping: threading.Event,
    check: Callable[[str, CheckSpec], bool] = check_once,
) -> bool:
    """Check `address` until it passed `rise` checks in a row (True), or the spec's window is over or
    the backend stops (False)."""
    started = time.monotonic()
    deadline = started + spec.window
    passed = 0
    while not stopping.is_set():
        if check(address, spec):
            passed += 1
            if passed >= spec.rise:
                return True
            pause = spec.spacing
        else:
            passed = 0
            fast = time.monotonic() - started < FAST_PHASE
            pause = RETRY_MS / 1000 if fast else haproxy.DOWN_CHECK_MS / 1000
        if time.monotonic() + pause > deadline:
            return False
        stopping.wait(pause)
    return False


class FirstChecks:
    """A small pool making the first checks of newly gated replicas, off the caller's thread."""

    def __init__(self, stopping: threading.Event, workers: int = WORKERS) -> None:
        self._stopping = stopping
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="first-checks")

    def start(self, address: str, spec: CheckSpec, admit: Callable[[], None]) -> None:
        """Check `address`; call `admit` once it passed `rise` checks in a row (never otherwise)."""
        if self._stopping.is_set():
            return
        try:
            self._pool.submit(self._run, address, spec, admit)
        except RuntimeError:  # shut down meanwhile
            return

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, address: str, spec: CheckSpec, admit: Callable[[], None]) -> None:
        try:
            if passes_rise(address, spec, self._stopping):
                admit()
        except Exception:  # the balancer's own checks still admit it: say why this one did not
            log.exception("first checks of %s failed", address)
