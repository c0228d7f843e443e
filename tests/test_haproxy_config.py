"""backend/haproxy.py without Docker: every generated config passes the real `haproxy -c` (the
host's Debian 2.6, the version the offline balancer image runs), says what the spec asks for, and
refuses smuggled values; the runtime-API helpers and the health-log parser work on the exact text
HAProxy 2.6 produced in the experiments (notes/haproxy-findings.md).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend import haproxy as hx

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
SERVERS = (("s1", "172.20.0.3:8080"), ("s3", "172.20.0.4:8080"))
COMBINATIONS = list(itertools.product(hx.PROTOCOLS, hx.ALGORITHMS, (False, True)))


@pytest.fixture(scope="module")
def pem_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    trustme = pytest.importorskip("trustme")
    path = tmp_path_factory.mktemp("cert") / "service.pem"
    trustme.CA().issue_cert("svc.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("state") / "server-state"
    path.write_text(hx.EMPTY_SERVER_STATE)  # what balancer_files() puts in the container
    return str(path)


@pytest.fixture(scope="module")
def admin_key_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The runtime API's pattern file, as admin_secret_files() makes it (haproxy -c loads it)."""
    path = tmp_path_factory.mktemp("admin") / "admin.key"
    path.write_bytes(hx.admin_secret_files(hx.new_admin_secret(), str(path))[str(path)][0])
    return str(path)


def make(protocol: str = "http", algorithm: str = "roundrobin", affinity: bool = False, **changes) -> hx.BalancerConfig:
    values = dict(
        service="web",
        protocol=protocol,
        algorithm=algorithm,
        session_affinity=affinity,
        listen="127.77.0.3:80",
        admin_port=23456,
        container_port=8080,
        health_interval=5,
        health_fall=3,
        health_rise=2,
        servers=SERVERS,
        slots=4,
    )
    values.update(changes)
    return hx.BalancerConfig(**values)


def haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed on this host (Debian package 'haproxy'); tests/images/build.sh needs it too")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def sections(config: str) -> dict[str, list[str]]:
    """'backend replicas' -> its directives (stripped), in order."""
    result: dict[str, list[str]] = {}
    current = None
    for line in config.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.strip()
            result[current] = []
        else:
            assert current is not None, line
            result[current].append(line.strip())
    return result


# --- the config is valid and says what the spec asks --------------------------------------------


@pytest.mark.parametrize(("protocol", "algorithm", "affinity"), COMBINATIONS)
def test_every_combination_passes_haproxy_check(protocol, algorithm, affinity, pem_path, state_path, admin_key_path, tmp_path):
    config = hx.render_config(make(
        protocol, algorithm, affinity, cert_path=pem_path, state_path=state_path, admin_key_path=admin_key_path))
    result = haproxy_check(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output


@pytest.mark.parametrize(("protocol", "algorithm", "affinity"), COMBINATIONS)
def test_semantics_of_every_combination(protocol, algorithm, affinity, pem_path):
    cfg = make(protocol, algorithm, affinity, cert_path=pem_path)
    parts = sections(hx.render_config(cfg))
    http = protocol in ("http", "httpsTerm")
    defaults, frontend, backend = parts["defaults"], parts[f"frontend {hx.FRONTEND}"], parts[f"backend {hx.BACKEND}"]

    assert f"mode {'http' if http else 'tcp'}" in defaults
    assert "log stdout format raw local0 info" in parts["global"]
    # the master binds (as root), the worker serving traffic runs as haproxy; no port sharing
    assert {"user haproxy", "group haproxy", "noreuseport"} <= set(parts["global"])
    # the CLI only on a unix socket in the container's private directory ...
    assert [d for d in parts["global"] if d.startswith("stats socket")] == [
        f"stats socket {hx.CLI_SOCKET_PATH} mode 666 level admin"]
    assert hx.CLI_SOCKET_PATH.startswith(hx.PRIVATE_DIR + "/")
    # ... reached over the host's loopback only through the gate that wants the secret first
    assert parts[f"listen {hx.RUNTIME_API}"] == [
        "mode tcp",
        "bind 127.0.0.1:23456",
        "timeout connect 2s",
        "timeout client 30s",
        "timeout server 30s",
        f"tcp-request inspect-delay {hx.ADMIN_GATE_WAIT}",
        f"tcp-request content reject unless {{ req.payload(0,{hx.ADMIN_SECRET_LENGTH}),hex -m str -f {hx.ADMIN_KEY_PATH} }}",
        f"server cli unix@{hx.CLI_SOCKET_PATH}",
    ]
    assert "option redispatch 1" in defaults and "retries 3" in defaults
    assert "timeout connect 1s" in defaults
    assert "timeout check 2s" in defaults  # inter 5 s, capped at CHECK_TIMEOUT_MAX

    bind = [d for d in frontend if d.startswith("bind ")]
    assert len(bind) == 1 and bind[0].startswith("bind 127.77.0.3:80")  # the service's address, bound itself
    assert (f"ssl crt {pem_path}" in bind[0]) == (protocol == "httpsTerm")
    assert ("option forwardfor" in frontend) == http
    proto = [d for d in frontend if "X-Forwarded-Proto" in d]
    if http:
        assert proto == [f"http-request set-header X-Forwarded-Proto {'https' if protocol == 'httpsTerm' else 'http'}"]
    else:
        assert proto == []
    assert f"default_backend {hx.BACKEND}" in frontend

    assert f"balance {algorithm}" in backend
    assert ("hash-type consistent" in backend) == (algorithm == "source")
    assert ("option httpchk GET /" in backend) == http  # tcp/https: plain connect check
    assert "option log-health-checks" in backend
    assert ("retry-on conn-failure empty-response" in backend) == http
    assert ("http-request disable-l7-retry unless METH_GET" in backend) == http
    assert ("default-server check inter 5s fastinter 50ms downinter 250ms fall 3 rise 2"
            " observe layer4 error-limit 3 on-error mark-down") in backend

    cookie = [d for d in backend if d.startswith("cookie ")]
    stick = [d for d in backend if d.startswith("stick")]
    if affinity and http:
        assert cookie == [f"cookie {hx.AFFINITY_COOKIE} insert indirect nocache httponly"
                          + (" secure" if protocol == "httpsTerm" else "")]
        assert stick == []
    elif affinity:
        assert cookie == []
        assert stick == [f"stick-table type ip size {hx.STICK_TABLE_SIZE} expire {hx.STICK_EXPIRE}", "stick on src"]
    else:
        assert cookie == [] and stick == []

    servers = [d for d in backend if d.startswith("server ")]
    per_slot_cookie = affinity and http
    expected = []
    for index in range(1, 5):
        name = f"s{index}"
        address = dict(SERVERS).get(name)
        line = f"server {name} {address or hx.SPARE_ADDRESS}"
        line += f" cookie {name}" if per_slot_cookie else ""
        line += "" if address else " weight 0"  # spare, armed: 4 slots, all below armed_slots
        expected.append(line)
    assert servers == expected


def test_health_settings_and_check_path_reach_the_config():
    parts = sections(hx.render_config(make(health_interval=1, health_fall=7, health_rise=4, health_check_path="/healthz")))
    backend = parts[f"backend {hx.BACKEND}"]
    assert backend[[d.split()[0] for d in backend].index("default-server")].startswith(
        "default-server check inter 1s fastinter 50ms downinter 250ms fall 7 rise 4 ")
    assert "option httpchk GET /healthz" in backend
    assert "timeout check 1s" in parts["defaults"]  # never longer than the interval


def test_checks_are_fast_where_it_pays_and_bounded():
    """A hung replica's check ends after `timeout check`, not a whole interval; a first failure is
    confirmed (and a new replica's second check comes) after fastinter; a DOWN replica, or an armed
    spare slot, is checked every downinter, so a replica assigned to one is checked at once."""
    for interval, timeout in ((1, 1), (2, 2), (5, 2), (60, 2)):
        cfg = make(health_interval=interval)
        assert cfg.check_timeout == timeout
        assert f"timeout check {timeout}s" in sections(hx.render_config(cfg))["defaults"]
    default_server = next(d for d in sections(hx.render_config(make()))[f"backend {hx.BACKEND}"]
                          if d.startswith("default-server"))
    assert f"fastinter {hx.FAST_CHECK_MS}ms downinter {hx.DOWN_CHECK_MS}ms" in default_server
    assert hx.FAST_CHECK_MS < 1000 and hx.DOWN_CHECK_MS < 1000  # below the smallest HealthCheckInterval (1 s)


def test_spare_slots_are_armed_up_to_armed_slots_then_disabled():
    config = hx.render_config(make(servers=(("s2", "172.20.0.3:8080"),), slots=6, armed_slots=3))
    servers = [d for d in sections(config)[f"backend {hx.BACKEND}"] if d.startswith("server ")]
    assert servers == [
        f"server s1 {hx.SPARE_ADDRESS} weight 0",
        "server s2 172.20.0.3:8080",
        f"server s3 {hx.SPARE_ADDRESS} weight 0",
        f"server s4 {hx.SPARE_ADDRESS} disabled",
        f"server s5 {hx.SPARE_ADDRESS} disabled",
        f"server s6 {hx.SPARE_ADDRESS} disabled",
    ]
    assert make().armed_slots == hx.MIN_ARMED_SLOTS
    with pytest.raises(ValueError):
        make(armed_slots=-1)


def test_tcp_sessions_may_idle_longer_than_http_ones():
    assert "timeout client 1h" in sections(hx.render_config(make("tcp")))["defaults"]
    http_defaults = sections(hx.render_config(make("http")))["defaults"]
    assert "timeout client 60s" in http_defaults and "timeout tunnel 1h" in http_defaults


def test_many_slots_and_no_servers_are_valid(state_path, admin_key_path, tmp_path):
    config = hx.render_config(make(servers=(), slots=200, state_path=state_path, admin_key_path=admin_key_path))
    result = haproxy_check(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.count(" weight 0\n") == hx.MIN_ARMED_SLOTS
    assert config.count(" disabled\n") == 200 - hx.MIN_ARMED_SLOTS


def test_slot_names_round_trip():
    assert hx.slot_name(1) == "s1" and hx.slot_index("s12") == 12
    assert hx.slot_index("web1") is None and hx.slot_index("s0") is None
    with pytest.raises(ValueError):
        hx.slot_name(0)


# --- nothing can be smuggled in ---------------------------------------------------------------

CONTROL_CHARACTERS = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f"]
STRING_FIELDS = ["service", "protocol", "algorithm", "health_check_path", "cert_path", "state_path", "listen",
                 "admin_key_path"]


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=repr)
def test_control_character_in_any_string_is_refused(field, char):
    value = getattr(make(), field) + char + "    server evil 10.0.0.9:80"
    with pytest.raises(ValueError):
        make(**{field: value})


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=repr)
def test_control_character_in_a_server_is_refused(char):
    with pytest.raises(ValueError, match="control"):
        make(servers=(("s1", f"172.20.0.3:8080{char}    server evil 10.0.0.9:80"),))
    with pytest.raises(ValueError, match="control"):
        make(servers=((f"s1{char}", "172.20.0.3:8080"),))


@pytest.mark.parametrize(
    "changes",
    [
        {"service": "web backend"},  # a space would make a second word
        {"service": "web#x"},
        {"protocol": "udp"},
        {"algorithm": "uri"},
        {"health_check_path": "/ HTTP/1.1\\r\\nHost: x"},
        {"health_check_path": "health"},
        {"cert_path": "/a b.pem"},
        {"servers": (("s1", "172.20.0.3:8080 backup"),)},
        {"servers": (("s1", "example.com:80"),)},
        {"servers": (("s1", "172.20.0.3:0"),)},
        {"servers": (("web1", "172.20.0.3:80"),)},  # not a slot name
        {"servers": (("s5", "172.20.0.3:80"),)},  # beyond the slot count
        {"servers": (("s1", "172.20.0.3:80"), ("s1", "172.20.0.4:80"))},
        {"health_interval": 0},
        {"health_fall": "3"},
        {"container_port": 70000},
        {"slots": 0},
        {"session_affinity": "yes"},
        {"listen": ":80"},
        {"listen": "127.77.0.3"},
        {"listen": "127.77.0.3:0"},
        {"listen": "127.77.0.3:80 ssl crt /etc/passwd"},
        {"listen": "localhost:80"},
        {"admin_port": 80},  # below 1024
        {"admin_port": 70000},
        {"admin_port": "23456"},
        {"admin_key_path": "key file"},
    ],
    ids=repr,
)
def test_other_invalid_values_are_refused(changes):
    with pytest.raises(ValueError):
        make(**changes)


def test_runtime_commands_refuse_smuggling():
    with pytest.raises(ValueError):
        hx.assign_slot_commands("s1", "172.20.0.3; shutdown sessions", 80)
    with pytest.raises(ValueError):
        hx.assign_slot_commands("web1", "172.20.0.3", 80)
    with pytest.raises(ValueError):
        hx.command_lines(["show info\nshutdown frontend service"])
    with pytest.raises(ValueError):
        hx.command_lines(["show info; shutdown frontend service"])
    with pytest.raises(ValueError):
        hx.runtime_exec_argv("show info\n", 23456)
    with pytest.raises(ValueError):
        hx.runtime_exec_argv("show info", 80)


# --- runtime API helpers ----------------------------------------------------------------------


def test_assign_goes_through_drain_so_the_server_waits_for_its_checks():
    assert hx.assign_slot_commands("s3", "172.20.0.5", 80) == [
        "set server replicas/s3 addr 172.20.0.5 port 80",
        "set server replicas/s3 state drain",
        "set server replicas/s3 health down",
        "set server replicas/s3 state ready",
        "set server replicas/s3 weight 1",  # an armed spare had 0
    ]
    assert hx.release_slot_commands("s3") == ["set server replicas/s3 state maint"]
    # parked as an armed spare: no new traffic first, then the placeholder, checks keep running
    assert hx.release_slot_commands("s3", armed=True) == [
        "set server replicas/s3 weight 0",
        "set server replicas/s3 addr 127.0.0.1 port 1",
        "set server replicas/s3 state ready",
    ]


def test_command_lines_batch_within_the_cli_buffer():
    commands = [c for i in range(1, 201) for c in hx.assign_slot_commands(hx.slot_name(i), "172.20.0.5", 80)]
    lines = hx.command_lines(commands)
    assert len(lines) > 1
    assert all(len(line) <= hx.MAX_RUNTIME_LINE for line in lines)
    assert "; ".join(lines).split("; ") == commands


def test_exec_argv_passes_the_command_as_an_argument_not_as_shell_text():
    argv = hx.runtime_exec_argv("show servers state replicas", 23456)
    assert argv[:2] == ["sh", "-c"]
    assert "$1" in argv[2] and "show servers" not in argv[2]
    assert argv[-1] == "show servers state replicas"
    assert "busybox nc 127.0.0.1 23456" in argv[2]
    # the secret is read from its file inside the container, never passed on a command line
    assert f"busybox cat {hx.ADMIN_SECRET_PATH} && printf" in argv[2]
    reload = hx.reload_exec_argv(23456)
    assert "kill -USR2 1" in reload[2] and "busybox nc 127.0.0.1 23456" in reload[2]
    # the saved states are replaced by the empty file once the new worker runs
    assert reload[2].endswith(f"printf '1\\n' > {hx.STATE_PATH}; [ $i -lt 100 ]")
    with pytest.raises(ValueError):
        hx.reload_exec_argv(23456, "/tmp/x; reboot")
    with pytest.raises(ValueError):
        hx.reload_exec_argv(99)


def test_the_admin_secret_is_blanks_the_cli_skips_and_its_key_is_its_hex():
    secret = hx.new_admin_secret()
    assert len(secret) == hx.ADMIN_SECRET_LENGTH and not secret.strip(" \t")
    assert secret != hx.new_admin_secret()  # 128 random bits
    files = hx.admin_secret_files(secret)
    assert files[hx.ADMIN_SECRET_PATH] == (secret.encode(), 0o600)
    assert files[hx.ADMIN_KEY_PATH] == ((secret.encode().hex() + "\n").encode(), 0o600)
    assert all(path.startswith(hx.PRIVATE_DIR + "/") for path in files)
    for bad in ("", " " * 127, "x" * 128, " " * 127 + "\n"):
        with pytest.raises(ValueError):
            hx.admin_secret_files(bad)


def free_ports(count: int) -> list[int]:
    """Ports of 127.0.0.1 free a moment ago (the kernel's choice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def test_the_gate_passes_the_secret_and_the_cli_runs_the_command_after_it(admin_key_path, state_path, tmp_path):
    """The real 2.6 binary on the host: the runtime-api gate forwards a line that starts with the
    secret to the CLI, which answers exactly the command after it; anything else gets nothing."""
    secret = bytes.fromhex(Path(admin_key_path).read_text().strip())
    admin_port, service_port = free_ports(2)
    config = hx.render_config(make("tcp", admin_port=admin_port, listen=f"127.0.0.1:{service_port}", servers=(),
                                   state_path=state_path, admin_key_path=admin_key_path))
    # as an unprivileged process of the host, with the CLI socket in a directory of the test's
    config = config.replace(hx.CLI_SOCKET_PATH, str(tmp_path / "cli.sock"))
    config = config.replace("    user haproxy\n    group haproxy\n", "")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def send(payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as connection:
            connection.sendall(payload)
            connection.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            return answer

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = send(secret + b"show servers state replicas\n")
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert answer.startswith(b"1\n# be_id be_name")  # the command's own answer, nothing before it
        assert send(b"show servers state replicas\n") == b""
        wrong = bytes(b ^ (0x20 ^ 0x09) if i == 0 else b for i, b in enumerate(secret))  # one blank flipped
        assert send(wrong + b"show info\n") == b""
        assert send(b" " * hx.ADMIN_SECRET_LENGTH + b"show info\n") == b""
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_balancer_files(pem_path):
    pem = Path(pem_path).read_text()
    files = hx.balancer_files(make("httpsTerm"), pem)
    assert files[hx.CONFIG_PATH] == (hx.render_config(make("httpsTerm")).encode(), 0o644)
    assert files[hx.STATE_PATH] == (b"1\n", 0o644)
    assert files[hx.CERT_PATH] == (pem.encode(), 0o600)
    assert hx.CERT_PATH not in hx.balancer_files(make("http"))
    with pytest.raises(ValueError):
        hx.balancer_files(make("httpsTerm"))


def test_bind_failures_captured_from_2_6():
    log = (
        "[NOTICE]   (1) : haproxy version is 2.6.12-1+deb12u4\n"
        "[ALERT]    (1) : Binding [/usr/local/etc/haproxy/haproxy.cfg:24] for frontend service: cannot bind socket "
        "(Address already in use) for [127.77.250.9:81]\n"
        "[ALERT]    (1) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.\n"
    )
    failure = hx.parse_bind_failure(log)
    assert failure == hx.BindFailure("127.77.250.9:81", "Address already in use") and failure.in_use
    admin = hx.parse_bind_failure(
        "[ALERT]    (1) : Binding [/usr/local/etc/haproxy/haproxy.cfg:19] for proxy runtime-api: cannot bind socket "
        "(Address already in use) for [127.0.0.1:23999]\n"
    )
    assert admin is not None and admin.address == "127.0.0.1:23999"
    foreign = hx.parse_bind_failure(
        "[ALERT]    (1) : Binding [/usr/local/etc/haproxy/haproxy.cfg:24] for frontend service: cannot bind socket "
        "(Cannot assign requested address) for [10.99.99.99:81]\n"
    )
    assert foreign is not None and foreign.address == "10.99.99.99:81" and not foreign.in_use
    assert hx.parse_bind_failure("[NOTICE]   (1) : Loading success.\n") is None


def test_runtime_errors_on_answers_captured_from_2_6():
    assign_answer = "IP changed from '127.0.0.1' to '172.24.0.2', port changed from '1' to '80' by 'stats socket command'\n\n\n\n\n"
    assert hx.runtime_errors(assign_answer) == []
    assert hx.runtime_errors("\n") == []
    assert hx.runtime_errors("No such server.\n\n") == ["No such server."]
    assert hx.runtime_errors("Invalid addr '1.2.3' by 'stats socket command'\n\n") == [
        "Invalid addr '1.2.3' by 'stats socket command'"
    ]


SHOW_SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 replicas 1 s1 172.22.0.2 2 0 1 1 305 15 3 4 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 2 s2 172.22.0.3 0 0 1 1 12 15 2 0 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 3 s3 172.22.0.5 2 4 1 1 295 15 3 4 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 4 s4 172.22.0.6 0 4 1 1 0 1 0 0 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 5 s5 172.22.0.7 2 12 1 1 0 1 0 2 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 6 s6 127.0.0.1 0 5 1 1 305 1 0 0 14 0 0 0 - 1 - 0 0 - - 0
3 replicas 7 s7 172.22.0.8 2 0 1 1 0 1 0 2 6 0 0 0 - 80 - 0 0 - - 0

"""


def test_parse_servers_state_captured_from_2_6():
    state = hx.parse_servers_state(SHOW_SERVERS_STATE)
    assert state["s1"] == hx.ServerSnapshot("s1", "172.22.0.2:80", "UP", True, 305)
    assert state["s2"].state == "DOWN" and state["s2"].seconds_since_change == 12
    # 0x04 only remembers the config's `disabled`: after `state ready` the slot serves
    assert state["s3"].state == "UP"
    assert state["s4"].state == "DOWN" and not state["s4"].checked  # gated: DOWN until `rise` checks
    assert state["s5"].state == "DRAIN"  # admin 0x08|0x04
    assert state["s6"] == hx.ServerSnapshot("s6", hx.SPARE_ADDRESS, "MAINT", False, 305)
    assert state["s7"].state == "UP" and not state["s7"].checked  # just started: UP before any check


def test_reconcile_commands_send_only_what_differs():
    current = hx.parse_servers_state(SHOW_SERVERS_STATE)
    desired = {
        "s1": "172.22.0.2:80",  # unchanged, UP: left alone (keeps its health)
        "s2": "172.22.0.3:80",  # unchanged, DOWN: left alone (its checks decide)
        "s3": "172.22.0.9:80",  # now another replica: re-assigned
        "s4": "172.22.0.6:80",  # behind its gate: left alone
        "s6": "172.22.0.10:80",  # spare: assigned
        # s5 (draining) and s7 (serving) are no longer wanted: released
    }
    assert hx.reconcile_commands(desired, current) == [
        *hx.assign_slot_commands("s3", "172.22.0.9", 80),
        *hx.assign_slot_commands("s6", "172.22.0.10", 80),
        *hx.release_slot_commands("s5"),
        *hx.release_slot_commands("s7"),
    ]
    assert hx.reconcile_commands({"s1": "172.22.0.2:80", "s2": "172.22.0.3:80", "s3": "172.22.0.5:80",
                                  "s4": "172.22.0.6:80", "s5": "172.22.0.7:80", "s7": "172.22.0.8:80"}, current) == [
        *hx.assign_slot_commands("s5", "172.22.0.7", 80),  # draining -> back through the gate
    ]
    with pytest.raises(ValueError, match="not in the running config"):
        hx.reconcile_commands({"s9": "172.22.0.2:80"}, current)


def test_reconcile_commands_regate_a_new_container_at_the_same_address():
    current = hx.parse_servers_state(SHOW_SERVERS_STATE)
    desired = {"s1": "172.22.0.2:80", "s2": "172.22.0.3:80"}
    assert "addr 172.22.0.2" not in " ".join(hx.reconcile_commands(desired, current))
    # s1's container was replaced by one that got the same address: through the gate again
    assert hx.reconcile_commands(desired, current, regate={"s1"})[:5] == hx.assign_slot_commands("s1", "172.22.0.2", 80)


# Captured on 2.6.12 (capture of armed/parked slots): s1 serving; s2 was an armed spare, now assigned
# (weight 1 over an initial 0); s3 released and parked (placeholder, weight 0, DOWN); s4 a disabled
# slot just assigned (gated: UP only after its checks); s5 disabled, never used.
SHOW_SERVERS_STATE_ARMED = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 replicas 1 s1 192.168.176.2 2 0 1 1 5 15 3 3 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 2 s2 192.168.176.3 2 0 1 0 3 15 3 3 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 3 s3 127.0.0.1 0 0 0 0 0 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 replicas 4 s4 192.168.176.4 2 4 1 1 0 15 3 3 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 5 s5 127.0.0.1 0 5 1 1 5 1 0 0 14 0 0 0 - 1 - 0 0 - - 0

"""


# Captured on 2.6.12 right after starting with servers=(("s1", "10.99.0.9:80"),), slots=5, armed_slots=3
# (10.99.0.9 does not exist: its first check had already failed).
SHOW_SERVERS_STATE_STARTED = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 replicas 1 s1 10.99.0.9 0 0 1 1 0 17 2 0 6 0 0 0 - 80 - 0 0 - - 0
3 replicas 2 s2 127.0.0.1 0 0 0 0 0 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 replicas 3 s3 127.0.0.1 0 0 0 0 0 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 replicas 4 s4 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 1 - 0 0 - - 0
3 replicas 5 s5 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 1 - 0 0 - - 0

"""


def test_started_state_stands_in_for_asking_a_new_balancer():
    cfg = make(servers=(("s1", "10.99.0.9:80"),), slots=5, armed_slots=3)
    started, asked = hx.started_state(cfg), hx.parse_servers_state(SHOW_SERVERS_STATE_STARTED)
    assert set(started) == set(asked)
    for slot in started:
        assert (started[slot].address, started[slot].weight, started[slot].spare, started[slot].state == "MAINT") == (
            asked[slot].address, asked[slot].weight, asked[slot].spare, asked[slot].state == "MAINT"), slot
    for desired in ({"s1": "10.99.0.9:80"}, {"s1": "10.99.0.9:80", "s2": "10.99.0.10:80"},
                    {"s2": "10.99.0.10:80", "s4": "10.99.0.11:80"}, {}):
        for armed in (0, 3, 5):
            assert hx.reconcile_commands(desired, started, (), armed) == hx.reconcile_commands(desired, asked, (), armed)


def test_armed_and_parked_slots():
    state = hx.parse_servers_state(SHOW_SERVERS_STATE_ARMED)
    assert state["s2"].weight == 1 and not state["s2"].spare
    assert state["s3"] == hx.ServerSnapshot("s3", hx.SPARE_ADDRESS, "DOWN", True, 0, weight=0)
    assert state["s3"].spare and state["s5"].spare and state["s5"].state == "MAINT"
    desired = {"s1": "192.168.176.2:80", "s2": "192.168.176.3:80", "s4": "192.168.176.4:80"}
    # nothing to do: s3 is parked armed (within armed_slots), s5 stays disabled (beyond it)
    assert hx.reconcile_commands(desired, state, armed_slots=3) == []
    # more armed slots wanted: s5 is armed from maintenance
    assert hx.reconcile_commands(desired, state, armed_slots=5) == hx.release_slot_commands("s5", armed=True)
    # fewer: the parked s3 goes to maintenance (no more checks)
    assert hx.reconcile_commands(desired, state, armed_slots=2) == hx.release_slot_commands("s3")
    # s2 leaves: parked when armed, in maintenance otherwise (in-flight requests finish either way)
    less = {"s1": "192.168.176.2:80", "s4": "192.168.176.4:80"}
    assert hx.reconcile_commands(less, state, armed_slots=3) == hx.release_slot_commands("s2", armed=True)
    assert hx.reconcile_commands(less, state, armed_slots=1) == [*hx.release_slot_commands("s2"),
                                                                 *hx.release_slot_commands("s3")]
    # a slot reused while parked (weight 0 at the right address would not do either) is assigned
    moved = {**desired, "s3": "192.168.176.9:80"}
    assert hx.reconcile_commands(moved, state, armed_slots=3) == hx.assign_slot_commands("s3", "192.168.176.9", 80)
    half = hx.parse_servers_state(SHOW_SERVERS_STATE_ARMED.replace(" s2 192.168.176.3 2 0 1 0 ", " s2 192.168.176.3 2 0 0 0 "))
    assert hx.reconcile_commands(desired, half, armed_slots=3) == hx.assign_slot_commands("s2", "192.168.176.3", 80)


SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
replicas,s1,0,0,0,1,,1,39,161,,0,,0,0,0,0,UP,1,1,0,0,0,3,0,,1,3,1,,1,,2,0,,1,L7OK,200,0,0,1,0,0,0,0,,,,1,0,0,,,,,3,,,0,0,1,1,,,,Layer7 check passed,,2,3,4,,,,172.24.0.2:80,,http,,,,,,,,0,1,0,,,0,,0,0,1,1,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
replicas,s2,0,0,2,2,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,2,0,1,,1,3,2,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,172.24.0.2:80,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
replicas,s3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,3,3,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:1,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,

"""


def test_parse_session_counts_captured_from_2_6():
    assert hx.parse_session_counts(SHOW_STAT) == {"s1": 0, "s2": 2, "s3": 0}
    assert hx.parse_session_counts("") == {}


# --- health log lines (exact text printed by HAProxy 2.6.12 in the experiments) ------------------

T = "2026-11-27T08:16:33.822975788Z "
CAPTURED = [
    # (line, (slot, state, transition) or None)
    ("Health check for server replicas/s1 succeeded, reason: Layer7 check passed, code: 200, check duration: 2ms, status: 3/3 UP.",
     ("s1", "UP", False)),
    ("Health check for server replicas/s1 failed, reason: Layer7 wrong status, code: 404, info: \"Not Found\", check duration: 2ms, status: 2/3 UP.",
     ("s1", "UP", False)),
    ("Health check for server replicas/s1 failed, reason: Layer7 wrong status, code: 404, info: \"Not Found\", check duration: 3ms, status: 0/2 DOWN.",
     ("s1", "DOWN", False)),
    ("Server replicas/s1 is DOWN. 1 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
     ("s1", "DOWN", True)),
    ("Health check for server replicas/s1 succeeded, reason: Layer7 check passed, code: 200, check duration: 6ms, status: 1/2 DOWN.",
     ("s1", "DOWN", False)),
    ("Server replicas/s1 is UP. 2 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
     ("s1", "UP", True)),
    ("Health check for server replicas/s2 failed, reason: Layer4 timeout, check duration: 1001ms, status: 2/3 UP.",
     ("s2", "UP", False)),
    ("Health check for server replicas/s1 failed, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 3ms, status: 0/2 DOWN.",
     ("s1", "DOWN", False)),
    ("Health check for server replicas/s2 succeeded, reason: Layer4 check passed, check duration: 0ms, status: 2/2 UP.",
     ("s2", "UP", False)),
    # a paused replica (accepts, never answers): `timeout check` ends each check
    ("Health check for server replicas/s2 failed, reason: Layer7 timeout, check duration: 1001ms, status: 1/2 UP.",
     ("s2", "UP", False)),
    # observe layer4 + on-error mark-down: live traffic found it
    ("Health check for server replicas/s1 failed, reason: Health analyze, info: \"Detected 3 consecutive errors, last one was: L4 unsuccessful connection\", status: 0/2 DOWN.",
     ("s1", "DOWN", False)),
    # a parked or armed spare (weight 0): not a replica's health
    ("Health check for server replicas/s3 failed, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 0ms, status: 1/2 DRAIN.",
     None),
    # a gated assignment (assign_slot_commands)
    ("Server replicas/s3 is UP/DRAIN (leaving forced maintenance).", ("s3", "DRAIN", True)),
    ("Server replicas/s3 remains in forced drain mode.", None),
    ("Server replicas/s3 is DOWN, changed from CLI. 2 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
     ("s3", "DOWN", True)),
    ("Server replicas/s3 is DOWN (leaving forced drain).", ("s3", "DOWN", True)),
    # ungated ready, drain, release
    ("Server replicas/s1 is UP/READY (leaving forced maintenance).", ("s1", "UP", True)),
    ("Server replicas/s1 enters drain state. 1 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
     ("s1", "DRAIN", True)),
    ("Server replicas/s2 is going DOWN for maintenance. 0 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
     ("s2", "MAINT", True)),
    # after a reload with saved state (stderr of the master)
    ("[WARNING]  (1) : config : Server replicas/s1 is DOWN, changed from server-state after a reload. 2 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
     None),  # "config : " prefix: a start-up message of the master, not a worker's event
    # the same messages on stderr (foreground mode) carry a prefix
    ("[WARNING]  (8) : CLI : Health check for server replicas/s1 succeeded, reason: Layer7 check passed, code: 200, check duration: 1ms, status: 1/2 DOWN.",
     ("s1", "DOWN", False)),
    ("[WARNING]  (8) : Server replicas/s1 is UP. 3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
     ("s1", "UP", True)),
    # not health
    ("backend replicas has no server available!", None),
    ("Proxy service stopped (cumulated conns: FE: 5063, BE: 0).", None),
    ("[NOTICE]   (1) : New worker (20) forked", None),
    ("192.168.176.1:46240 [27/Nov/2026:08:28:08.665] service service/<NOSRV> -1/-1/-1/-1/0 400 0 - - CR-- 1/1/0/0/0 0/0 \"<BADREQ>\"",
     None),
    ("Server other/s1 is DOWN. 0 active and 0 backup servers left.", None),  # another backend
]


@pytest.mark.parametrize(("line", "expected"), CAPTURED, ids=lambda v: v[:60] if isinstance(v, str) else None)
def test_parse_health_line_on_captured_lines(line, expected):
    event = hx.parse_health_line(line)
    if expected is None:
        assert event is None
    else:
        assert event is not None
        assert (event.slot, event.state, event.transition) == expected
        assert event.backend == hx.BACKEND and event.at is None


def test_docker_timestamp_gives_since_when():
    event = hx.parse_health_line(T + CAPTURED[3][0])
    assert event is not None and event.state == "DOWN"
    assert event.at == datetime(2026, 11, 27, 8, 16, 33, 822975, tzinfo=UTC)
    assert "1 active" in event.detail


def test_check_detail_keeps_the_reason():
    event = hx.parse_health_line(CAPTURED[2][0])
    assert event is not None
    assert event.detail == 'failed, reason: Layer7 wrong status, code: 404, info: "Not Found", check duration: 3ms'


# --- health board: what GET /services/{name}/containers reports -----------------------------------


def at(second: int) -> datetime:
    return datetime(2026, 11, 27, 8, 0, second, tzinfo=UTC)


def feed(board: hx.HealthBoard, lines: list[str], start: int) -> list[bool]:
    changes = []
    for offset, line in enumerate(lines):
        event = hx.parse_health_line(line)
        assert event is not None, line
        changes.append(board.apply(hx.HealthEvent(event.backend, event.slot, event.state, event.transition,
                                                  event.detail, at(start + offset))))
    return changes


def test_board_gated_slot_is_starting_until_up_then_down_after_failures():
    board = hx.HealthBoard()
    board.assigned("s3", at(0))
    gate = [
        "Server replicas/s3 is UP/DRAIN (leaving forced maintenance).",
        "Server replicas/s3 is DOWN, changed from CLI. 2 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
        "Server replicas/s3 is DOWN (leaving forced drain).",
        "Health check for server replicas/s3 succeeded, reason: Layer7 check passed, code: 200, check duration: 1ms, status: 1/2 DOWN.",
    ]
    assert feed(board, gate, 1) == [False, False, False, False]
    assert board.get("s3") == hx.SlotHealth("starting", at(0), gated=True)
    up = [
        "Health check for server replicas/s3 succeeded, reason: Layer7 check passed, code: 200, check duration: 4ms, status: 3/3 UP.",
        "Server replicas/s3 is UP. 3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
    ]
    assert feed(board, up, 10) == [True, False]
    assert board.get("s3") == hx.SlotHealth("UP", at(10), gated=False)
    down = [
        "Health check for server replicas/s3 failed, reason: Layer7 wrong status, code: 404, info: \"Not Found\", check duration: 1ms, status: 2/3 UP.",
        "Health check for server replicas/s3 failed, reason: Layer7 wrong status, code: 404, info: \"Not Found\", check duration: 1ms, status: 1/3 UP.",
        "Health check for server replicas/s3 failed, reason: Layer7 wrong status, code: 404, info: \"Not Found\", check duration: 1ms, status: 0/2 DOWN.",
        "Server replicas/s3 is DOWN. 2 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
    ]
    assert feed(board, down, 20) == [False, False, True, False]
    assert board.get("s3") == hx.SlotHealth("DOWN", at(22), gated=False)
    # release: maintenance lines don't change health; the slot is forgotten
    assert feed(board, ["Server replicas/s3 is going DOWN for maintenance. 1 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue."], 30) == [False]
    board.released("s3")
    assert board.get("s3") is None


def test_board_from_snapshot_after_balancer_start():
    board = hx.HealthBoard()
    board.load_snapshot(hx.parse_servers_state(SHOW_SERVERS_STATE), at=at(50))
    health = {slot: h.health for slot, h in board.all().items()}
    assert health == {"s1": "UP", "s2": "DOWN", "s3": "UP", "s4": "DOWN", "s7": "starting"}
    assert board.get("s1").since == at(50) - timedelta(seconds=305)  # srv_time_since_last_change
    # s7 was UP before any check (fresh balancer): its first check decides
    first_check = "Health check for server replicas/s7 failed, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 3ms, status: 0/2 DOWN."
    assert feed(board, [first_check], 55) == [True]
    assert board.get("s7") == hx.SlotHealth("DOWN", at(55), gated=False)


def test_board_resets_a_slot_when_a_new_container_takes_it():
    board = hx.HealthBoard()
    board.assigned("s1", at(0), owner="old")
    feed(board, ["Server replicas/s1 is UP. 3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue."], 5)
    assert board.get("s1") == hx.SlotHealth("UP", at(5), gated=False, owner="old")
    assert board.claim("s1", "old", at(6)) is False  # the same container: nothing changes
    assert board.get("s1").health == "UP"
    # a replacement in the same slot (same address, as Docker reuses it): starting, behind the gate,
    # whatever HAProxy said about its predecessor
    assert board.claim("s1", "new", at(7)) is True
    assert board.get("s1") == hx.SlotHealth("starting", at(7), gated=True, owner="new")
    gate = [
        # the killed predecessor's check, logged before the gate commands reached HAProxy (server still UP)
        "Health check for server replicas/s1 failed, reason: Layer4 timeout, check duration: 1001ms, status: 1/2 UP.",
        "Server replicas/s1 is DOWN, changed from CLI. 2 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.",
        "Health check for server replicas/s1 failed, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 0ms, status: 0/2 DOWN.",
    ]
    assert feed(board, gate, 8) == [False, False, False]  # not answering yet: still starting, neither UP nor DOWN
    assert board.get("s1").health == "starting"
    assert feed(board, ["Server replicas/s1 is UP. 3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue."], 15) == [True]
    assert board.get("s1") == hx.SlotHealth("UP", at(15), gated=False, owner="new")
    # re-assigning keeps the known owner unless told otherwise
    board.assigned("s1", at(20))
    assert board.get("s1").owner == "new"


def test_board_adopts_owners_after_a_snapshot_without_a_reset():
    """A restarted backend rebuilds the board from `show servers state`: owners are not known yet, so
    the first claim adopts them (a replica serving before the restart keeps serving)."""
    board = hx.HealthBoard()
    board.load_snapshot(hx.parse_servers_state(SHOW_SERVERS_STATE_ARMED), at=at(50))
    assert set(board.all()) == {"s1", "s2", "s4"}  # parked s3 and disabled s5 are not replicas
    assert board.claim("s1", "a", at(51)) is False
    assert board.get("s1").health == "UP" and board.get("s1").owner == "a"
    assert board.claim("s1", "b", at(52)) is True
    # a snapshot keeps the owners it knows
    board.load_snapshot(hx.parse_servers_state(SHOW_SERVERS_STATE_ARMED), at=at(53))
    assert board.get("s1").owner == "b"


def test_board_keeps_a_gated_slot_behind_its_gate_across_a_snapshot():
    board = hx.HealthBoard()
    board.assigned("s4", at(0))
    board.load_snapshot(hx.parse_servers_state(SHOW_SERVERS_STATE), at=at(1))
    assert board.get("s4") == hx.SlotHealth("starting", at(0), gated=True)
