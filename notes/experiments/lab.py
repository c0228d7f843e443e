"""Shared harness for the HAProxy experiments (reference material, not a test).

Everything it creates is named `hbx-lab-*`, carries the label hbx.owner=haproxy-lab, and is removed
by `cleanup()`, which selects by that label only (other people create `hbx-*` objects on this engine
too). Traffic goes only to loopback (the balancer is published on 127.77.250.x) and to the
containers created here. Run the scripts from this directory: `python a_runtime.py --wrk`.
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field

import docker

WEB_IMAGE = "hyperservice-test/web:1"
# Another balancer image (e.g. haproxy:lts-alpine where a registry is reachable) reruns every experiment on it.
LB_IMAGE = os.environ.get("HBX_LAB_LB_IMAGE", "hyperservice-test/haproxy:2.6")
NETWORK = "hbx-lab-net"
LB_NAME = "hbx-lab-lb"
OWNER = {"hbx.owner": "haproxy-lab"}
CFG_DIR = "/usr/local/etc/haproxy"
CLI_PORT = 9999

client = docker.from_env()


def cleanup() -> None:
    for c in client.containers.list(all=True, filters={"label": "hbx.owner=haproxy-lab"}):
        c.remove(force=True)
    for n in client.networks.list(filters={"label": "hbx.owner=haproxy-lab"}):
        n.remove()


def network():
    found = client.networks.list(names=[NETWORK])
    return found[0] if found else client.networks.create(NETWORK, driver="bridge", labels=OWNER)


def start_web(index: int):
    net = network()
    c = client.containers.run(WEB_IMAGE, name=f"hbx-lab-web-{index}", detach=True, labels=OWNER, network=net.name, hostname=f"web{index}")
    c.reload()
    ip = c.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    return c, ip


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.uid = info.gid = 99
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_files(container, files: dict[str, bytes]) -> None:
    assert container.put_archive(CFG_DIR, tar_of(files))


def put_absolute(container, files: dict[str, tuple[bytes, int]]) -> None:
    """backend.haproxy.balancer_files() layout: absolute path -> (content, mode), owner haproxy (99)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, 99, 99, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    assert container.put_archive("/", buf.getvalue())


def start_lb(cfg: str, host_ip: str, host_port: int, inner_port: int, extra_files: dict[str, bytes] | None = None,
             image: str = LB_IMAGE, command=None, wait: bool = True):
    net = network()
    c = client.containers.create(image, name=LB_NAME, network=net.name, command=command, labels=OWNER,
                                 ports={f"{inner_port}/tcp": (host_ip, host_port)})
    put_files(c, {"haproxy.cfg": cfg.encode(), **(extra_files or {})})
    put_absolute(c, {"/var/lib/haproxy/server-state": (b"1\n", 0o644)})  # as backend.haproxy.balancer_files()
    c.start()
    if wait:
        wait_port(host_ip, host_port)
    return c


def wait_port(host: str, port: int, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not answering")


def cli(lb, command: str) -> str:
    """One runtime-API call through `docker exec` + busybox nc (works with a remote DOCKER_HOST).

    The command travels as an argv element, never through shell parsing.
    """
    res = lb.exec_run(["sh", "-c", f'printf "%s\\n" "$1" | busybox nc 127.0.0.1 {CLI_PORT}', "hs-cli", command])
    return res.output.decode()


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    by_host: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0


class Load:
    """N threads each doing sequential HTTP/1.0 GET / (new connection per request) until stopped."""

    def __init__(self, host: str, port: int, threads: int = 8, timeout: float = 5.0):
        self.host, self.port, self.n, self.timeout = host, port, threads, timeout
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _one(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                status = data.split(b"\r\n", 1)[0]
                if b" 200 " not in status:
                    raise RuntimeError(f"status {status!r}")
                host = data.split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0].decode()
                with self._lock:
                    self.result.ok += 1
                    self.result.by_host[host] = self.result.by_host.get(host, 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with self._lock:
                    self.result.failed += 1
                    if len(self.result.errors) < 20:
                        self.result.errors.append(f"{time.time():.3f} {exc!r}")

    def __enter__(self) -> "Load":
        self.result.started = time.time()
        for _ in range(self.n):
            t = threading.Thread(target=self._one, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.result.finished = time.time()
