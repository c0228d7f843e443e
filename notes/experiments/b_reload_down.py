"""Experiment b2: does a reload (SIGUSR2) send traffic to a replica that is DOWN?

s1 answers 404 on / (its check fails, it is DOWN); steady load; then reload N times with an
unchanged config. Every 404 the clients see is a request the new worker sent to s1 before its first
check marked it DOWN again (2.6 starts every server UP).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.5", 8080


def main(interval: int = 2, reloads: int = 5) -> None:
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2, 3)}
        assigned = {hx.slot_name(i): f"{ip}:80" for i, (_, ip) in webs.items()}
        cfg = hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, interval, 3, 2, tuple(sorted(assigned.items())), slots=4)
        lb = lab.start_lb(hx.render_config(cfg), HOST, PORT, hx.LISTEN_PORT)
        webs[1][0].exec_run(["rm", "/www/index.html"])
        time.sleep(interval * 4 + 1)
        state = hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode())
        print("before:", {k: v.state for k, v in state.items()})
        with lab.Load(HOST, PORT, threads=8) as load:
            time.sleep(2)
            before = load.result.failed
            print(f"failures before any reload (s1 DOWN, steady): {before}")
            for _ in range(reloads):
                lb.kill(signal="SIGUSR2")
                time.sleep(interval * 2)
        r = load.result
        print(f"interval {interval}s, {reloads} reloads: ok={r.ok} failed={r.failed}; e.g. {r.errors[:2]}")
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
