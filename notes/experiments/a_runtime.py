"""Experiment a(ii): change the server set through the runtime API (no reload), using backend/haproxy.py.

Steady load through the published address while scaling 2->5->2 several times; count failures.
Scale up  = start replicas, assign spare slots (gated: DOWN until `rise` checks pass).
Scale down = release slots (maint), wait until their session count is 0, then remove the replicas.
Usage: python a_runtime.py [--cycles N] [--threads N] [--wrk]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.2", 8080


def cfg_for(assigned: dict[str, str], interval: int, protocol: str = "http") -> hx.BalancerConfig:
    return hx.BalancerConfig(
        service="hbx", protocol=protocol, algorithm="roundrobin", session_affinity=False, container_port=80,
        health_interval=interval, health_fall=3, health_rise=2, servers=tuple(sorted(assigned.items())), slots=8,
    )


def run_cli(lb, commands: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = ""
    for line in hx.command_lines(commands):
        res = lb.exec_run(hx.runtime_exec_argv(line))
        out += res.output.decode()
    errors = hx.runtime_errors(out)
    assert not errors, errors
    return time.perf_counter() - t0, out


def query(lb, command: str) -> str:
    return lb.exec_run(hx.runtime_exec_argv(command)).output.decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--interval", type=int, default=1)
    ap.add_argument("--wrk", action="store_true", help="also run wrk (keep-alive clients) during the cycles")
    args = ap.parse_args()
    lab.cleanup()
    try:
        webs = {}
        assigned: dict[str, str] = {}
        for i in (1, 2):
            webs[i] = lab.start_web(i)
            assigned[hx.slot_name(i)] = f"{webs[i][1]}:80"
        lb = lab.start_lb(hx.render_config(cfg_for(assigned, args.interval)), HOST, PORT, hx.LISTEN_PORT)
        time.sleep(1)
        # exec latency alone
        lat = []
        for _ in range(20):
            t0 = time.perf_counter()
            query(lb, hx.SHOW_SERVERS_STATE)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        print(f"exec+nc round trip: median {lat[10] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
        timings = []
        wrk = None
        if args.wrk:
            # bounded (10 min at most), stopped with SIGINT (wrk then prints its summary) when the cycles end
            wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d600s", "--timeout", "10s", f"http://{HOST}:{PORT}/"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with lab.Load(HOST, PORT, threads=args.threads) as load:
            time.sleep(1)
            for cycle in range(args.cycles):
                t_start = time.perf_counter()
                for i in (3, 4, 5):
                    webs[i] = lab.start_web(i)
                t_started = time.perf_counter()
                commands = []
                for i in (3, 4, 5):
                    commands += hx.assign_slot_commands(hx.slot_name(i), webs[i][1], 80)
                    assigned[hx.slot_name(i)] = f"{webs[i][1]}:80"
                t_cmd, _ = run_cli(lb, commands)
                t0 = time.perf_counter()
                lab.put_files(lb, {"haproxy.cfg": hx.render_config(cfg_for(assigned, args.interval)).encode()})
                t_put = time.perf_counter() - t0
                # until the three new slots are UP
                t0 = time.perf_counter()
                while True:
                    st = hx.parse_servers_state(query(lb, hx.SHOW_SERVERS_STATE))
                    if all(st[hx.slot_name(i)].state == "UP" for i in (3, 4, 5)):
                        break
                    time.sleep(0.05)
                t_up = time.perf_counter() - t0
                timings.append(f"up  : start 3 replicas {t_started - t_start:.2f}s, assign exec {t_cmd * 1000:.0f} ms, "
                               f"put_archive cfg {t_put * 1000:.0f} ms, UP after {t_up:.2f}s")
                time.sleep(2)
                commands = []
                for i in (3, 4, 5):
                    commands += hx.release_slot_commands(hx.slot_name(i))
                    assigned.pop(hx.slot_name(i))
                t_cmd, _ = run_cli(lb, commands)
                t0 = time.perf_counter()
                polls = 0
                while True:
                    polls += 1
                    counts = hx.parse_session_counts(query(lb, hx.SHOW_SERVER_STATS))
                    if all(counts.get(hx.slot_name(i), 0) == 0 for i in (3, 4, 5)):
                        break
                    time.sleep(0.05)
                t_drain = time.perf_counter() - t0
                for i in (3, 4, 5):
                    webs.pop(i)[0].remove(force=True)
                lab.put_files(lb, {"haproxy.cfg": hx.render_config(cfg_for(assigned, args.interval)).encode()})
                timings.append(f"down: release exec {t_cmd * 1000:.0f} ms, sessions 0 after {t_drain * 1000:.0f} ms ({polls} polls)")
                time.sleep(1)
        r = load.result
        secs = r.finished - r.started
        print(f"runtime API: requests ok={r.ok} failed={r.failed} in {secs:.1f}s ({r.ok / secs:.0f} req/s)")
        print("by replica:", dict(sorted(r.by_host.items())))
        for e in r.errors:
            print("  error:", e)
        for t in timings:
            print(" ", t)
        if wrk:
            wrk.send_signal(signal.SIGINT)
            print(wrk.communicate()[0])
        print("--- lb stdout ---")
        print(lb.logs(stdout=True, stderr=False, timestamps=True).decode())
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
