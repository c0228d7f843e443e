"""Helpers for the balancer tests: an echo replica image setup, raw HTTP through real sockets, load."""

from __future__ import annotations

import base64
import socket
import ssl

from bench.load import get
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
