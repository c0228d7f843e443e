"""Owns the short path to a balancer's runtime API: one TCP connection on the host's loopback.

A balancer runs in the host's network namespace and serves its runtime API on 127.0.0.1:<admin
port> to clients that send its secret first (backend/haproxy.py, RUNTIME_API). When the backend runs
on the engine's own host it can be such a client itself: a command then costs one loopback round
trip (about a millisecond) instead of a `docker exec` (70-200 ms measured on a busy 2-core machine,
and CPU in dockerd for each), which puts it on the path of every new replica entering rotation.

The secret travels only on that loopback connection; it is never logged nor put in an error.
Whether the engine is on this host is the caller's judgement (`engine_is_local()`); a balancer that
turns out not to be reachable here (say, the engine runs in another network namespace) refuses the
connection or, should some other balancer hold that port here, closes it without an answer (the
gate wants its own secret): the caller then falls back to `docker exec`.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 1.0  # a loopback connect either succeeds at once or is refused
ANSWER_TIMEOUT = 10.0  # `show stat` of a big balancer is a few hundred kB
MAX_ANSWER = 16 * 1024 * 1024  # no runtime answer comes near this; a runaway one is cut


class RuntimeApiRefused(OSError):
    """The runtime API was not reached here, or it did not take the secret (no answer at all)."""


def ask(port: int, secret: str, line: str) -> str:
    """Send `line` to the runtime API on 127.0.0.1:`port` (after `secret`); its whole answer.

    Every CLI answer has at least a newline: an empty one means the gate refused (RuntimeApiRefused).
    """
    if "\n" in line or "\r" in line:
        raise ValueError("a runtime command is one line")
    deadline = time.monotonic() + ANSWER_TIMEOUT
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise RuntimeApiRefused(f"runtime API on 127.0.0.1:{port} not reachable here ({exc.strerror or exc})") from None
    chunks: list[bytes] = []
    size = 0
    with connection:
        connection.sendall(secret.encode() + line.encode() + b"\n")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"runtime API on 127.0.0.1:{port} did not finish its answer in {ANSWER_TIMEOUT:g} s")
            connection.settimeout(remaining)
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ValueError(f"runtime API on 127.0.0.1:{port} answered more than {MAX_ANSWER} bytes")
    if not chunks:
        raise RuntimeApiRefused(f"runtime API on 127.0.0.1:{port} gave no answer (not this balancer's secret)")
    return b"".join(chunks).decode("utf-8", "replace")


def engine_is_local(docker_host: str | None) -> bool:
    """Whether balancers on the engine's host network share this process's loopback, judged by where
    the engine is reached: its default unix socket or a unix socket path (local), tcp:// to a loopback
    address (local), anything else (ssh://, a remote address) not."""
    if not docker_host:
        return True  # the default: unix:///var/run/docker.sock
    parts = urlsplit(docker_host)
    if parts.scheme in ("unix", "npipe", "http+unix"):
        return True
    if parts.scheme in ("tcp", "http", "https") and parts.hostname:
        if parts.hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return False
    return False
