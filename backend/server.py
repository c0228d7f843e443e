"""`hyperservice serve`: the backend as a daemon (HTTP API over TCP + the reconciler)."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from backend.api import create_app
from backend.core import Backend
from backend.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8765"


def parse_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or ':PORT' for loopback) → (host, port); ValueError if off."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--listen takes HOST:PORT, e.g. {DEFAULT_LISTEN}; got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(listen: str = DEFAULT_LISTEN, token: str | None = None, settings: Settings | None = None) -> None:
    host, port = parse_listen(listen)
    if not is_loopback(host) and not token:
        log.warning("serving on %s without --token: anyone who can reach it can run containers", host)
    backend = Backend(settings or Settings())
    backend.start()
    try:
        uvicorn.run(create_app(backend, token), host=host, port=port, log_level="info")
    finally:
        backend.close()
