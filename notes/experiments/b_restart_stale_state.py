"""Experiment b4: a container restart after the state file was saved by an earlier reload, with
runtime changes in between (the file is stale). Which address/state does each slot come back with?"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.7", 8080


def show(lb, label):
    st = hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode())
    print(label, {k: (v.address, v.state) for k, v in st.items()})


def main() -> None:
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2, 3, 4)}
        assigned = {"s1": f"{webs[1][1]}:80", "s2": f"{webs[2][1]}:80", "s3": f"{webs[3][1]}:80"}
        cfg = lambda: hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, 1, 3, 2, tuple(sorted(assigned.items())), slots=5)  # noqa: E731
        lb = lab.start_lb(hx.render_config(cfg()), HOST, PORT, hx.LISTEN_PORT)
        time.sleep(2)
        print("web ips:", {i: ip for i, (_, ip) in webs.items()})
        lb.exec_run(hx.reload_exec_argv())  # state file now: s1..s3 UP, s4/s5 spare
        time.sleep(2)
        show(lb, "after reload      ")
        # runtime changes after the save: s3 -> web4's address, s2 released, s4 assigned to web3
        cmds = hx.release_slot_commands("s3") + hx.assign_slot_commands("s3", webs[4][1], 80)
        cmds += hx.release_slot_commands("s2") + hx.assign_slot_commands("s4", webs[3][1], 80)
        out = "".join(lb.exec_run(hx.runtime_exec_argv(line)).output.decode() for line in hx.command_lines(cmds))
        assert not hx.runtime_errors(out), out
        assigned = {"s1": f"{webs[1][1]}:80", "s3": f"{webs[4][1]}:80", "s4": f"{webs[3][1]}:80"}
        lab.put_files(lb, {"haproxy.cfg": hx.render_config(cfg()).encode()})
        time.sleep(3)
        show(lb, "runtime, cfg saved")
        lb.restart(timeout=5)
        time.sleep(0.5)
        show(lb, "after restart     ")
        time.sleep(3)
        show(lb, "restart +3s       ")
        print("\n".join(l for l in lb.logs(stdout=False, stderr=True).decode().splitlines()[-30:] if "server-state" in l or "state file" in l))
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
