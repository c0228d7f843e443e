import time, httpx, docker, logging, sys
logging.basicConfig(level=logging.INFO)
from backend.core import Backend
from backend.models import ServiceSpec, ServiceUpdate
from tests.conftest import make_settings
from pathlib import Path
import tempfile
client = docker.DockerClient(base_url="unix:///run/hyperservice-lab/node1/docker.sock")
b = Backend(make_settings(Path(tempfile.mkdtemp()), engine="auto"), client)
print("engine", b.engine_name)
b.start()
try:
    b.create(ServiceSpec.model_validate({"Name":"smoke","Image":"hyperservice-test/web:1","Replicas":6,"ServicePort":8081,"ContainerPort":80,"Protocol":"http","HealthCheckInterval":1}))
    for i in range(60):
        s = b.get("smoke"); print(s.Status, s.Message, s.IP)
        if s.Status == "active": break
        time.sleep(1)
    for c in b.containers("smoke"): print(c.Name, c.State, c.Node, c.Address)
    for ip in ["100.64.213.12","100.64.213.13"]:
        for _ in range(3):
            try: print(ip, httpx.get(f"http://{ip}:8081/", timeout=3).text.strip())
            except Exception as e: print(ip, e)
    print(b.logs("smoke", None, 3)[:500])
finally:
    b.delete("smoke")
    time.sleep(8)
    print([s.name for s in client.services.list()], [n.name for n in client.networks.list()])
    b.close()
