"""Second look: the gate that works (drain -> health down -> ready), and `add server ... cookie`
(refused on 2.6: "'cookie' option is not accepted for dynamic server", hence fixed slots)."""
import time, sys
import lab
HOST, PORT, INNER = "127.77.250.1", 8080, 18080
CFG = f"""global
  log stdout format raw local0 info
  stats socket ipv4@127.0.0.1:{lab.CLI_PORT} level admin
defaults
  log global
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind :{INNER}
  default_backend be
backend be
  balance BALANCE
  cookie HS insert indirect nocache
  option httpchk GET /
  option log-health-checks
  default-server check inter 1s fall 3 rise 2
  server web1 WEB1:80 cookie web1
  server-template s 1-3 127.0.0.1:1 disabled
"""
lab.cleanup()
w1, ip1 = lab.start_web(1)
w2, ip2 = lab.start_web(2)
lb = lab.start_lb(CFG.replace("WEB1", ip1).replace("BALANCE", sys.argv[1] if len(sys.argv) > 1 else "roundrobin"), HOST, PORT, INNER)
t0 = time.time()
def mark(s): print(f"=== {time.time()-t0:6.2f} {s}", flush=True)
def state(): print("\n".join(l for l in lab.cli(lb, "show servers state be").splitlines() if l.startswith("3 ")))
time.sleep(2)
mark("gated add s1: drain, health down, ready")
for cmd in [f"set server be/s1 addr {ip2} port 80", "set server be/s1 state drain", "set server be/s1 health down", "set server be/s1 state ready"]:
    print(cmd, "->", lab.cli(lb, cmd).strip()); state()
for _ in range(4):
    time.sleep(0.5); mark(""); state()
mark("one-line gated add s2")
print(lab.cli(lb, f"set server be/s2 addr {ip2} port 80; set server be/s2 state drain; set server be/s2 health down; set server be/s2 state ready").strip())
state()
mark("add server with cookie")
print(lab.cli(lb, f"add server be/dyn1 {ip2}:80 check inter 1s fall 3 rise 2 cookie dyn1").strip())
print(lab.cli(lb, "set server be/dyn1 state drain; set server be/dyn1 health down; enable health be/dyn1; set server be/dyn1 state ready").strip())
state()
time.sleep(3)
state()
print(lab.cli(lb, "show stat").splitlines()[0])
print("\n".join(lab.cli(lb, "show stat -1 4 -1 typed").splitlines()[:3]))
mark("logs")
print(lb.logs(stdout=True, stderr=False, timestamps=True).decode())
lab.cleanup()
