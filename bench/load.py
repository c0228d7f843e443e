"""Load through an address, for the benchmarks and the tests: one request (`get`), a steady load from
a few threads (`SteadyLoad`), requests at a fixed rate each on its own thread (`PacedLoad`).

Loopback (or test-made container) addresses only; every request bounded by a timeout, every load by
a deadline.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


def get(
    host: str, port: int, path: str = "/", headers: dict | None = None, timeout: float = 5.0, source: str | None = None
) -> tuple[int, str, dict]:
    """One request on a new connection (from the local address `source` when given): (status, body, headers)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()



@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    by_replica: dict[str, int] = field(default_factory=dict)


class SteadyLoad:
    """Bounded steady HTTP load through an address from a few threads (loopback only).

    Each request goes on a new connection (so every server-set change is exercised), except in
    `keepalive` mode, where each thread keeps one connection open for all its requests.
    """

    def __init__(self, host: str, port: int, threads: int = 4, keepalive: bool = False, max_seconds: float = 120):
        self.host, self.port, self.threads, self.keepalive = host, port, threads, keepalive
        self.deadline = time.monotonic() + max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _count(self, body: str | None, error: str | None) -> None:
        with self._lock:
            if error is None and body is not None:
                self.result.ok += 1
                name = body.split()[0] if body.split() else "?"
                self.result.by_replica[name] = self.result.by_replica.get(name, 0) + 1
            else:
                self.result.failed += 1
                if len(self.result.errors) < 20:
                    self.result.errors.append(error or "empty answer")

    def _run(self) -> None:
        connection = None
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read().decode()
                self._count(body, None if response.status == 200 else f"status {response.status}")
            except Exception as exc:  # every failure counts
                self._count(None, repr(exc))
                connection = None
            if not self.keepalive and connection is not None:
                connection.close()
                connection = None
            time.sleep(0.005)
        if connection is not None:
            connection.close()

    def __enter__(self) -> SteadyLoad:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=20)


@dataclass
class TimedResult:
    """One request of a PacedLoad: when it was sent (monotonic), and whether it got a 200."""

    sent: float
    ok: bool
    replica: str = ""
    error: str = ""


class PacedLoad:
    """Requests at a fixed rate through an address (loopback only), each on its own connection and
    thread, so a request hanging on a hung replica never delays the next one. Bounded: at most
    `max_seconds` of sending and `rate * max_seconds` requests; every request has `timeout` seconds
    (a short client timeout: a request stuck that long counts as failed)."""

    def __init__(self, host: str, port: int, rate: float = 20.0, timeout: float = 3.0, max_seconds: float = 90.0):
        self.host, self.port, self.rate, self.timeout = host, port, rate, timeout
        self.max_requests = int(rate * max_seconds)
        self.results: list[TimedResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pacer: threading.Thread | None = None
        self._requests: list[threading.Thread] = []

    def _one(self, sent: float) -> None:
        try:
            status, body, _ = get(self.host, self.port, timeout=self.timeout)
            result = TimedResult(sent, status == 200, body.split()[0] if body.split() else "",
                                 "" if status == 200 else f"status {status}")
        except Exception as exc:  # every failure counts
            result = TimedResult(sent, False, error=repr(exc))
        with self._lock:
            self.results.append(result)

    def _pace(self) -> None:
        start = time.monotonic()
        for index in range(self.max_requests):
            due = start + index / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            thread = threading.Thread(target=self._one, args=(time.monotonic(),), daemon=True)
            thread.start()
            self._requests.append(thread)

    def in_flight(self) -> list[threading.Thread]:
        """The requests sent and not ended yet (each ends by `timeout` at the latest)."""
        return [thread for thread in list(self._requests) if thread.is_alive()]

    def answered_by(self) -> set[str]:
        """The replicas (hostnames) that have answered a request so far."""
        with self._lock:
            return {r.replica for r in self.results if r.ok}

    @property
    def failed(self) -> list[TimedResult]:
        with self._lock:
            return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> int:
        with self._lock:
            return sum(r.ok for r in self.results)

    def __enter__(self) -> PacedLoad:
        self._pacer = threading.Thread(target=self._pace, daemon=True)
        self._pacer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._pacer is not None:
            self._pacer.join(timeout=5)
        for thread in self._requests:
            thread.join(timeout=self.timeout + 5)  # each ends by its own timeout
