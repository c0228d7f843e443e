"""Experiment b3: the same reloads as b_reload_down.py, but the server states are saved just before
each reload and loaded by the new worker (server-state-file + load-server-state-from-file)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.6", 8080


def main(interval: int = 2, reloads: int = 5) -> None:
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2, 3)}
        assigned = {hx.slot_name(i): f"{ip}:80" for i, (_, ip) in webs.items()}
        cfg = hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, interval, 3, 2, tuple(sorted(assigned.items())), slots=4)
        lb = lab.start_lb(hx.render_config(cfg), HOST, PORT, hx.LISTEN_PORT)
        webs[1][0].exec_run(["rm", "/www/index.html"])
        time.sleep(interval * 4 + 1)
        with lab.Load(HOST, PORT, threads=8) as load:
            time.sleep(2)
            for _ in range(reloads):
                t0 = time.perf_counter()
                res = lb.exec_run(hx.reload_exec_argv())
                took = time.perf_counter() - t0
                assert res.exit_code == 0, res.output
                time.sleep(interval * 2)
        r = load.result
        print(f"interval {interval}s, {reloads} reloads with saved state: ok={r.ok} failed={r.failed}; "
              f"last reload exec took {took * 1000:.0f} ms; e.g. {r.errors[:2]}")
        print([line for line in lb.logs(stdout=False, stderr=True).decode().splitlines() if "state" in line.lower()][:5])
        state = hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode())
        print("after:", {k: (v.state, v.seconds_since_change) for k, v in state.items()})
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
