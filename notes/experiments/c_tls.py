"""Experiment c: TLS passthrough (https) and TLS termination (httpsTerm) with the generated config,
plus what the replicas receive (X-Forwarded-For / -Proto) and the affinity modes.

Replicas that must speak TLS or echo headers are HAProxy containers answering with
`http-request return` (the busybox web image can do neither). Certificates come from trustme.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST = "127.77.250.8"
ca = trustme.CA()
leaf = ca.issue_cert("svc.test")
PEM = leaf.private_key_and_cert_chain_pem.bytes()
client_ctx = ssl.create_default_context()
ca.configure_trust(client_ctx)

ECHO_CFG = """global
  log stdout format raw local0 info
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend echo
  bind :{port}{ssl}
  http-request return status 200 content-type text/plain lf-string "host=%[hostname] xff=%[req.hdr(x-forwarded-for)] proto=%[req.hdr(x-forwarded-proto)] tls=%[ssl_fc]\\n"
"""


def start_echo(index: int, port: int, tls: bool):
    net = lab.network()
    c = lab.client.containers.create(lab.LB_IMAGE, name=f"hbx-lab-echo-{index}", hostname=f"echo{index}",
                                     network=net.name, labels=lab.OWNER)
    cfg = ECHO_CFG.format(port=port, ssl=" ssl crt /usr/local/etc/haproxy/r.pem" if tls else "")
    lab.put_files(c, {"haproxy.cfg": cfg.encode(), "r.pem": PEM})
    c.start()
    c.reload()
    return c, c.attrs["NetworkSettings"]["Networks"][lab.NETWORK]["IPAddress"]


def start_balancer(protocol: str, algorithm: str, affinity: bool, servers: dict[str, str], port: int):
    cfg = hx.BalancerConfig("hbx", protocol, algorithm, affinity, port, 1, 3, 2, tuple(sorted(servers.items())), slots=4)
    net = lab.network()
    c = lab.client.containers.create(lab.LB_IMAGE, name=lab.LB_NAME, network=net.name, labels=lab.OWNER,
                                     ports={f"{hx.LISTEN_PORT}/tcp": (HOST, 8443)})
    files = {"haproxy.cfg": hx.render_config(cfg).encode()}
    if protocol == "httpsTerm":
        files["service.pem"] = PEM  # tar entry uid 99, mode 0644 here; the product should use 0600
    lab.put_files(c, files)
    c.start()
    time.sleep(2.5)
    return c


def https_get(path: str = "/", cookie: str | None = None) -> tuple[int, str, str | None]:
    conn = http.client.HTTPSConnection(HOST, 8443, context=client_ctx, timeout=5)
    conn._server_hostname = "svc.test"  # noqa: SLF001 - SNI / cert name differ from the IP we dial
    conn.sock = client_ctx.wrap_socket(socket.create_connection((HOST, 8443), timeout=5), server_hostname="svc.test")
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    body = r.read().decode().strip()
    return r.status, body, r.getheader("Set-Cookie")


def peer_cert_subject() -> str:
    with client_ctx.wrap_socket(socket.create_connection((HOST, 8443), timeout=5), server_hostname="svc.test") as s:
        return str(s.getpeercert()["subject"]) + " " + s.version()


def main() -> None:
    lab.cleanup()
    try:
        # https passthrough to TLS replicas, with client-address stickiness
        echoes = {i: start_echo(i, 8443, tls=True) for i in (1, 2)}
        servers = {hx.slot_name(i): f"{ip}:8443" for i, (_, ip) in echoes.items()}
        lb = start_balancer("https", "roundrobin", True, servers, 8443)
        print("https passthrough, cert seen by client:", peer_cert_subject())
        print("https passthrough, 4 requests (affinity on src):", [https_get()[1] for _ in range(4)])
        print("  stick table:", lb.exec_run(hx.runtime_exec_argv("show table replicas")).output.decode().strip())
        lb.remove(force=True)
        lb = start_balancer("https", "roundrobin", False, servers, 8443)
        print("https passthrough, 4 requests (no affinity):", [https_get()[1] for _ in range(4)])
        lb.remove(force=True)
        for c, _ in echoes.values():
            c.remove(force=True)

        # httpsTerm to plain-HTTP replicas
        echoes = {i: start_echo(i, 80, tls=False) for i in (1, 2)}
        servers = {hx.slot_name(i): f"{ip}:80" for i, (_, ip) in echoes.items()}
        lb = start_balancer("httpsTerm", "roundrobin", True, servers, 80)
        print("httpsTerm, cert seen by client:", peer_cert_subject())
        status, body, cookie = https_get()
        print("httpsTerm first answer:", status, body, "| Set-Cookie:", cookie)
        jar = cookie.split(";")[0]
        print("httpsTerm 4 more with that cookie:", [https_get(cookie=jar)[1].split()[0] for _ in range(4)])
        print("httpsTerm 4 without cookie:", [https_get()[1].split()[0] for _ in range(4)])
        health = lb.logs(stdout=True, stderr=False).decode()
        print("httpsTerm health lines:", [e.slot + " " + e.state for e in hx.health_events(health.splitlines())])
        lb.remove(force=True)

        # plain http: XFF and the client address HAProxy sees through docker-proxy
        lb = start_balancer("http", "source", False, servers, 80)
        # start_balancer publishes on 8443; plain HTTP there
        conn = http.client.HTTPConnection(HOST, 8443, timeout=5)
        conn.request("GET", "/")
        print("http (source) answer:", conn.getresponse().read().decode().strip())
        lb.remove(force=True)
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
