"""Experiment a(iii): established connections across a reload (SIGUSR2) and across runtime-API changes.

tcp balancer; N clients each open a connection through it and send half an HTTP request; then the
server set changes; then each client sends the rest and must get its full answer back.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.3", 8080


def cfg_for(assigned: dict[str, str], protocol: str) -> hx.BalancerConfig:
    return hx.BalancerConfig("hbx", protocol, "roundrobin", False, 80, 1, 3, 2, tuple(sorted(assigned.items())), slots=8)


def open_half(n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, PORT), timeout=10)
        s.sendall(b"GET / HTTP/1.0\r\n")
        socks.append(s)
    return socks


def finish(socks: list[socket.socket]) -> list[str]:
    answers = []
    for s in socks:
        try:
            s.sendall(b"Host: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0].decode() + " " + data.rsplit(b"\r\n\r\n", 1)[-1].split(b"\n")[0].decode())
        except OSError as exc:
            answers.append(f"ERROR {exc!r}")
        finally:
            s.close()
    return answers


def main() -> None:
    lab.cleanup()
    try:
        for protocol in ("tcp", "http"):
            webs = {i: lab.start_web(i) for i in (1, 2)}
            assigned = {hx.slot_name(i): f"{ip}:80" for i, (_, ip) in webs.items()}
            lb = lab.start_lb(hx.render_config(cfg_for(assigned, protocol)), HOST, PORT, hx.LISTEN_PORT)
            time.sleep(1.5)
            # 1) reload with a changed server set while 6 connections are half-way through a request
            socks = open_half(6)
            webs[3] = lab.start_web(3)
            assigned[hx.slot_name(3)] = f"{webs[3][1]}:80"
            lab.put_files(lb, {"haproxy.cfg": hx.render_config(cfg_for(assigned, protocol)).encode()})
            lb.kill(signal="SIGUSR2")
            time.sleep(2)
            procs = [p[-1] for p in lb.top()["Processes"]]
            answers = finish(socks)
            print(f"[{protocol}] across reload: {answers}")
            print(f"[{protocol}] processes while they were open: {procs}")
            # 2) runtime: release s3, assign s4, while 6 connections are half-way through
            socks = open_half(6)
            webs[4] = lab.start_web(4)
            line = "; ".join(hx.release_slot_commands("s3") + hx.assign_slot_commands("s4", webs[4][1], 80))
            out = lb.exec_run(hx.runtime_exec_argv(line)).output.decode()
            assert not hx.runtime_errors(out), out
            time.sleep(2)
            answers = finish(socks)
            print(f"[{protocol}] across runtime change: {answers}")
            lab.cleanup()
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
