"""Experiment b5: the health lines of a tcp (connect-check) balancer: a replica that refuses the
connection, then a gated assignment that comes UP, then a release (maint)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.9", 8080


def main() -> None:
    lab.cleanup()
    try:
        w, ip = lab.start_web(1)
        # s1 points at a closed port of a live replica: connection refused
        servers = (("s1", f"{ip}:81"),)
        lb = lab.start_lb(hx.render_config(hx.BalancerConfig("hbx", "tcp", "leastconn", True, 80, 1, 2, 2, servers, slots=3)),
                          HOST, PORT, hx.LISTEN_PORT, wait=False)
        time.sleep(3)
        out = lb.exec_run(hx.runtime_exec_argv("; ".join(hx.assign_slot_commands("s2", ip, 80)))).output.decode()
        assert not hx.runtime_errors(out), out
        time.sleep(3)
        out = lb.exec_run(hx.runtime_exec_argv("; ".join(hx.release_slot_commands("s2")))).output.decode()
        time.sleep(1)
        print(lb.logs(stdout=True, stderr=False).decode())
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
