"""Experiment b6: does a newly assigned slot get traffic before it passed its checks?

A replica whose check fails (GET / -> 404) is assigned under steady load, (1) with
assign_slot_commands() (drain -> health down -> ready), (2) with a plain `state ready`.
Every 404 the clients see is a request sent to the unchecked replica.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.11", 8080
INTERVAL = 2


def main() -> None:
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2, 3)}
        webs[3][0].exec_run(["rm", "/www/index.html"])  # web3 answers 404: its check fails
        servers = (("s1", f"{webs[1][1]}:80"), ("s2", f"{webs[2][1]}:80"))
        cfg = hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, INTERVAL, 3, 2, servers, slots=4)
        lb = lab.start_lb(hx.render_config(cfg), HOST, PORT, hx.LISTEN_PORT)
        time.sleep(1)
        for label, commands in (
            ("gated (drain, health down, ready)", hx.assign_slot_commands("s3", webs[3][1], 80)),
            ("plain `state ready`", [f"set server replicas/s4 addr {webs[3][1]} port 80", "set server replicas/s4 state ready"]),
        ):
            with lab.Load(HOST, PORT, threads=8) as load:
                time.sleep(1)
                out = lb.exec_run(hx.runtime_exec_argv("; ".join(commands))).output.decode()
                assert not hx.runtime_errors(out), out
                time.sleep(INTERVAL * 4)
            r = load.result
            print(f"{label}: ok={r.ok} failed={r.failed} (404 from the unchecked replica)")
        print("\n".join(l for l in lb.logs(stdout=True, stderr=False).decode().splitlines() if "s3" in l or "s4" in l))
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
