"""Owns everything HAProxy-specific about a service's balancer: haproxy.cfg, runtime-API commands, health-log parsing.

Pure text in, text out: no Docker calls here (the Docker driver copies `balancer_files()` into the
balancer container and runs the `*_exec_argv()` commands there). Written for HAProxy 2.6 (the
offline test image; every config is checked with `haproxy -c` in tests/test_haproxy_config.py) and
the current LTS 3.x (the official `haproxy:lts-alpine` image), using only directives, CLI commands
and log messages that 3.x kept.

How a balancer is driven (measured in notes/haproxy-findings.md):

* The config has a fixed number of server *slots* (`s1` .. `sN`) in the backend `replicas`. A
  replica occupies one slot. Spare slots point at a placeholder address: the lowest ones are *armed*
  (weight 0, so no traffic, but checked every DOWN_CHECK_MS), the rest `disabled`. An armed slot's
  check timer already runs fast, so a replica assigned to it is checked at once; HAProxy 2.6 has no
  runtime command to start a check, and a slot leaving maintenance waits up to a whole `inter`.
* The server set changes through the runtime API, without a reload: `assign_slot_commands()` points
  a spare slot at a new replica and keeps it out of rotation until it has passed `rise` checks (also
  when a new container takes a slot at the same address: `reconcile_commands(regate=...)`);
  `release_slot_commands()` takes a replica out of rotation while its in-flight requests finish.
* Failures are found fast: `timeout check` bounds a check of a replica that accepts but never
  answers (hung, paused), `fastinter` confirms a first failure quickly, `observe layer4` marks a
  replica down from live traffic after a few consecutive failed connections, and a request whose
  connection failed (`timeout connect` is short: the replicas sit on the same bridge) is retried on
  another replica (`retries`, `option redispatch`); in http mode an idempotent request whose replica
  closed without answering is retried too (`retry-on ... empty-response`).
  The commands reach HAProxy through `docker exec <lb> sh -c '... | busybox nc 127.0.0.1 <admin port>'`
  (`runtime_exec_argv()`), which works with a remote DOCKER_HOST too. The balancer runs in the host's
  network namespace (it binds IP:ServicePort itself, no docker-proxy), so its runtime API listens on a
  port of the host's loopback chosen per balancer and answers only a client that sends the
  balancer's secret first (`runtime-api` in the config; the secret is a file in the container).
* The config file is re-rendered with the current assignments after each change (so a restarted
  container comes back with the right servers); a reload is only needed when the slot count has to
  grow: `reload_exec_argv()` (SIGUSR2 to the master, server states carried over, seamless).
* Health reaches the backend by following the balancer container's stdout: `option
  log-health-checks` + `log stdout format raw` print one line per check result and state change,
  which `parse_health_line()` turns into a `HealthEvent`; `parse_servers_state()` reads the
  snapshot (`show servers state`) taken once when the backend (re)attaches; `HealthBoard` turns
  both into each replica's UP / DOWN / starting with since-when.
* What went through it: `parse_stats()` reads `show stat` (SHOW_STATS) into per-front and
  per-server counters (sessions, rate, 5xx, bytes, check result) for the balancer's view.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

# --- fixed names and ports inside the balancer container ---------------------------------------

CONFIG_DIR = "/usr/local/etc/haproxy"
CONFIG_PATH = f"{CONFIG_DIR}/haproxy.cfg"  # where the official image's CMD reads its config
CERT_PATH = f"{CONFIG_DIR}/service.pem"  # httpsTerm: certificate chain + key, copied next to the config
# The balancer's private files, in a directory of root's inside the container. The master process
# runs as root (it binds IP:ServicePort, ports < 1024 too) with every capability dropped but the few
# it needs, so it can only read and write files root owns; the worker runs as user haproxy.
PRIVATE_DIR = "/var/lib/hyperservice"
# Server states saved just before a reload and loaded by the new worker, so a DOWN replica stays
# DOWN across the reload (a fresh worker would start it UP and send it traffic until its first check).
STATE_PATH = f"{PRIVATE_DIR}/server-state"
# A state file holding only its format version: loads silently and restores nothing. Copy it in when
# creating the container (otherwise every start warns "Can't open global server state file"); the
# reload puts it back once the new worker runs, so a later restart never applies stale state.
EMPTY_SERVER_STATE = "1\n"
# The runtime API. The real CLI is a unix socket in the container's private directory (its own mount
# namespace: nothing outside the container reaches it). busybox nc, the only client in both images
# (no socat in the official one), cannot speak to unix sockets, so the `runtime-api` proxy forwards
# a TCP port on the host's loopback to it, for clients that send the balancer's secret first.
# The balancer shares the host's network namespace, so that port is a host port: each balancer has
# its own (chosen from ADMIN_PORTS when it is created), and the secret keeps other local processes
# out; the replicas (other network namespaces) cannot reach the host's loopback at all.
CLI_SOCKET_PATH = f"{PRIVATE_DIR}/cli.sock"
RUNTIME_API = "runtime-api"
ADMIN_PORTS = range(20000, 30000)  # below Linux's ephemeral range (32768+): outgoing connections don't take them
# The secret is a run of spaces and tabs: the CLI skips leading blanks, so the secret can simply
# precede the command on the same line, and the CLI's answer is exactly the command's.
ADMIN_SECRET_LENGTH = 128  # characters: 128 bits
ADMIN_SECRET_PATH = f"{PRIVATE_DIR}/admin.secret"  # the secret itself: what runtime_exec_argv() sends
ADMIN_KEY_PATH = f"{PRIVATE_DIR}/admin.key"  # its hex form: the gate's pattern file
ADMIN_GATE_WAIT = "5s"  # how long the gate waits for the secret's bytes before refusing
FRONTEND = "service"
BACKEND = "replicas"  # fixed, so no user-supplied value ever becomes an HAProxy identifier
SLOT_PREFIX = "s"
# A spare slot points at a closed port of the balancer's own loopback: even if it were enabled by
# mistake, the connection would be refused and redispatched, never sent somewhere real.
SPARE_ADDRESS = "127.0.0.1:1"
# Checks of a server going up or down (`fastinter`): once a new replica passed its first check, the
# next ones come this soon (Rise 2 = UP 50 ms after the first success); a first failed check of a
# serving replica is confirmed this soon. Only servers in transition are checked this often.
FAST_CHECK_MS = 50
# Checks of a DOWN server (`downinter`), which also paces armed spare slots: a replica assigned to an
# armed slot is checked within this. Each armed spare costs one refused connect on the balancer's own
# loopback per period (8 of them at 250 ms: about 0.1 % of a CPU core, measured).
DOWN_CHECK_MS = 250
# Longest wait for a check's answer once connected (`timeout check`, never more than `inter`): a
# replica that accepts connections but does not answer (hung, paused) fails its check this soon.
CHECK_TIMEOUT_MAX = 2
# Replicas sit on the balancer's own bridge: a connect that takes longer than this is a dead or
# black-holed replica (or a full listen backlog), better retried on another replica at once.
CONNECT_TIMEOUT = "1s"
# `observe layer4`: this many consecutive failed connections of live traffic mark a replica DOWN
# (each of those requests is retried on another replica). Only connection failures count: an
# application answering 5xx is the application's business, not a reason to take replicas out.
OBSERVE_ERROR_LIMIT = 3
# Spare slots rendered armed when the config does not say: a new service's replicas and a scale-up by
# a few land on armed slots (see BalancerConfig.armed_slots).
MIN_ARMED_SLOTS = 8
AFFINITY_COOKIE = "HSID"
MAX_SLOTS = 1000
# Health-check bounds the balancer accepts (`inter <s>s fall <n> rise <n>`; HAProxy 2.6 takes these
# extremes, tests/test_hardening.py checks it with `haproxy -c`). The models validate against them.
MAX_CHECK_INTERVAL = 86400  # seconds: a day
MAX_CHECK_COUNT = 1000  # consecutive checks for fall / rise
MAXCONN = 4096  # explicit: otherwise derived from the container's file limit (memory grows with it)
STICK_TABLE_SIZE = "1m"
STICK_EXPIRE = "30m"
# HAProxy reads one CLI line into one buffer (16 kB by default); stay well below it per exec.
MAX_RUNTIME_LINE = 8000

Protocol = Literal["tcp", "http", "https", "httpsTerm"]
Algorithm = Literal["roundrobin", "leastconn", "source"]
PROTOCOLS: tuple[str, ...] = ("tcp", "http", "https", "httpsTerm")
ALGORITHMS: tuple[str, ...] = ("roundrobin", "leastconn", "source")
HTTP_PROTOCOLS = frozenset({"http", "httpsTerm"})  # balanced at layer 7, checked with HTTP

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._-]+$")  # anything that becomes one word of the config
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~/%?&=+-]*$")  # health check URI / file path: no spaces, quotes, '#'
_SLOT = re.compile(rf"^{SLOT_PREFIX}([1-9][0-9]*)$")


def _refuse_control(value: str, what: str) -> str:
    """A control character (newline above all) would end the config line and start a new directive."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters (newline, tab, NUL, ...): {value!r}")
    return value


def slot_name(index: int) -> str:
    """The server name of slot `index` (1-based): 's1', 's2', ..."""
    if not 1 <= index <= MAX_SLOTS:
        raise ValueError(f"slot index must be between 1 and {MAX_SLOTS}")
    return f"{SLOT_PREFIX}{index}"


def slot_index(name: str) -> int | None:
    """The index of slot `name` ('s3' -> 3), None when `name` is not a slot name."""
    match = _SLOT.match(name)
    return int(match.group(1)) if match else None


def split_address(address: str) -> tuple[str, int]:
    """'172.20.0.3:80' -> ('172.20.0.3', 80); ValueError unless IPv4:port (Docker bridge addresses)."""
    _refuse_control(address, "a server address")
    host, sep, port = address.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"a server address must be IPv4:port, got {address!r}") from None
    if not sep or not port.isdigit() or not 1 <= number <= 65535:
        raise ValueError(f"a server address must be IPv4:port with a port in 1-65535, got {address!r}")
    return str(ip), number


@dataclass(frozen=True)
class BalancerConfig:
    """Everything haproxy.cfg depends on; built from an already-validated ServiceSpec.

    `servers` are the occupied slots: (slot name, "ip:port") pairs, e.g. (("s1", "172.20.0.3:80"),).
    Every other slot up to `slots` is rendered as a spare (disabled) server, ready to be assigned
    at runtime. Values are checked again here: nothing with a control character or a stray word
    reaches the file (ValueError).
    """

    service: str
    protocol: Protocol
    algorithm: Algorithm
    session_affinity: bool
    listen: str  # "IP:ServicePort" the balancer binds (the service's own address, or its floating IP)
    admin_port: int  # the runtime API's port on the host's loopback (see RUNTIME_API)
    container_port: int  # the port the replicas listen on (pass it to assign_slot_commands)
    health_interval: int  # seconds between checks (HealthCheckInterval)
    health_fall: int  # consecutive failures -> DOWN (HealthCheckFall)
    health_rise: int  # consecutive successes -> UP (HealthCheckRise)
    servers: tuple[tuple[str, str], ...] = ()
    slots: int = 16
    # Spare slots s1..s<armed_slots> are armed (weight 0, checked every DOWN_CHECK_MS) rather than
    # disabled: a replica assigned to one is checked at once. Beyond it, the first check of a new
    # assignment may wait up to `health_interval`.
    armed_slots: int = MIN_ARMED_SLOTS
    health_check_path: str = "/"  # http/httpsTerm: the URI of the `GET` check
    cert_path: str = CERT_PATH  # httpsTerm only: the PEM bundle inside the container
    state_path: str = STATE_PATH  # where a reload leaves the server states for the new worker
    admin_key_path: str = ADMIN_KEY_PATH  # the runtime API's secret, hex (admin_secret_files())

    def __post_init__(self) -> None:
        for what, value in (
            ("service", self.service),
            ("protocol", self.protocol),
            ("algorithm", self.algorithm),
            ("health_check_path", self.health_check_path),
            ("cert_path", self.cert_path),
            ("state_path", self.state_path),
        ):
            if not isinstance(value, str):
                raise ValueError(f"{what} must be a string")
            _refuse_control(value, what)
        if not _SAFE_WORD.match(self.service):
            raise ValueError(f"service must be a plain name, got {self.service!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if not isinstance(self.session_affinity, bool):
            raise ValueError("session_affinity must be a boolean")
        for what, number, low, high in (
            ("container_port", self.container_port, 1, 65535),
            ("health_interval", self.health_interval, 1, MAX_CHECK_INTERVAL),
            ("health_fall", self.health_fall, 1, MAX_CHECK_COUNT),
            ("health_rise", self.health_rise, 1, MAX_CHECK_COUNT),
            ("slots", self.slots, 1, MAX_SLOTS),
            ("armed_slots", self.armed_slots, 0, MAX_SLOTS),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise ValueError(f"{what} must be an integer between {low} and {high}")
        if not isinstance(self.listen, str):
            raise ValueError("listen must be a string")
        split_address(self.listen)
        if isinstance(self.admin_port, bool) or not isinstance(self.admin_port, int) or not 1024 <= self.admin_port <= 65535:
            raise ValueError("admin_port must be an integer between 1024 and 65535")
        if not isinstance(self.admin_key_path, str) or not _SAFE_PATH.match(_refuse_control(self.admin_key_path, "admin_key_path")):
            raise ValueError("admin_key_path must be an absolute path without spaces or quotes")
        if not _SAFE_PATH.match(self.health_check_path):
            raise ValueError("health_check_path must be an absolute URI path without spaces or quotes")
        for what, path in (("cert_path", self.cert_path), ("state_path", self.state_path)):
            if not _SAFE_PATH.match(path):
                raise ValueError(f"{what} must be an absolute path without spaces or quotes")
        seen: set[str] = set()
        for name, address in self.servers:
            _refuse_control(name, "a server name")
            index = slot_index(name)
            if index is None or index > self.slots:
                raise ValueError(f"server {name!r} is not a slot name {SLOT_PREFIX}1..{SLOT_PREFIX}{self.slots}")
            if name in seen:
                raise ValueError(f"slot {name} is assigned twice")
            seen.add(name)
            split_address(address)

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def check_timeout(self) -> int:
        """Seconds a connected check waits for its answer (`timeout check`)."""
        return check_timeout(self.health_interval)


def check_timeout(health_interval: int) -> int:
    """`timeout check` for a check interval: never more than the interval, nor CHECK_TIMEOUT_MAX."""
    return min(health_interval, CHECK_TIMEOUT_MAX)


def render_config(cfg: BalancerConfig) -> str:
    """The complete haproxy.cfg for one service's balancer."""
    http = cfg.is_http
    assigned = dict(cfg.servers)
    lines = [
        f"# hyperservice balancer of service {cfg.service}: generated, rewritten on every change.",
        "global",
        # Raw lines on stdout: the Docker log stream carries them to the backend (health events).
        "    log stdout format raw local0 info",
        f"    maxconn {MAXCONN}",
        # The master binds as root (ports < 1024 work), the worker that serves traffic does not.
        "    user haproxy",
        "    group haproxy",
        # Without SO_REUSEPORT a second HAProxy (another balancer, another installation) binding the
        # same address fails and says so, instead of silently sharing its connections.
        "    noreuseport",
        # 666: the directory is root's and the container's alone; the worker connects to it (gate below).
        f"    stats socket {CLI_SOCKET_PATH} mode 666 level admin",
        "    stats timeout 30s",
        f"    server-state-file {cfg.state_path}",
    ]
    if cfg.protocol == "httpsTerm":
        lines += ["    ssl-default-bind-options ssl-min-ver TLSv1.2", "    tune.ssl.default-dh-param 2048"]
    lines += [
        "",
        # The runtime API on the host's loopback, for clients that send the secret first: the CLI
        # skips the secret's leading blanks and runs the command that follows it. Before `defaults`,
        # so none of the service's settings (mode, logging, server state) apply to it.
        f"listen {RUNTIME_API}",
        "    mode tcp",
        f"    bind 127.0.0.1:{cfg.admin_port}",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        f"    tcp-request inspect-delay {ADMIN_GATE_WAIT}",
        f"    tcp-request content reject unless {{ req.payload(0,{ADMIN_SECRET_LENGTH}),hex -m str -f {cfg.admin_key_path} }}",
        f"    server cli unix@{CLI_SOCKET_PATH}",
        "",
        "defaults",
        "    log global",
        "    load-server-state-from-file global",
        f"    mode {'http' if http else 'tcp'}",
        f"    option {'httplog' if http else 'tcplog'}",
        # Only failed or abnormal traffic is logged: the log stream stays about health.
        "    option dontlog-normal",
        f"    timeout connect {CONNECT_TIMEOUT}",
        # Without it a check of a replica that accepts but never answers lasts a whole `inter`.
        f"    timeout check {cfg.check_timeout}s",
    ]
    if http:
        lines += [
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-request 10s",
            "    timeout http-keep-alive 10s",
            "    timeout tunnel 1h",  # upgraded connections (WebSocket)
        ]
    else:
        # Plain TCP sessions may idle for long (databases, SSH...): don't cut them after a minute.
        lines += ["    timeout client 1h", "    timeout server 1h"]
    lines += [
        # A replica that refuses a connection (just started, just stopped) or does not complete it
        # within `timeout connect` (dead, black-holed) costs a retry on another replica, not a failed
        # request.
        "    retries 3",
        "    option redispatch 1",
        "",
        f"frontend {FRONTEND}",
    ]
    bind = f"    bind {cfg.listen}"
    if cfg.protocol == "httpsTerm":
        bind += f" ssl crt {cfg.cert_path} alpn h2,http/1.1"
    lines.append(bind)
    if http:
        lines.append("    option forwardfor")
        # Set, never passed through: a client must not be able to claim it came over TLS.
        scheme = "https" if cfg.protocol == "httpsTerm" else "http"
        lines.append(f"    http-request set-header X-Forwarded-Proto {scheme}")
    lines += [f"    default_backend {BACKEND}", "", f"backend {BACKEND}", f"    balance {cfg.algorithm}"]
    if cfg.algorithm == "source":
        # Consistent hashing: a replica coming or going moves only its own share of clients.
        lines.append("    hash-type consistent")
    if http:
        lines.append(f"    option httpchk GET {cfg.health_check_path}")
        # Also retry a request whose replica closed the connection without answering (crashed
        # mid-request), but only a GET/HEAD: replaying anything else could do it twice.
        lines.append("    retry-on conn-failure empty-response")
        lines.append("    http-request disable-l7-retry unless METH_GET")
    # else: a plain `check` is a TCP connect check (https is passed through untouched).
    lines.append("    option log-health-checks")
    if cfg.session_affinity:
        if http:
            secure = " secure" if cfg.protocol == "httpsTerm" else ""
            lines.append(f"    cookie {AFFINITY_COOKIE} insert indirect nocache httponly{secure}")
        else:
            lines += [
                f"    stick-table type ip size {STICK_TABLE_SIZE} expire {STICK_EXPIRE}",
                "    stick on src",
            ]
    lines.append(
        f"    default-server check inter {cfg.health_interval}s fastinter {FAST_CHECK_MS}ms downinter {DOWN_CHECK_MS}ms"
        f" fall {cfg.health_fall} rise {cfg.health_rise}"
        f" observe layer4 error-limit {OBSERVE_ERROR_LIMIT} on-error mark-down"
    )
    for index in range(1, cfg.slots + 1):
        name = slot_name(index)
        address = assigned.get(name)
        line = f"    server {name} {address or SPARE_ADDRESS}"
        if cfg.session_affinity and http:
            line += f" cookie {name}"
        if address is None:
            line += " weight 0" if index <= cfg.armed_slots else " disabled"
        lines.append(line)
    return "\n".join(lines) + "\n"


# --- runtime API ------------------------------------------------------------------------------


def _server(slot: str) -> str:
    if slot_index(slot) is None:
        raise ValueError(f"{slot!r} is not a slot name")
    return f"{BACKEND}/{slot}"


def assign_slot_commands(slot: str, ip: str, port: int) -> list[str]:
    """Point `slot` (spare, armed, released or serving) at a replica, in rotation only once it has
    passed `rise` checks.

    Not idempotent in effect: sent for a slot already serving, it takes it out of rotation until it
    passes `rise` checks again (which is what a new container at a known address needs). Use
    `reconcile_commands()` to send only what differs.

    Leaving maintenance straight to `ready` would make the server UP at once (HAProxy 2.6 starts a
    server UP and only the first failed check takes it down). Going through drain lets `health
    down` stick: the server then stays DOWN until `rise` consecutive checks pass, and HAProxy logs
    "Server replicas/sN is UP" when it enters rotation. The weight comes last (an armed spare has 0).
    """
    host, number = split_address(f"{ip}:{port}")
    server = _server(slot)
    return [
        f"set server {server} addr {host} port {number}",
        f"set server {server} state drain",
        f"set server {server} health down",
        f"set server {server} state ready",
        f"set server {server} weight 1",
    ]


def gated_slots(commands: Sequence[str]) -> set[str]:
    """The slots that `commands` put through the gate (`assign_slot_commands()`): each is DOWN now and
    enters rotation once it has passed `rise` checks."""
    gated = set()
    for command in commands:
        words = command.split()
        if words[:2] == ["set", "server"] and words[3:] == ["health", "down"] and words[2].startswith(f"{BACKEND}/"):
            gated.add(words[2].split("/", 1)[1])
    return gated


def admit_slot_command(slot: str) -> str:
    """Put a gated slot in rotation at once: for a replica that has just passed `rise` checks made
    outside the balancer (backend/first_checks.py). HAProxy logs it "is UP, changed from CLI"."""
    return f"set server {_server(slot)} health up"


def release_slot_commands(slot: str, armed: bool = False) -> list[str]:
    """Take `slot` out of rotation. Requests already on it finish (neither maintenance nor an address
    change cuts them); wait until `parse_session_counts()` shows 0 for it before stopping the replica.

    `armed`: park it as an armed spare (weight 0 first, so no new traffic, then the placeholder
    address, so its checks keep their fast pace and a later assignment is checked at once); a client
    holding its affinity cookie meanwhile is refused there and redispatched. Otherwise maintenance
    (no checks at all)."""
    server = _server(slot)
    if not armed:
        return [f"set server {server} state maint"]
    host, port = SPARE_ADDRESS.split(":")
    return [
        f"set server {server} weight 0",
        f"set server {server} addr {host} port {port}",
        f"set server {server} state ready",
    ]


SHOW_SERVERS_STATE = f"show servers state {BACKEND}"
SHOW_SERVER_STATS = "show stat -1 4 -1"  # all proxies, servers only (CSV)


def reconcile_commands(
    desired: dict[str, str],
    current: dict[str, ServerSnapshot],
    regate: Iterable[str] = (),
    armed_slots: int = 0,
) -> list[str]:
    """The runtime commands that turn the balancer's `current` slots (`parse_servers_state()`) into
    `desired` (slot -> "ip:port"): assign what is missing, points elsewhere or is parked, and the
    `regate` slots (a new container took them, maybe at the same address: it must pass its checks
    before it gets traffic); release what is serving but no longer wanted (parked armed when its
    index is at most `armed_slots`, else in maintenance); arm the spare slots up to `armed_slots`
    and disarm those beyond; leave the rest alone (their health is kept). ValueError when a desired
    slot does not exist in the running config (grow the slots: re-render + reload)."""
    regated = set(regate)
    commands: list[str] = []
    for slot, address in sorted(desired.items(), key=lambda item: slot_index(item[0]) or 0):
        ip, port = split_address(address)
        server = current.get(slot)
        if server is None:
            raise ValueError(f"slot {slot} is not in the running config")
        stale = server.address != f"{ip}:{port}" or server.state in ("MAINT", "DRAIN") or server.weight == 0
        if stale or slot in regated:
            commands += assign_slot_commands(slot, ip, port)
    for slot, server in sorted(current.items(), key=lambda item: slot_index(item[0]) or 0):
        if slot in desired:
            continue
        armed = (slot_index(slot) or 0) <= armed_slots
        if server.spare:
            if armed and (server.state == "MAINT" or server.weight != 0):
                commands += release_slot_commands(slot, armed=True)
            elif not armed and server.state != "MAINT":
                commands += release_slot_commands(slot)
        elif server.state != "MAINT" or armed:
            commands += release_slot_commands(slot, armed=armed)
    return commands


def command_lines(commands: Sequence[str]) -> list[str]:
    """Join commands into as few CLI lines (`a; b; c`) as fit in HAProxy's line buffer."""
    lines: list[str] = []
    current = ""
    for command in commands:
        _refuse_control(command, "a runtime command")
        if ";" in command:
            raise ValueError(f"a runtime command must not contain ';': {command!r}")
        candidate = f"{current}; {command}" if current else command
        if len(candidate) > MAX_RUNTIME_LINE and current:
            lines.append(current)
            candidate = command
        current = candidate
    if current:
        lines.append(current)
    return lines


def _admin_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError("the admin port must be an integer between 1024 and 65535")
    return port


def _ask_function(admin_port: int) -> str:
    """A shell function `ask LINE`: the secret (read inside the container, never on a command line),
    then LINE, to the runtime API; prints the answer (nothing at all when the gate refused)."""
    return (
        f"ask() {{ {{ busybox cat {ADMIN_SECRET_PATH} && printf '%s\\n' \"$1\"; }} "
        f"| busybox nc 127.0.0.1 {_admin_port(admin_port)}; }}; "
    )


def runtime_exec_argv(line: str, admin_port: int) -> list[str]:
    """The `docker exec` argv that sends one CLI line to the balancer's runtime API (on `admin_port`).

    The line travels as a positional argument ("$1"), never through shell parsing; the secret is
    read from its file inside the container. `busybox nc` exists in both the official alpine image
    and the offline test image (which has no `nc` link). An empty answer means the runtime API
    did not take the line (every CLI answer ends with at least a newline).
    """
    _refuse_control(line, "a runtime command line")
    return ["sh", "-c", _ask_function(admin_port) + 'ask "$1"', "hyperservice-cli", line]


def reload_exec_argv(admin_port: int, state_path: str = STATE_PATH) -> list[str]:
    """The `docker exec` argv of a seamless reload that keeps the servers' health across it.

    Saves `show servers state` to `state_path`, sends SIGUSR2 to the master (PID 1, same user),
    waits (at most 10 s) until a new worker answers on the runtime API, then empties the file again:
    a stale state file would be applied at the next container start and, measured, restores old
    ports over the config's (a replica then stays DOWN). Exit status 0 = reloaded.
    The master hands the listening socket to the new worker (no connection refused, no established
    connection cut; the old worker finishes its connections and exits).
    Only needed when the slot count grows; routine changes go through the runtime API.
    """
    if not _SAFE_PATH.match(state_path):
        raise ValueError("state_path must be an absolute path without spaces or quotes")
    script = (
        _ask_function(admin_port)
        + "pid() { ask 'show info' | busybox grep '^Pid:'; }; "
        'old=$(pid) && [ -n "$old" ] || exit 1; '
        f"ask 'show servers state' > {state_path}.new && busybox mv {state_path}.new {state_path} "
        "&& kill -USR2 1 || exit 1; "
        "i=0; while [ $i -lt 100 ]; do busybox sleep 0.1; new=$(pid); "
        '[ -n "$new" ] && [ "$new" != "$old" ] && break; i=$((i+1)); done; '
        f"printf '1\\n' > {state_path}; [ $i -lt 100 ]"
    )
    return ["sh", "-c", script]


def balancer_files(cfg: BalancerConfig, ssl_pem: str | None = None) -> dict[str, tuple[bytes, int]]:
    """What to copy into a balancer container (put_archive at "/", owner root: the master process
    reads them): absolute path -> (content, file mode). The PEM holds a private key: 0600.
    The runtime API's secret is copied once, at creation (`admin_secret_files()`)."""
    files = {
        CONFIG_PATH: (render_config(cfg).encode(), 0o644),
        cfg.state_path: (EMPTY_SERVER_STATE.encode(), 0o644),
    }
    if cfg.protocol == "httpsTerm":
        if not ssl_pem:
            raise ValueError("httpsTerm needs the PEM bundle (certificate chain + key)")
        if "\x00" in ssl_pem:
            raise ValueError("the PEM bundle must be text")
        files[cfg.cert_path] = (ssl_pem.encode(), 0o600)
    return files


def new_admin_secret() -> str:
    """A fresh runtime-API secret: ADMIN_SECRET_LENGTH random spaces and tabs (one bit each)."""
    bits = secrets.randbits(ADMIN_SECRET_LENGTH)
    return "".join(" \t"[(bits >> index) & 1] for index in range(ADMIN_SECRET_LENGTH))


def admin_secret_files(secret: str, key_path: str = ADMIN_KEY_PATH) -> dict[str, tuple[bytes, int]]:
    """The runtime API's secret as files for the container, root's only: the secret itself (sent by
    `runtime_exec_argv()`) and its hex form (the pattern the `runtime-api` gate compares with)."""
    if len(secret) != ADMIN_SECRET_LENGTH or secret.strip(" \t"):
        raise ValueError(f"the secret must be {ADMIN_SECRET_LENGTH} spaces and tabs")
    return {
        ADMIN_SECRET_PATH: (secret.encode(), 0o600),
        key_path: ((secret.encode().hex() + "\n").encode(), 0o600),
    }


@dataclass(frozen=True)
class BindFailure:
    """HAProxy could not bind one of its addresses at start-up (it then exits)."""

    address: str  # "ip:port"
    reason: str  # the system's words, e.g. "Address already in use"

    @property
    def in_use(self) -> bool:
        return "already in use" in self.reason.lower()


# 2.6: "[ALERT]    (1) : Binding [/usr/local/etc/haproxy/haproxy.cfg:23] for frontend service: cannot
# bind socket (Address already in use) for [127.77.0.1:80]"; older and newer versions word the part
# before the reason differently, so only "cannot bind socket (<reason>) ... [<address>]" is relied on.
_BIND_FAILURE = re.compile(r"cannot bind socket \((?P<reason>[^)]*)\).*?\[(?P<address>\d+\.\d+\.\d+\.\d+:\d+)\]")


def parse_bind_failure(log_text: str) -> BindFailure | None:
    """The last bind failure HAProxy reported in `log_text` (its stderr), None when there is none."""
    found = None
    for match in _BIND_FAILURE.finditer(log_text):
        found = BindFailure(match.group("address"), match.group("reason"))
    return found


# Answers that mean success: nothing at all, or an informational line.
_BENIGN_ANSWERS = (
    re.compile(r"^IP changed from .* by 'stats socket command'$"),
    re.compile(r"^no need to change the (addr|port)"),
)


def runtime_errors(output: str) -> list[str]:
    """The lines of a CLI answer to `set server ...` commands that report a failure."""
    return [
        line
        for line in (raw.strip() for raw in output.splitlines())
        if line and not any(pattern.match(line) for pattern in _BENIGN_ANSWERS)
    ]


@dataclass(frozen=True)
class ServerSnapshot:
    """One row of `show servers state`: where a slot points and how HAProxy sees it."""

    slot: str
    address: str  # "ip:port"; SPARE_ADDRESS for a never-assigned slot
    state: str  # UP, DOWN, MAINT or DRAIN (see HealthEvent.state)
    checked: bool  # False while no check has completed since start-up (still UP-by-default)
    seconds_since_change: int
    weight: int = 1  # 0: takes no traffic (an armed spare, or a slot half-way through its assignment)

    @property
    def spare(self) -> bool:
        """Points at the placeholder: never assigned, or released."""
        return self.address == SPARE_ADDRESS


# srv_op_state (server-t.h): 0 stopped, 1 starting, 2 running, 3 stopping.
# srv_admin_state bits: 0x01 forced maint, 0x02 inherited maint, 0x20 resolution maint (together
# HAProxy's "in maintenance" mask), 0x08 forced drain, 0x10 inherited drain. 0x04 only records that
# the config said `disabled`: it stays set after `state ready`, so it must not count as maintenance.
_MAINT_BITS = 0x01 | 0x02 | 0x20
_DRAIN_BITS = 0x08 | 0x10


def parse_servers_state(text: str) -> dict[str, ServerSnapshot]:
    """Parse the answer to SHOW_SERVERS_STATE (columns found by name: stable across 2.6 and 3.x)."""
    header: list[str] | None = None
    result: dict[str, ServerSnapshot] = {}
    for line in text.splitlines():
        if line.startswith("# be_id"):
            header = line[2:].split()
            continue
        if header is None or not line.strip() or line.startswith("#"):
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") != BACKEND or "srv_name" not in row:
            continue
        op_state, admin = int(row["srv_op_state"]), int(row["srv_admin_state"])
        if admin & _MAINT_BITS:
            state = "MAINT"
        elif admin & _DRAIN_BITS or op_state == 3:
            state = "DRAIN"
        else:
            state = "UP" if op_state in (1, 2) else "DOWN"
        result[row["srv_name"]] = ServerSnapshot(
            slot=row["srv_name"],
            address=f"{row['srv_addr']}:{row['srv_port']}",
            state=state,
            checked=row.get("srv_check_result", "0") != "0",  # CHK_RES_UNKNOWN = 0
            seconds_since_change=int(row["srv_time_since_last_change"]),
            weight=int(row.get("srv_uweight", "1")),
        )
    return result


def started_state(cfg: BalancerConfig) -> dict[str, ServerSnapshot]:
    """What a balancer just started with `cfg` answers to SHOW_SERVERS_STATE, as far as
    `reconcile_commands()` is concerned (addresses, weights, maintenance: armed spares weight 0,
    disabled ones in MAINT), so the first change after creating it needs no round trip to ask. Servers
    are given as UP-unchecked; by the time anyone asks, their first checks may have made them DOWN."""
    assigned = dict(cfg.servers)
    state: dict[str, ServerSnapshot] = {}
    for index in range(1, cfg.slots + 1):
        slot = slot_name(index)
        if slot in assigned:
            host, port = split_address(assigned[slot])
            state[slot] = ServerSnapshot(slot, f"{host}:{port}", "UP", False, 0)
        elif index <= cfg.armed_slots:
            state[slot] = ServerSnapshot(slot, SPARE_ADDRESS, "UP", False, 0, weight=0)
        else:
            state[slot] = ServerSnapshot(slot, SPARE_ADDRESS, "MAINT", False, 0)
    return state


def parse_session_counts(csv_text: str) -> dict[str, int]:
    """Current sessions per slot of the replicas backend, from SHOW_SERVER_STATS (CSV)."""
    rows = [line for line in csv_text.splitlines() if line.strip()]
    if not rows or not rows[0].startswith("# "):
        return {}
    reader = csv.DictReader([rows[0][2:], *rows[1:]])
    return {
        row["svname"]: int(row["scur"] or 0)
        for row in reader
        if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND")
    }


SHOW_STATS = "show stat -1 5 -1"  # all proxies: frontends and servers (CSV)


@dataclass(frozen=True)
class TrafficStats:
    """One row of `show stat` (a frontend or a server): what went through it since the balancer started.

    `state` is HAProxy's status folded to UP / DOWN / MAINT / DRAIN ("OPEN" for a frontend); `check`
    the last check's result ("L7OK 200", "L4CON", "" when none ran), `check_ms` how long it took."""

    proxy: str
    name: str  # FRONTEND or the slot (s1, s2, ...)
    state: str
    check: str
    check_ms: int
    sessions: int  # open now
    total: int  # since the balancer started
    rate: int  # sessions in the last second
    http_5xx: int
    bytes_in: int
    bytes_out: int
    address: str = ""  # a server's "ip:port"
    weight: int = 0  # a server's effective weight (0: takes no new traffic)
    seconds_since_change: int = 0

    @property
    def spare(self) -> bool:
        """A server slot pointing at the placeholder (never assigned, or released armed)."""
        return self.address == SPARE_ADDRESS


def _stat_state(status: str) -> str:
    """HAProxy's status column ("UP", "UP 1/2" going down, "DOWN 1/2" coming up, "NOLB", "MAINT (via
    ...)", "no check", "OPEN") as UP / DOWN / MAINT / DRAIN, or OPEN / STOP for a frontend."""
    word = status.split(" ", 1)[0].upper()
    if word in ("MAINT", "DRAIN", "DOWN", "OPEN", "STOP"):
        return word
    if word == "NOLB":  # stopping: no new sessions, as in drain
        return "DRAIN"
    return "UP"  # UP, UP n/m (still in rotation), "no check"


def _count(row: dict[str, str], column: str) -> int:
    value = (row.get(column) or "").strip()
    try:
        return max(0, int(value))
    except ValueError:
        return 0


def parse_stats(csv_text: str) -> list[TrafficStats]:
    """Parse the answer to SHOW_STATS: the frontend row and the replicas backend's server rows
    (columns found by name, so added columns in later versions do not matter)."""
    rows = [line for line in csv_text.splitlines() if line.strip()]
    if not rows or not rows[0].startswith("# "):
        return []
    result: list[TrafficStats] = []
    for row in csv.DictReader([rows[0][2:], *rows[1:]]):
        proxy, name = row.get("pxname") or "", row.get("svname") or ""
        frontend = proxy == FRONTEND and name == "FRONTEND"
        if not frontend and (proxy != BACKEND or slot_index(name) is None):
            continue
        check = (row.get("check_status") or "").removeprefix("* ").strip()  # "* ": a check is running
        code = (row.get("check_code") or "").strip()
        result.append(TrafficStats(
            proxy=proxy,
            name=name,
            state=_stat_state((row.get("status") or "").strip()),
            check=f"{check} {code}" if check and code else check,
            check_ms=_count(row, "check_duration") if check else 0,
            sessions=_count(row, "scur"),
            total=_count(row, "stot"),
            rate=_count(row, "rate"),
            http_5xx=_count(row, "hrsp_5xx"),
            bytes_in=_count(row, "bin"),
            bytes_out=_count(row, "bout"),
            address="" if frontend else (row.get("addr") or "").strip(),
            weight=0 if frontend else _count(row, "weight"),
            seconds_since_change=_count(row, "lastchg"),
        ))
    return result


# --- health log lines -------------------------------------------------------------------------

HealthState = Literal["UP", "DOWN", "MAINT", "DRAIN"]


@dataclass(frozen=True)
class HealthEvent:
    """One health line of the balancer's log.

    `state` is the server's state *after* the line: UP (in rotation), DOWN (failed its checks, or
    just assigned and not yet `rise` checks old), MAINT (out of rotation: spare or released),
    DRAIN (no new traffic). `transition` is True for "Server ... is ..." lines (the state changed)
    and False for "Health check for server ..." lines (one check result; the state is the one the
    server has after it, e.g. "1/2 DOWN" = still DOWN, one success towards UP).
    `at` is the Docker timestamp when the line carried one (`logs(timestamps=True)`).
    """

    backend: str
    slot: str
    state: HealthState
    transition: bool
    detail: str
    at: datetime | None = None


_DOCKER_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ")
# What stderr adds in front of the same message when HAProxy runs in the foreground (-db).
_STDERR_PREFIX = re.compile(r"^\[(?:WARNING|NOTICE|ALERT)\]\s+\(\d+\)\s+:\s+(?:CLI : )?")
_SERVER_LINE = re.compile(r"^(?:Backup )?Server (?P<backend>[^\s/]+)/(?P<slot>\S+) (?P<rest>.*?)\.?$")
_CHECK_LINE = re.compile(
    r"^Health check for (?:backup )?server (?P<backend>[^\s/]+)/(?P<slot>\S+) "
    r"(?P<result>succeeded|failed|conditionally succeeded)(?P<detail>.*), status: \d+/\d+ (?P<state>UP|DOWN)\.?$"
)


def _docker_time(match: re.Match[str]) -> datetime:
    seconds, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")  # Docker gives nanoseconds; datetime keeps microseconds
    return datetime.fromisoformat(f"{seconds}.{micro}{'+00:00' if zone == 'Z' else zone}")


def _state_of(rest: str) -> HealthState | None:
    """The state a "Server b/s <rest>" line leaves the server in (None: no change / not health)."""
    if rest.startswith(("remains in forced drain", "is leaving forced drain but remains")):
        return None
    if rest.startswith("is going DOWN for maintenance") or "enters maintenance" in rest:
        return "MAINT"
    if rest.startswith("is UP/DRAIN") or rest.startswith("enters drain state") or rest.startswith("is stopping"):
        return "DRAIN"
    if rest.startswith("is UP"):
        return "UP"
    if rest.startswith("is DOWN"):
        return "DOWN"
    return None


def parse_health_line(line: str, backend: str = BACKEND) -> HealthEvent | None:
    """A HealthEvent for a health line of `backend`, None for anything else (traffic, notices...)."""
    text = line.rstrip("\r\n")
    at = None
    stamp = _DOCKER_TIMESTAMP.match(text)
    if stamp:
        at = _docker_time(stamp)
        text = text[stamp.end():]
    text = _STDERR_PREFIX.sub("", text, count=1)
    check = _CHECK_LINE.match(text)
    if check:
        if check.group("backend") != backend:
            return None
        detail = f"{check.group('result')}{check.group('detail')}".strip(" ,")
        state_after: HealthState = "UP" if check.group("state") == "UP" else "DOWN"  # the pattern allows only these
        return HealthEvent(backend, check.group("slot"), state_after, False, detail, at)
    server = _SERVER_LINE.match(text)
    if not server or server.group("backend") != backend:
        return None
    rest = server.group("rest")
    state = _state_of(rest)
    if state is None:
        return None
    return HealthEvent(backend, server.group("slot"), state, True, rest, at)


# --- per-replica health as the product reports it ----------------------------------------------

ReplicaHealth = Literal["starting", "UP", "DOWN"]


@dataclass(frozen=True)
class SlotHealth:
    health: ReplicaHealth
    since: datetime
    gated: bool  # assigned through assign_slot_commands() and not UP yet: its DOWN lines are the gate
    owner: str = ""  # the container occupying the slot ("" : not known yet)


class HealthBoard:
    """Health of each occupied slot (UP / DOWN / starting, with since-when) from the balancer's events.

    Feed it `assigned()` when a slot is given to a replica, the `parse_servers_state()` snapshot when
    (re)attaching to a balancer, and every HealthEvent from its log stream. Rules:
    * an assigned slot is "starting" until its first UP: the DOWN lines the gate itself produces
      ("changed from CLI", "leaving forced drain", "1/2 DOWN" while rising) don't make it DOWN; a
      replica that never comes UP stays "starting" (the reconciler gives up after its own deadline);
    * a slot that is UP but not yet checked (balancer just started: HAProxy starts servers UP) is
      "starting" until its first check result, which makes it UP or DOWN;
    * MAINT/DRAIN lines don't change health: they follow the backend's own release commands;
    * health belongs to the container in the slot: when another container takes it (`claim()`), the
      slot starts over as "starting", whatever its address (a replacement often gets the same one).
    """

    def __init__(self) -> None:
        self._slots: dict[str, SlotHealth] = {}

    def get(self, slot: str) -> SlotHealth | None:
        return self._slots.get(slot)

    def all(self) -> dict[str, SlotHealth]:
        return dict(self._slots)

    def assigned(self, slot: str, at: datetime | None = None, owner: str | None = None) -> None:
        previous = self._slots.get(slot)
        kept = previous.owner if previous is not None and owner is None else owner or ""
        self._slots[slot] = SlotHealth("starting", at or _now(), gated=True, owner=kept)

    def claim(self, slot: str, owner: str, at: datetime | None = None) -> bool:
        """Container `owner` occupies `slot`. True when it replaces another container there: the slot
        is then "starting" again (and must go through the gate). An owner not known yet (a board
        rebuilt from a snapshot after a backend restart) is adopted without a reset."""
        current = self._slots.get(slot)
        if current is None or current.owner == owner:
            return False
        if not current.owner:
            self._slots[slot] = SlotHealth(current.health, current.since, current.gated, owner)
            return False
        self._slots[slot] = SlotHealth("starting", at or _now(), gated=True, owner=owner)
        return True

    def released(self, slot: str) -> None:
        self._slots.pop(slot, None)

    def load_snapshot(self, snapshot: dict[str, ServerSnapshot], at: datetime | None = None) -> None:
        """Replace what is known with a `show servers state` snapshot taken at `at`."""
        now = at or _now()
        known = self._slots
        self._slots = {}
        for slot, server in snapshot.items():
            if server.state in ("MAINT", "DRAIN") or server.spare:
                continue
            since = now - timedelta(seconds=server.seconds_since_change)
            previous = known.get(slot)
            owner = previous.owner if previous is not None else ""
            if previous is not None and previous.gated and not (server.state == "UP" and server.checked):
                self._slots[slot] = previous  # still behind its gate
            elif server.state == "UP":
                health: ReplicaHealth = "UP" if server.checked else "starting"
                self._slots[slot] = SlotHealth(health, since, gated=False, owner=owner)
            else:
                self._slots[slot] = SlotHealth("DOWN", since, gated=False, owner=owner)

    def apply(self, event: HealthEvent) -> bool:
        """Take one event into account; True when the slot's health (or since) changed."""
        current = self._slots.get(event.slot)
        if current is None or event.state in ("MAINT", "DRAIN"):
            return False
        at = event.at or _now()
        if event.state == "UP":
            if current.health == "UP":
                return False
            if current.gated and not event.transition and not event.detail.startswith("succeeded"):
                # A failed check that left the server UP: its previous container's, logged before
                # the gate took hold. A gated slot comes UP only by passing its checks.
                return False
            self._slots[event.slot] = SlotHealth("UP", at, gated=False, owner=current.owner)
            return True
        # DOWN
        if current.gated or current.health == "DOWN":
            return False
        self._slots[event.slot] = SlotHealth("DOWN", at, gated=False, owner=current.owner)
        return True


def _now() -> datetime:
    return datetime.now(UTC)
