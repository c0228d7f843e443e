"""First look at the 2.6 runtime API (hand-written config, backend "be"): show servers state, a slot
left maintenance with `state ready` (UP at once), `health down` *before* `ready` (does not gate: still UP),
`add server` (dynamic server), a failing check, a killed replica. Prints every log line."""
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
  timeout check 2s
frontend fe
  bind :{INNER}
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /
  option log-health-checks
  default-server check inter 1s fall 3 rise 2
  server web1 WEB1:80
  server-template s 1-3 127.0.0.1:1 disabled
"""
lab.cleanup()
w1, ip1 = lab.start_web(1)
w2, ip2 = lab.start_web(2)
lb = lab.start_lb(CFG.replace("WEB1", ip1), HOST, PORT, INNER)
t0 = time.time()
def mark(s): print(f"=== {time.time()-t0:6.2f} {s}", flush=True)
time.sleep(3)
mark("show servers state"); print(lab.cli(lb, "show servers state be"))
mark("add s1 without gating"); print(lab.cli(lb, f"set server be/s1 addr {ip2} port 80; set server be/s1 state ready"))
print(lab.cli(lb, "show servers state be"))
time.sleep(3)
print(lab.cli(lb, "show servers state be"))
mark("drain s1"); print(lab.cli(lb, "set server be/s1 state drain"))
time.sleep(1)
mark("maint s1"); print(lab.cli(lb, "set server be/s1 state maint"))
time.sleep(1)
mark("gated add s2: health down then ready"); print(lab.cli(lb, f"set server be/s2 addr {ip2} port 80; set server be/s2 health down; set server be/s2 state ready"))
print(lab.cli(lb, "show servers state be"))
time.sleep(4)
print(lab.cli(lb, "show servers state be"))
mark("add server dynamic"); print(lab.cli(lb, f"add server be/dyn1 {ip2}:80 check inter 1s fall 3 rise 2"))
print(lab.cli(lb, "enable health be/dyn1; enable server be/dyn1"))
time.sleep(3)
print(lab.cli(lb, "show servers state be"))
mark("break web1"); w1.exec_run(["rm", "/www/index.html"])
time.sleep(5)
mark("fix web1"); w1.exec_run(["sh", "-c", "hostname > /www/index.html"])
time.sleep(4)
mark("stop web2 hard"); w2.kill()
time.sleep(5)
mark("logs")
print(lb.logs(stdout=True, stderr=False, timestamps=True).decode())
print("=== STDERR"); print(lb.logs(stdout=False, stderr=True, timestamps=True).decode())
lab.cleanup()
