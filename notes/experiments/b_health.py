"""Experiment b: health events on the balancer's log stream (HAProxy 2.6).

Follows the balancer's stdout through the Docker API (logs(stream=True, follow=True,
timestamps=True)), parses each line with backend.haproxy.parse_health_line and prints, for every
health event, the time since the scenario step that caused it and the delay between HAProxy writing
the line (Docker timestamp) and this process receiving it.
Scenario: start (2 servers) -> break s1's check -> fix it -> assign s3 (gated) -> reload while s1 is
broken -> restart the container -> kill s2's container.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lab  # noqa: E402
from backend import haproxy as hx  # noqa: E402

HOST, PORT = "127.77.250.4", 8080
INTERVAL, FALL, RISE = 1, 3, 2
T0 = time.time()
step = {"name": "start", "at": T0}
received: list[str] = []


def mark(name: str) -> None:
    step.update(name=name, at=time.time())
    print(f"--- {time.time() - T0:6.2f}s {name}", flush=True)


def follow(container) -> None:
    buf = b""
    for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=False, timestamps=True):
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            now = datetime.now(timezone.utc)
            line = raw.decode(errors="replace")
            received.append(line)
            event = hx.parse_health_line(line)
            if event is None:
                print(f"           (other) {line[31:]}", flush=True)
                continue
            lag = (now - event.at).total_seconds() * 1000 if event.at else float("nan")
            since = event.at.timestamp() - step["at"] if event.at else float("nan")
            kind = "STATE" if event.transition else "check"
            print(f"  +{since:5.2f}s after '{step['name']}' (log->backend {lag:4.1f} ms) {kind} {event.slot} -> {event.state}: {event.detail[:90]}", flush=True)


def main() -> None:
    lab.cleanup()
    try:
        webs = {i: lab.start_web(i) for i in (1, 2)}
        assigned = {hx.slot_name(i): f"{ip}:80" for i, (_, ip) in webs.items()}
        cfg = lambda: hx.BalancerConfig("hbx", "http", "roundrobin", False, 80, INTERVAL, FALL, RISE,  # noqa: E731
                                        tuple(sorted(assigned.items())), slots=4)
        lb = lab.start_lb(hx.render_config(cfg()), HOST, PORT, hx.LISTEN_PORT)
        threading.Thread(target=follow, args=(lb,), daemon=True).start()
        time.sleep(3)
        mark("break s1 (index.html removed: GET / -> 404)")
        webs[1][0].exec_run(["rm", "/www/index.html"])
        time.sleep(FALL * INTERVAL + 2)
        mark("fix s1")
        webs[1][0].exec_run(["sh", "-c", "hostname > /www/index.html"])
        time.sleep(RISE * INTERVAL + 2)
        mark("assign s3 (gated)")
        webs[3] = lab.start_web(3)
        assigned["s3"] = f"{webs[3][1]}:80"
        out = lb.exec_run(hx.runtime_exec_argv("; ".join(hx.assign_slot_commands("s3", webs[3][1], 80)))).output.decode()
        assert not hx.runtime_errors(out), out
        time.sleep(RISE * INTERVAL + 2)
        webs[1][0].exec_run(["rm", "/www/index.html"])
        time.sleep(FALL * INTERVAL + 2)
        print(hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode()))
        mark("reload (SIGUSR2) while s1 is DOWN")
        lab.put_files(lb, {"haproxy.cfg": hx.render_config(cfg()).encode()})
        lb.kill(signal="SIGUSR2")
        time.sleep(0.3)
        print(hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode()))
        time.sleep(3)
        mark("docker restart of the balancer while s1 is DOWN")
        lb.restart(timeout=5)
        threading.Thread(target=follow, args=(lb,), daemon=True).start()
        time.sleep(0.3)
        print(hx.parse_servers_state(lb.exec_run(hx.runtime_exec_argv(hx.SHOW_SERVERS_STATE)).output.decode()))
        time.sleep(4)
        mark("kill s2's container (address stops answering)")
        webs[2][0].kill()
        time.sleep(FALL * INTERVAL * 2 + 3)
        mark("end")
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
