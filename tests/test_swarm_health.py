"""Per-replica health on the swarm engine from the edge HAProxies' logs (backend/engines/swarm_health.py):
pure, fed with lines as `docker service logs --details --timestamps` relays them from HAProxy 2.6 (the
shapes recorded on the lab, notes/haproxy-findings.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from backend.engines.swarm_health import EdgeView, SlotHealth, SwarmHealthBoard, combine, parse_log_line

EDGE_A, EDGE_B = "taskaaaa", "taskbbbb"


def line(second: float, text: str, task: str = EDGE_A, node: str = "nodeA") -> str:
    whole, fraction = divmod(round(second * 1_000_000_000), 1_000_000_000)
    stamp = f"2026-11-29T10:17:{whole:02d}.{fraction:09d}Z"
    return (f"{stamp} com.docker.swarm.node.id={node},com.docker.swarm.service.id=svc,"
            f"com.docker.swarm.task.id={task} {text}")


def ns(second: float) -> int:
    return int(datetime(2026, 11, 29, 10, 17, tzinfo=UTC).timestamp()) * 1_000_000_000 + round(second * 1e9)


def resolved(second: float, slot: str, ip: str, task: str = EDGE_A, old: str = "(none)") -> list[str]:
    """What HAProxy logs when DNS gives a server-template slot an address."""
    return [line(second, f"replicas/{slot} changed its IP from {old} to {ip} by docker/dns.", task),
            line(second + 0.0001, f"Server replicas/{slot} ('tasks.web') is UP/READY (resolves again).", task),
            line(second + 0.0002, f"Server replicas/{slot} administratively READY thanks to valid DNS answer.", task)]


def passed(second: float, slot: str, status: str = "2/2 UP", task: str = EDGE_A) -> str:
    return line(second, f"Health check for server replicas/{slot} succeeded, reason: Layer7 check passed, code: 200, "
                        f"check duration: 3ms, status: {status}.", task)


def failed(second: float, slot: str, status: str = "0/2 DOWN", task: str = EDGE_A) -> list[str]:
    lines = [line(second, f"Health check for server replicas/{slot} failed, reason: Layer4 connection problem, "
                          f'info: "Connection refused", check duration: 0ms, status: {status}.', task)]
    if status.endswith("DOWN"):
        lines.append(line(second + 0.0001, f"Server replicas/{slot} is DOWN. 2 active and 0 backup servers left. "
                                           "0 sessions active, 0 requeued, 0 remaining in queue.", task))
    return lines


def gone(second: float, slot: str, task: str = EDGE_A) -> str:
    return line(second, f"Server replicas/{slot} is going DOWN for maintenance (No IP for server ). 2 active and 0 "
                        "backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.", task)


def test_a_relayed_line_names_its_task_node_and_time() -> None:
    parsed = parse_log_line(line(27.387178734, "replicas/s1 changed its IP from (none) to 10.0.1.2 by docker/dns."))
    assert parsed is not None
    assert (parsed.task, parsed.node, parsed.at_ns) == (EDGE_A, "nodeA", ns(27.387178734))
    assert parsed.text == "replicas/s1 changed its IP from (none) to 10.0.1.2 by docker/dns."
    assert parse_log_line("no timestamp here") is None
    assert parse_log_line("2026-11-29T10:17:27.1Z no-details-here text") is None


def test_a_resolved_slot_is_starting_until_a_check_passes_then_up() -> None:
    board = SwarmHealthBoard()
    board.feed(resolved(1, "s1", "10.0.1.2"))
    assert board.health("10.0.1.2", [EDGE_A])[0] == "starting"  # "UP/READY (resolves again)" is no verdict
    board.feed([passed(1.5, "s1", "1/2 DOWN")])  # rising
    assert board.health("10.0.1.2", [EDGE_A])[0] == "starting"
    board.feed([passed(2, "s1")])
    health, since = board.health("10.0.1.2", [EDGE_A])
    assert health == "UP" and since == datetime.fromtimestamp(ns(2) / 1e9, UTC)


def test_a_replica_that_never_answers_stays_starting_one_that_stops_goes_down() -> None:
    board = SwarmHealthBoard()
    board.feed([*resolved(1, "s1", "10.0.1.2"), *failed(1.1, "s1")])
    assert board.health("10.0.1.2", [EDGE_A])[0] == "starting"  # never UP: as on the docker engine
    board.feed([*resolved(2, "s2", "10.0.1.3"), passed(2.1, "s2"), *failed(5, "s2", "1/2 UP")])
    assert board.health("10.0.1.3", [EDGE_A])[0] == "UP"  # one failure: still UP
    board.feed(failed(6, "s2"))
    assert board.health("10.0.1.3", [EDGE_A])[0] == "DOWN"
    board.feed([passed(7, "s2", "1/2 DOWN"), passed(8, "s2")])
    assert board.health("10.0.1.3", [EDGE_A])[0] == "UP"


def test_a_new_address_in_a_slot_starts_over_and_a_removed_one_is_forgotten() -> None:
    board = SwarmHealthBoard()
    board.feed([*resolved(1, "s1", "10.0.1.2"), passed(1.1, "s1"), gone(3, "s1")])
    assert board.health("10.0.1.2", [EDGE_A])[0] == "starting"  # no edge has it in a slot
    assert board.edges[EDGE_A].slots == {}
    board.feed(resolved(4, "s1", "10.0.1.9"))
    assert board.health("10.0.1.9", [EDGE_A])[0] == "starting"
    board.feed([passed(4.5, "s1", "1/2 DOWN")])  # a check finishing for a slot without address: ignored
    board.feed(resolved(9, "s1", "10.0.1.7", old="10.0.1.9"))
    assert board.health("10.0.1.9", [EDGE_A])[0] == "starting"
    assert board.edges[EDGE_A].slots["s1"].address == "10.0.1.7"


def test_a_first_check_that_passes_like_the_slots_last_one_is_not_logged_so_the_grace_period_decides() -> None:
    # HAProxy logs a check only when the check status changes: a new task in a slot whose last check
    # passed, passing too, logs nothing after "resolves again".
    board = SwarmHealthBoard()
    board.feed([*resolved(1, "s1", "10.0.1.2"), passed(1.1, "s1"), gone(3, "s1"), *resolved(4, "s1", "10.0.1.9")])
    grace = 3_000_000_000
    assert board.health("10.0.1.9", [EDGE_A], ns(5), grace)[0] == "starting"  # within its grace period
    health, since = board.health("10.0.1.9", [EDGE_A], ns(7.5), grace)
    assert health == "UP" and since == datetime.fromtimestamp(ns(7) / 1e9, UTC)
    # ... but not when its first check failed (the DOWN transition is always logged)
    board.feed([gone(8, "s1"), *resolved(9, "s1", "10.0.1.4"), *failed(9.1, "s1", "0/2 DOWN")])
    assert board.health("10.0.1.4", [EDGE_A], ns(20), grace)[0] == "starting"
    # ... nor when the slot's last logged check failed (the passing one would have been logged)
    board.feed([gone(21, "s1"), *resolved(22, "s1", "10.0.1.5")])
    assert board.health("10.0.1.5", [EDGE_A], ns(30), grace)[0] == "starting"


def test_edges_combine_conservatively() -> None:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    later = datetime(2026, 11, 30, tzinfo=UTC)
    up, up_later = SlotHealth("a", "UP", at), SlotHealth("a", "UP", later)
    down, starting = SlotHealth("a", "DOWN", later), SlotHealth("a", "starting", at)
    assert combine([up, up_later]) == ("UP", later)  # UP since every edge has it UP
    assert combine([up, None]) == ("UP", at)  # an edge that has not resolved it does not check it
    assert combine([up, down]) == ("DOWN", later)  # any edge DOWN: DOWN
    assert combine([up, starting]) == ("starting", at)
    assert combine([None, None]) == ("starting", None)
    assert combine([]) == ("starting", None)


def test_every_edge_counts_and_only_running_ones() -> None:
    board = SwarmHealthBoard()
    board.feed([*resolved(1, "s1", "10.0.1.2", EDGE_A), passed(1.1, "s1", task=EDGE_A),
                *resolved(1, "s3", "10.0.1.2", EDGE_B), passed(1.2, "s3", task=EDGE_B)])
    assert board.health("10.0.1.2", [EDGE_A, EDGE_B])[0] == "UP"
    board.feed(failed(2, "s3", task=EDGE_B))
    assert board.health("10.0.1.2", [EDGE_A, EDGE_B])[0] == "DOWN"
    assert board.health("10.0.1.2", [EDGE_A])[0] == "UP"  # edge B's task no longer runs
    assert board.health("10.0.1.2", []) == ("", None)  # no edge runs: unknown
    board.forget_except([EDGE_A])
    assert set(board.edges) == {EDGE_A}


def test_lines_read_again_are_taken_once_and_reads_resume_before_the_oldest_edge_mark() -> None:
    board = SwarmHealthBoard()
    first = [*resolved(1, "s1", "10.0.1.2"), passed(1.1, "s1"), *failed(2, "s1")]
    board.feed(first)
    board.feed(first)  # an overlapping read: nothing replayed
    assert board.health("10.0.1.2", [EDGE_A])[0] == "DOWN"
    assert board.since_ns([EDGE_A]) == ns(2.0001) - 5_000_000_000
    assert board.since_ns([EDGE_A, EDGE_B]) == 0  # an edge with nothing read yet: from the start
    assert EdgeView().health_of("10.0.1.2") is None
