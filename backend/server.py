"""`hyperservice serve`: the backend as a daemon (HTTP API over TCP + the reconciler).

It owns what serving on a network needs beyond the API itself: where to listen (loopback by
default), which Host names requests may give (`allowed_hosts`, against DNS rebinding), and the refusal
to serve beyond loopback without a token unless the operator says `--insecure`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

import uvicorn

from backend.api import create_app
from backend.core import Backend
from backend.settings import Settings
from backend.tokens import Tokens

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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Refused(ValueError):
    """`serve` will not start as asked (the message says why and what to do)."""


def is_wildcard(host: str) -> bool:
    """0.0.0.0 or :: (every address of the machine)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def exposure_problem(host: str, token: str | Tokens | None, insecure: bool = False) -> str | None:
    """Why serving on `host` as asked would be unsafe, or None: beyond loopback, anyone who reaches
    the port could start containers on this engine, so a token is required unless `insecure`."""
    if is_loopback(host) or token or insecure:
        return None
    return (f"refusing to serve on {host} without a token: anyone who can reach it could run containers "
            "on this Docker engine. Give --token-file FILE (or --token / HYPERSERVICE_TOKEN), listen on "
            "127.0.0.1, or pass --insecure if the network in front of it is trusted")


def allowed_hosts(listen_host: str, extra: Iterable[str] = ()) -> set[str]:
    """The names a request's Host header may give: the listen address itself, the loopback names
    when listening on loopback, any IP address ("*") when listening on every address, plus the
    operator's `--allowed-host` names. A DNS name the operator did not list is refused: that is
    what a DNS-rebinding page would send."""
    from backend.api import host_name

    names = {host_name(listen_host if ":" not in listen_host else f"[{listen_host}]")}
    if is_loopback(listen_host) or is_wildcard(listen_host):
        names |= set(LOOPBACK_NAMES)
    if is_wildcard(listen_host):
        names.add("*")
    names |= {host_name(name) for name in extra if name.strip()}
    return names


def serve(
    listen: str = DEFAULT_LISTEN,
    token: str | Tokens | None = None,
    settings: Settings | None = None,
    extra_hosts: Iterable[str] = (),
    insecure: bool = False,
) -> None:
    """Run the API and the reconciler until interrupted; Refused before anything starts if unsafe."""
    host, port = parse_listen(listen)
    problem = exposure_problem(host, token, insecure)
    if problem:
        raise Refused(problem)
    if not is_loopback(host) and not token:
        log.warning("serving on %s without a token (--insecure): anyone who can reach it can run containers", host)
    if isinstance(token, Tokens):  # the names only: a token's value is never logged
        log.info("accepting the tokens of: %s", ", ".join(sorted(token.by_name)))
    hosts = allowed_hosts(host, extra_hosts)
    backend = Backend(settings or Settings())
    backend.start()
    try:
        uvicorn.run(create_app(backend, token, hosts), host=host, port=port, log_level="info")
    finally:
        backend.close()
