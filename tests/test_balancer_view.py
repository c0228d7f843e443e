"""The balancer's view (GET /services/{name}/balancer): the `show stat` parser on answers captured from
HAProxy 2.6, the folding into the API's answer, and the real thing: traffic shares under round robin."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from backend import haproxy as hx
from backend.balancer import LABEL_FRONT
from backend.core import balancer_view
from backend.docker_driver import ServiceRef
from backend.models import BalancerFront, BalancerReplica, BalancerView
from tests.conftest import WEB_IMAGE, eventually, wait_status, web_body
from tests.test_cli_verbs import cli, in_process_env  # noqa: F401  (fixtures)
from tui.cli_output import balancer_table
from tui.formatting import traffic_bar

FIXTURES = Path(__file__).parent / "fixtures"


def _captured(kind: str) -> str:
    return (FIXTURES / f"haproxy-2.6-show-stat-{kind}.csv").read_text()


def test_parse_stats_http_capture_from_2_6():
    rows = {row.name: row for row in hx.parse_stats(_captured("http"))}
    assert list(rows) == ["FRONTEND", "s1", "s2", "s3", "s4", "s5"]  # the BACKEND row is left out
    front = rows["FRONTEND"]
    assert (front.proxy, front.state, front.sessions, front.total, front.bytes_in, front.bytes_out) == (
        "service", "OPEN", 0, 11, 730, 2259)
    s1, s2 = rows["s1"], rows["s2"]
    assert (s1.state, s1.check, s1.total, s1.bytes_in, s1.bytes_out, s1.address, s1.weight) == (
        "UP", "L7OK 200", 6, 400, 1239, "172.23.0.2:80", 1)
    assert (s2.state, s2.check, s2.check_ms, s2.total) == ("DOWN", "L4TOUT", 1000, 5)  # the stopped replica
    assert s1.total + s2.total == front.total
    assert rows["s3"].spare and rows["s3"].weight == 0 and rows["s3"].check == "L4CON"  # armed spare
    assert rows["s4"].state == "MAINT" and rows["s4"].check == "" and rows["s4"].check_ms == 0  # disabled spare
    assert not s1.spare


def test_parse_stats_tcp_capture_from_2_6():
    rows = {row.name: row for row in hx.parse_stats(_captured("tcp"))}
    assert rows["s1"].state == "DRAIN"
    assert rows["s2"].state == "UP" and rows["s2"].check == "L4OK"
    assert rows["FRONTEND"].http_5xx == 0 and rows["FRONTEND"].total == 11


@pytest.mark.parametrize(("status", "state"), [
    ("UP", "UP"), ("UP 1/2", "UP"), ("DOWN 1/2", "DOWN"), ("DOWN", "DOWN"), ("no check", "UP"),
    ("MAINT", "MAINT"), ("MAINT (via replicas/s1)", "MAINT"), ("MAINT (resolution)", "MAINT"),
    ("DRAIN", "DRAIN"), ("DRAIN (agent)", "DRAIN"), ("NOLB", "DRAIN"), ("OPEN", "OPEN"),
])
def test_status_words_fold_into_four_states(status, state):
    header = "# pxname,svname,status,stot,check_status,check_code,check_duration,addr\n"
    rows = hx.parse_stats(header + f"replicas,s1,{status},3,* L7OK,200,4,10.0.0.2:80\n")
    assert rows[0].state == state
    assert rows[0].check == "L7OK 200"  # "* " (a check running now) is dropped


def test_parse_stats_ignores_garbage_and_other_proxies():
    assert hx.parse_stats("") == []
    assert hx.parse_stats("Unknown command\n") == []
    header = "# pxname,svname,status,stot,scur\n"
    text = header + "stats,FRONTEND,OPEN,1,0\nother,s1,UP,5,0\nreplicas,BACKEND,UP,9,0\nreplicas,s2,UP,x,-1\n"
    rows = hx.parse_stats(text)
    assert [(row.name, row.total, row.sessions) for row in rows] == [("s2", 0, 0)]


def test_balancer_view_folds_fronts_and_owned_replicas():
    http = hx.parse_stats(_captured("http"))
    view = balancer_view("web", 8080, [("ip", "127.0.0.9", http)], {"s1": "web-a", "s2": "web-b"})
    assert [(f.Front, f.Address, f.Total) for f in view.Fronts] == [("ip", "127.0.0.9:8080", 11)]
    assert [(r.Slot, r.Replica, r.State, r.Total) for r in view.Replicas] == [
        ("s1", "web-a", "UP", 6), ("s2", "web-b", "DOWN", 5)]  # spare slots s3..s5 left out
    assert view.Replicas[0].Share == pytest.approx(6 / 11)
    assert sum(r.Share for r in view.Replicas) == pytest.approx(1.0)


def test_balancer_view_sums_over_both_fronts_and_keeps_a_draining_leaver():
    http, tcp = hx.parse_stats(_captured("http")), hx.parse_stats(_captured("tcp"))
    view = balancer_view("web", 80, [("ip", "127.0.0.9", http), ("fip", "127.0.0.10", tcp)], {"s1": "web-a"})
    assert [f.Front for f in view.Fronts] == ["ip", "fip"]
    assert [(r.Slot, r.Total, r.BytesIn, r.State) for r in view.Replicas] == [("s1", 12, 872, "UP")]
    assert view.Replicas[0].Share == 1.0
    leaving = [hx.TrafficStats("replicas", "s7", "MAINT", "", 0, 2, 9, 0, 0, 0, 0, "10.0.0.7:80", 1)]
    view = balancer_view("web", 80, [("ip", "127.0.0.9", leaving)], {})
    assert [(r.Slot, r.Replica, r.Sessions) for r in view.Replicas] == [("s7", "", 2)]
    assert balancer_view("web", 80, [], {"s1": "web-a"}).Replicas == []


def _request(host: str, port: int) -> None:
    """One HTTP request on a new connection; the answer read to the end."""
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        while connection.recv(65536):
            pass


async def test_round_robin_shares_a_third_each(api, backend):
    body = web_body("lbview", replicas=3, Algorithm="roundrobin")
    created = await api.post("/services/create", json=body)
    assert created.status_code == 201, created.text
    service = await wait_status(api, "lbview", "active", timeout=90)

    async def all_up() -> dict | None:
        answer = (await api.get("/services/lbview/balancer")).json()
        ups = [r for r in answer["Replicas"] if r["State"] == "UP" and r["Check"].split(" ")[0] in ("L7OK", "L4OK")]
        return answer if len(ups) == 3 else None

    before = await eventually(all_up, timeout=60, what="3 replicas UP in the balancer's view")
    assert len({r["Replica"] for r in before["Replicas"]}) == 3 and all(r["Replica"] for r in before["Replicas"])

    record = backend.store.get("lbview")
    balancers = backend.reconciler.balancers
    primary = next(c for c in balancers.containers(ServiceRef(record.name, record.uid)) if c.labels.get(LABEL_FRONT) == "ip")
    live = hx.parse_stats(await asyncio.to_thread(balancers._ask, primary, hx.SHOW_STATS))  # a live 2.6 answer parses
    assert {row.name for row in live} >= {"FRONTEND", *(r["Slot"] for r in before["Replicas"])}

    requests = 300
    await asyncio.to_thread(lambda: [_request(service["IP"], service["ServicePort"]) for _ in range(requests)])

    after = (await api.get("/services/lbview/balancer")).json()
    totals_before = {r["Slot"]: r["Total"] for r in before["Replicas"]}
    deltas = {r["Slot"]: r["Total"] - totals_before[r["Slot"]] for r in after["Replicas"]}
    assert set(deltas) == set(totals_before)
    assert sum(deltas.values()) >= requests
    for slot, delta in deltas.items():
        assert abs(delta / sum(deltas.values()) - 1 / 3) <= 0.10, (slot, deltas)
    assert all(r["State"] == "UP" and r["Check"].split(" ")[0] in ("L7OK", "L4OK") for r in after["Replicas"])
    front = next(f for f in after["Fronts"] if f["Front"] == "ip")
    assert front["Total"] >= requests and front["Address"] == f"{service['IP']}:{service['ServicePort']}"
    assert sum(r["Share"] for r in after["Replicas"]) == pytest.approx(1.0)
    assert all(r["BytesOut"] > 0 for r in after["Replicas"])


async def test_balancer_view_unknown_service_is_404(api):
    answer = await api.get("/services/nope/balancer")
    assert answer.status_code == 404


# --- the CLI verb ----------------------------------------------------------------------------------


def test_balancer_table_draws_fronts_replicas_and_bars():
    view = BalancerView(Name="web", Fronts=[
        BalancerFront(Front="ip", Address="127.0.0.9:80", Sessions=1, Total=400, Rate=3, Http5xx=2, BytesIn=2048, BytesOut=0),
    ], Replicas=[
        BalancerReplica(Slot="s1", Replica="web-a", State="UP", Check="L7OK 200", CheckMs=1, Sessions=1, Total=300,
                        Rate=2, Share=0.75, Http5xx=0, BytesIn=1024, BytesOut=0),
        BalancerReplica(Slot="s2", Replica="web-\x1b[2J", State="DOWN", Check="", CheckMs=0, Sessions=0, Total=100,
                        Rate=0, Share=0.25, Http5xx=2, BytesIn=0, BytesOut=0),
    ])
    text = balancer_table(view)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["FRONT", "ADDRESS", "SESSIONS"]
    assert lines[1].split()[:4] == ["ip", "127.0.0.9:80", "1", "400"] and "2.0 KiB" in lines[1]
    s1 = next(line for line in lines if line.startswith("s1 "))
    s2 = next(line for line in lines if line.startswith("s2 "))
    assert "L7OK 200 (1 ms)" in s1 and "75.0%" in s1 and s1.endswith(traffic_bar(0.75, 20))
    assert traffic_bar(0.75, 20).count("\u2588") == 15 and traffic_bar(0.25, 20).count("\u2588") == 5
    assert "\x1b" not in text and "\u241b[2J" in s2  # a control character shows, never acts
    assert traffic_bar(0.001, 10).count("\u2588") == 1 and traffic_bar(0, 10).count("\u2588") == 0
    assert "(no replica in the balancer)" in balancer_table(BalancerView(Name="x", Fronts=[], Replicas=[]))


def test_balancer_verb_on_the_real_backend(cli, in_process_env: str):  # noqa: F811  (the fixtures)
    assert cli("create", "lbcli", "--image", WEB_IMAGE, "--replicas", "2", "--port", "80", "--wait").code == 0
    shown = cli("balancer", "lbcli", "--json")
    assert shown.code == 0, shown
    answer = shown.json()
    assert answer["Name"] == "lbcli" and [f["Front"] for f in answer["Fronts"]] == ["ip"]
    assert len(answer["Replicas"]) == 2 and all(r["Replica"].startswith("lbcli") for r in answer["Replicas"])
    table_text = cli("balancer", "lbcli")
    assert table_text.code == 0 and "FRONT" in table_text.out and "TRAFFIC" in table_text.out, table_text
    assert all(r["Replica"] in table_text.out for r in answer["Replicas"])
    missing = cli("balancer", "ghost")
    assert missing.code == 1 and "no service named ghost" in missing.err
    assert cli("rm", "lbcli", "--wait").code == 0
