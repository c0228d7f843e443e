"""Experiment a(i): change the server set by rewriting haproxy.cfg (put_archive) + SIGUSR2 to the master.

Steady load through the published address while scaling 2->5->2 several times; count failures.
The config is backend/haproxy.py's, with the current replicas in slots s1..sN (no runtime API used).
Usage: python a_reload.py [--cycles N] [--threads N] [--wrk]
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

HOST, PORT = "127.77.250.1", 8080


def config(webs: dict) -> str:
    servers = tuple((hx.slot_name(i), f"{ip}:80") for i, (_, ip) in sorted(webs.items()))
    return hx.render_config(hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, 1, 3, 2, servers, slots=8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--wrk", action="store_true", help="also run wrk (keep-alive clients) during the cycles")
    args = ap.parse_args()
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2)}
        lb = lab.start_lb(config(webs), HOST, PORT, hx.LISTEN_PORT)
        time.sleep(1)
        timings = []
        wrk = None
        if args.wrk:
            # bounded (10 min at most), stopped with SIGINT (wrk then prints its summary) when the cycles end
            wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d600s", "--timeout", "10s", f"http://{HOST}:{PORT}/"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with lab.Load(HOST, PORT, threads=args.threads) as load:
            time.sleep(1)
            for _ in range(args.cycles):
                # 2 -> 5: start the new replicas, then tell the balancer
                for i in (3, 4, 5):
                    webs[i] = lab.start_web(i)
                t0 = time.perf_counter()
                lab.put_files(lb, {"haproxy.cfg": config(webs).encode()})
                t1 = time.perf_counter()
                lb.kill(signal="SIGUSR2")
                t2 = time.perf_counter()
                timings.append(("up", t1 - t0, t2 - t1))
                time.sleep(2)
                # 5 -> 2: tell the balancer first, then remove the replicas once the old worker is done
                gone = {i: webs.pop(i) for i in (3, 4, 5)}
                t0 = time.perf_counter()
                lab.put_files(lb, {"haproxy.cfg": config(webs).encode()})
                t1 = time.perf_counter()
                lb.kill(signal="SIGUSR2")
                t2 = time.perf_counter()
                timings.append(("down", t1 - t0, t2 - t1))
                time.sleep(1)  # in-flight requests on the removed servers finish in the old worker
                for c, _ in gone.values():
                    c.remove(force=True)
                time.sleep(1)
        r = load.result
        secs = r.finished - r.started
        print(f"reload: requests ok={r.ok} failed={r.failed} in {secs:.1f}s ({r.ok / secs:.0f} req/s)")
        print("by replica:", dict(sorted(r.by_host.items())))
        for e in r.errors:
            print("  error:", e)
        for kind, put, sig in timings:
            print(f"  {kind}: put_archive {put * 1000:.0f} ms, kill USR2 {sig * 1000:.0f} ms")
        if wrk:
            wrk.send_signal(signal.SIGINT)
            print(wrk.communicate()[0])
        print("processes:", [p[-1] for p in lb.top()["Processes"]])
        print("--- master/worker notices (stderr) ---")
        for line in lb.logs(stdout=False, stderr=True).decode().splitlines():
            if "NOTICE" in line or "Former worker" in line:
                print(line)
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
