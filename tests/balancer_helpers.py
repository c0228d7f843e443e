"""Helpers for the balancer tests: an echo replica image setup, raw HTTP through real sockets, load."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.conftest import LB_IMAGE

ECHO_PORT = 8080


def echo_replica(tls_pem: str | None = None) -> dict:
    """Fields for a keep-alive replica (HAProxy answering by itself) that echoes what it was sent:
    its hostname, X-Forwarded-For and X-Forwarded-Proto; with `tls_pem` it speaks TLS itself."""
    bind = f"bind :{ECHO_PORT}" + (" ssl crt /tmp/server.pem" if tls_pem else "")
    config = "\n".join([
        "global",
        "  log stdout format raw local0",
        "defaults",
        "  mode http",
        "  timeout connect 5s",
        "  timeout client 30s",
        "  timeout server 30s",
        "frontend echo",
        f"  {bind}",
        '  http-request return status 200 content-type text/plain lf-string '
        '"%[hostname] xff=%[req.hdr(x-forwarded-for)] proto=%[req.hdr(x-forwarded-proto)]\\n"',
        "",
    ])
    env = [f"CONFIG={base64.b64encode(config.encode()).decode()}"]
    script = 'echo "$CONFIG" | busybox base64 -d > /tmp/echo.cfg'
    if tls_pem:
        env.append(f"PEM={base64.b64encode(tls_pem.encode()).decode()}")
        script += ' && echo "$PEM" | busybox base64 -d > /tmp/server.pem'
    script += " && exec haproxy -db -f /tmp/echo.cfg"
    return {"Image": LB_IMAGE, "Entrypoint": ["/bin/sh", "-c"], "Cmd": [script], "Env": env,
            "ContainerPort": ECHO_PORT}


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


def who(host: str, port: int, headers: dict | None = None, source: str | None = None) -> str:
    """The replica (hostname) that answered one request (sent from the local address `source`)."""
    status, body, _ = get(host, port, headers=headers, source=source)
    assert status == 200, (status, body)
    return body.split()[0]


def tls_who(host: str, port: int, ca_pem: bytes, server_name: str) -> tuple[str, dict]:
    """One HTTPS request verified against `ca_pem`: (first word of the body, the peer certificate)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        certificate = tls.getpeercert()
    head, _, body = data.decode().partition("\r\n\r\n")
    assert " 200 " in head.splitlines()[0], head
    return body, certificate


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
