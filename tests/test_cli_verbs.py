"""The scriptable CLI (issue 11, point 4): `hyperservice VERB ...` through the real command, `main(argv)`
(in-process backend on the real engine) or `python -m tui.cli` (a subprocess, against `serve` over TCP
with --api and --token-file): every verb, `--json` parsed, `--wait` followed on /events, exit codes
(0 ok, 1 refused or failed, 2 usage) and errors on stderr naming the field and its flag.

The pure parts (tables, the progress line, error lines) are tested on their own, without an engine.
`rollback` and `events` need routes other branches add: against stand-in backends here (one that has
them, one that predates them), and on the real backend once it offers them (skipped before).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backend.api import create_app
from backend.core import Backend
from backend.models import SERVICE_KEYS, ContainerInfo, FieldError, Revision, Service, ServiceSpec
from backend.settings import Settings
from tests.conftest import LB_IMAGE, WEB_IMAGE, WEB_IMAGE_2, remove_tenant_objects
from tests.test_hardening import serve_env, serving
from tests.test_serve import free_port
from tui.cli import main
from tui.cli_output import Progress, any_table, revisions_table, service_block, services_table, table
from tui.cli_verbs import FIELD_FLAGS, Out
from tui.client import ApiError

ROOT = Path(__file__).resolve().parents[1]
TENANT = "0123456789abcdef0123456789abcdef"
# A replica that serves and writes a log line every 0.3 s (SIGKILL: the shell loop ignores SIGTERM).
CHATTY = ["--cmd", "sh -c '/bin/serve & while true; do echo tick from $(hostname); sleep 0.3; done'",
          "--stop-signal", "SIGKILL"]


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`hyperservice ARGS...` run through `main`, its exit status and what it wrote."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def random_block() -> str:
    return f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"


@pytest.fixture
def in_process_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client) -> Iterator[str]:
    """The settings an in-process backend of the CLI reads (a data dir, pools of its own, a floating IP
    pool); answers the floating IP. Whatever the backend's tenant left on the engine goes afterwards."""
    data_dir = tmp_path / "data"
    fip = f"{random_block()}.200"
    for key, value in {
        "HYPERSERVICE_DATA_DIR": str(data_dir),
        "HYPERSERVICE_LB_IMAGE": LB_IMAGE,
        "HYPERSERVICE_ADDRESS_POOL": f"{random_block()}.0/24",
        "HYPERSERVICE_NETWORK_POOL": f"10.{random.randint(100, 250)}.0.0/16",
        "HYPERSERVICE_FIP_POOL": fip,
        "HYPERSERVICE_RESYNC_SECONDS": "2",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HYPERSERVICE_TOKEN", raising=False)
    yield fip
    backend = Backend(Settings())  # the CLI closed its own: the data dir is free again
    tenant = backend.tenant
    backend.close()
    remove_tenant_objects(docker_client, tenant)


def table_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


# --- the real engine, in-process -----------------------------------------------------------------


def test_every_verb_in_process_on_one_service(cli, in_process_env: str):
    fip = in_process_env
    created = cli("create", "web", "--image", WEB_IMAGE, "--replicas", "1", "--port", "80", "-l", "team=cli",
                  "-e", "MODE=test", "--health-check-interval", "1", *CHATTY, "--wait")
    assert created.code == 0, created
    header, row = table_rows(created.out)
    assert header == ["NAME", "STATUS", "REPLICAS", "IMAGE", "ADDRESS", "FIP", "MESSAGE"]
    assert row[:4] == ["web", "active", "1/1", WEB_IMAGE]
    assert "web: created" in created.err and "\r" not in created.err  # plain progress lines: not a terminal

    # refusals: exit 1, one line per field naming the flag too, nothing changed
    taken = cli("create", "web", "--image", WEB_IMAGE, "--replicas", "1", "--port", "80")
    assert taken.code == 1 and "hyperservice: Name (NAME): web is taken" in taken.err, taken
    bad = cli("create", "bad", "--image", WEB_IMAGE, "--replicas", "0", "--port", "80", "--protocol", "udp")
    assert bad.code == 1, bad
    assert "hyperservice: Replicas (--replicas): must be at least 1" in bad.err
    assert "hyperservice: Protocol (--protocol): must be one of" in bad.err
    assert bad.out == ""

    listed = cli("ls", "--json")
    assert listed.code == 0
    services = listed.json()
    assert [s["Name"] for s in services] == ["web"]  # "bad" was not created
    assert services[0]["Labels"] == {"team": "cli"} and services[0]["Env"] == ["MODE=test"]
    table_out = cli("ls")
    assert table_out.code == 0
    header, row = table_rows(table_out.out)
    assert header[0] == "NAME" and row[0] == "web" and row[3] == WEB_IMAGE
    assert row[4] == f"{services[0]['IP']}:80" and row[5] == "-"
    assert cli("ls", "-q").out == "web\n"

    inspected = cli("inspect", "web", "--json")
    assert inspected.code == 0
    service = inspected.json()
    assert list(service) == list(SERVICE_KEYS) and service["Name"] == "web" and service["SSLCert"] == ""
    block = cli("inspect", "web").out
    assert "Labels:" in block and "team=cli" in block and service["Containers"][0][:12] in block

    scaled = cli("scale", "web", "2", "--wait", "--json")
    assert scaled.code == 0, scaled
    service = scaled.json()
    assert service["Replicas"] == 2 and service["Status"] == "active" and len(service["Containers"]) == 2

    rolled = cli("rolling-update", "web", "--image", WEB_IMAGE_2, "--wait")
    assert rolled.code == 0, rolled
    assert table_rows(rolled.out)[1][:4] == ["web", "active", "2/2", WEB_IMAGE_2]
    assert "updating" in rolled.err
    replicas = cli("inspect", "web").out.split("\nNAME ")[1]
    assert replicas.count(WEB_IMAGE_2) == 2 and "outdated" not in replicas

    outside = cli("attach-fip", "web", "127.0.0.254")
    assert outside.code == 1 and "hyperservice: FIP (IP): 127.0.0.254 is not in the floating IP pool" in outside.err
    attached = cli("attach-fip", "web", fip, "--wait", "--json")
    assert attached.code == 0, attached
    assert attached.json()["FIP"] == fip and attached.json()["Status"] == "active"
    detached = cli("detach-fip", "web", "--wait", "--json")
    assert detached.code == 0, detached
    assert detached.json()["FIP"] == ""

    deadline = time.monotonic() + 60
    while True:  # the replicas write a line every 0.3 s: two of them soon
        logs = cli("logs", "web", "--tail", "3")
        assert logs.code == 0, logs
        lines = logs.out.splitlines()
        if len({line.split(" ")[1] for line in lines}) == 2 or time.monotonic() > deadline:
            break
    assert lines and all(" | tick from web-" in line for line in lines), logs
    assert len({line.split(" ")[1] for line in lines}) == 2  # labelled with each replica

    removed = cli("rm", "web", "--wait")
    assert removed.code == 0, removed
    assert removed.out == "deleted web\n"
    assert cli("ls", "--json").json() == []
    gone = cli("inspect", "web")
    assert gone.code == 1 and gone.err == "hyperservice: no service named web\n"


def route_offered(path: str) -> bool:
    """Whether this backend's API has `path` (a route another branch adds)."""
    backend = Backend(Settings())
    try:
        return path in create_app(backend).openapi()["paths"]
    finally:
        backend.close()


def test_events_on_the_real_backend(cli, in_process_env: str):
    if not route_offered("/services/{name}/events"):
        pytest.skip("this backend has no GET /services/{name}/events yet (the stand-in tests cover the verb)")
    assert cli("create", "hist", "--image", WEB_IMAGE, "--replicas", "1", "--port", "80", "--wait").code == 0
    assert cli("scale", "hist", "2", "--wait").code == 0
    history = cli("events", "hist", "--json")
    assert history.code == 0, history
    found = json.dumps(history.json())  # the backend's own JSON, passed through
    assert "hist" in found and "scal" in found  # the scale is in the history, whatever its shape
    shown = cli("events", "hist", "--limit", "3")
    assert shown.code == 0 and shown.out.strip(), shown
    assert cli("rm", "hist", "--wait").code == 0


def test_rollback_on_the_real_backend(cli, in_process_env: str):
    if not route_offered("/services/{name}/rollback"):
        pytest.skip("this backend has no POST /services/{name}/rollback yet (the stand-in tests cover the verb)")
    assert cli("create", "back", "--image", WEB_IMAGE, "--replicas", "1", "--port", "80", "--wait").code == 0
    assert cli("rolling-update", "back", "--image", WEB_IMAGE_2, "--wait").code == 0
    rolled_back = cli("rollback", "back", "--wait", "--json")
    assert rolled_back.code == 0, rolled_back
    assert rolled_back.json()["Image"] == WEB_IMAGE and rolled_back.json()["Status"] == "active"
    # `revisions`: newest first, as the API lists them; --json parsed, the table by default
    listed = cli("revisions", "back", "--json")
    assert listed.code == 0, listed
    assert [(r["Number"], r["Image"], r["By"]) for r in listed.json()] == [
        (3, WEB_IMAGE, "local"), (2, WEB_IMAGE_2, "local"), (1, WEB_IMAGE, "local")]
    assert [r["Outcome"] for r in listed.json()][:2] == ["active", "rolled back"], listed.json()
    shown = cli("revisions", "back")
    assert shown.code == 0, shown
    rows = table_rows(shown.out)
    assert rows[0] == ["REVISION", "IMAGE", "CREATED", "BY", "OUTCOME", "REASON"]
    assert [row[:2] for row in rows[1:]] == [["3", WEB_IMAGE], ["2", WEB_IMAGE_2], ["1", WEB_IMAGE]]
    assert rows[2][3:6] == ["local", "rolled", "back"], rows
    missing = cli("revisions", "nosuch")
    assert missing.code == 1 and missing.err == "hyperservice: no service named nosuch\n", missing
    assert cli("rm", "back", "--wait").code == 0


# --- the real engine, over TCP -----------------------------------------------------------------


def test_verbs_against_serve_with_api_and_token_file(cli, tmp_path: Path, docker_client, monkeypatch):
    token_file = tmp_path / "token"
    # named tokens (backend/tokens.py): the client sends the first one's token, without its name
    token_file.write_text("# who may change services\nremote-ops:cli-token\nci:ci-token\n")
    env = serve_env(tmp_path, HYPERSERVICE_ADDRESS_POOL=f"{random_block()}.0/24",
                    HYPERSERVICE_NETWORK_POOL=f"10.{random.randint(100, 250)}.0.0/16")
    with serving(tmp_path, docker_client, ["serve", "--token-file", str(token_file)], token="cli-token",
                 env=env) as served:
        api = ["--api", served.url, "--token-file", str(token_file)]
        # global options before the verb ...
        created = cli(*api, "create", "remote", "--image", WEB_IMAGE, "--replicas", "2", "--port", "80", *CHATTY,
                      "--wait", "--json")
        assert created.code == 0, created
        assert created.json()["Status"] == "active" and len(created.json()["Containers"]) == 2
        # ... or after it
        listed = cli("ls", "--json", *api)
        assert listed.code == 0 and [s["Name"] for s in listed.json()] == ["remote"]

        # who acted is the token's name, on the revision and in the events; never the token itself
        ci_file = tmp_path / "ci-token"
        ci_file.write_text("ci-token\n")
        updated = cli("rolling-update", "remote", "--image", WEB_IMAGE_2, "--wait", "--api", served.url,
                      "--token-file", str(ci_file))
        assert updated.code == 0, updated
        revisions = cli("revisions", "remote", "--json", *api)
        assert revisions.code == 0, revisions
        assert [(r["Number"], r["Image"], r["By"]) for r in revisions.json()] == [
            (2, WEB_IMAGE_2, "ci"), (1, WEB_IMAGE, "remote-ops")]
        history = cli("events", "remote", "--json", *api)
        actions = [(e["Action"], e["By"]) for e in history.json()["Events"] if e["Type"] == "action"]
        assert ("create", "remote-ops") in actions and ("image", "ci") in actions, actions
        assert "cli-token" not in history.out + revisions.out and "ci-token" not in history.out + revisions.out

        wrong = tmp_path / "wrong"
        wrong.write_text("nope\n")
        refused = cli("ls", "--api", served.url, "--token-file", str(wrong))
        assert refused.code == 1 and "token" in refused.err, refused

        # the data dir is the daemon's: an in-process verb on it says to use --api
        monkeypatch.setenv("HYPERSERVICE_DATA_DIR", env["HYPERSERVICE_DATA_DIR"])
        monkeypatch.setenv("HYPERSERVICE_LB_IMAGE", LB_IMAGE)
        locked = cli("ls")
        assert locked.code == 1 and "in use by another hyperservice backend" in locked.err
        assert "--api URL" in locked.err

        # logs -f: the real command in a subprocess, lines as they come, ended by Ctrl-C (exit 0)
        follower = subprocess.Popen([sys.executable, "-m", "tui.cli", "logs", "-f", "remote", "--tail", "1", *api],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen = read_lines(follower, 6, timeout=60)
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=60) == 0
            assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(timeout=30)
        names = {line.split(" ")[1] for line in seen}
        assert all(" | tick from remote-" in line for line in seen) and len(names) == 2, seen

        removed = cli("rm", "remote", "--wait", *api)
        assert removed.code == 0, removed
        assert cli("ls", "--json", *api).json() == []


def read_lines(process: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """`count` lines of a subprocess's stdout, read on a thread so a silent process fails the test."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if len(lines) >= count:
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"only {lines!r} within {timeout}s"
    return lines[:count]


# --- stand-in backends: one newer (rollback, events), one older (neither) -------------------------


def stand_in_service(name: str, image: str = WEB_IMAGE, status: str = "active") -> dict[str, Any]:
    spec = ServiceSpec.model_validate({"Name": name, "Image": image, "ServicePort": 80, "Replicas": 1})
    return Service.from_spec(spec, IP="127.0.0.9", Tenant=TENANT, Status=status, Message="Scaling complete",
                             Containers=["c" * 64]).model_dump(mode="json")


HISTORY = {
    "Name": "new", "Window": 300,
    "Summary": [{"Cause": "OOM-killed", "Count": 3, "Replicas": ["new-abcde"], "First": "2025-01-01T00:00:00Z",
                 "Last": "2025-01-01T00:04:00Z", "Text": "1 replica OOM-killed 3 times in the last 5 min"}],
    "Events": [
        {"Id": 1, "Time": "2025-01-01T00:00:00Z", "Type": "action", "Action": "create", "Replica": "",
         "Message": "created", "ExitCode": None, "OOMKilled": False, "By": "local"},
        {"Id": 2, "Time": "2025-01-01T00:01:00Z", "Type": "replica", "Action": "die", "Replica": "new-abcde",
         "Message": "exited \x1b[2Jcode 137", "ExitCode": 137, "OOMKilled": True, "By": ""},
    ],
}


def stand_in_app(newer: bool, asked: list[Any]) -> FastAPI:
    """The routes the verbs use; the newer one also has rollback and service events, as another branch
    adds them. A route the backend lacks answers 404 "Not Found", as FastAPI does (via the backend's
    own error handler: {"message": "Not Found"})."""
    app = FastAPI()
    missing = JSONResponse({"message": "Not Found", "errors": []}, status_code=404)
    deleting: set[str] = set()
    gone: set[str] = set()
    changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @app.get("/services/{name}")
    def get(name: str) -> Any:
        if name not in ("new", "old") or name in gone:
            return JSONResponse({"message": f"no service named {name}", "errors": []}, status_code=404)
        return stand_in_service(name, status="deleting" if name in deleting else "active")

    @app.delete("/services/{name}")
    async def delete(name: str) -> Any:
        """202: the teardown goes on; the service is gone a moment later (a `deleted` event says so)."""
        asked.append(("delete", name))
        deleting.add(name)

        async def teardown() -> None:
            await asyncio.sleep(0.5)
            gone.add(name)
            changes.put_nowait({"Type": "service", "Action": "deleted", "Name": name})

        asyncio.get_running_loop().create_task(teardown())
        return Response(status_code=202)

    @app.get("/events")
    async def events_stream() -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            yield json.dumps({"Type": "hello", "Action": "subscribed"}) + "\n"
            while True:
                yield json.dumps(await changes.get()) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/services/{name}/containers")
    def containers(name: str) -> Any:
        return []

    @app.get("/services/{name}/events")
    def service_events(name: str, request: Request) -> Any:
        asked.append(("events", name, dict(request.query_params)))
        return HISTORY if newer else missing

    @app.post("/services/{name}/rollback")
    async def rollback(name: str, request: Request) -> Any:
        asked.append(("rollback", name, await request.json()))
        return stand_in_service(name, WEB_IMAGE_2, "updating") if newer else missing

    return app


@contextlib.contextmanager
def stand_in(newer: bool) -> Iterator[tuple[str, list[Any]]]:
    asked: list[Any] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stand_in_app(newer, asked), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in backend did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_events_and_rollback_on_a_backend_that_has_them(cli):
    with stand_in(newer=True) as (url, asked):
        events = cli("events", "new", "--api", url, "--json")
        assert events.code == 0 and events.json() == HISTORY  # passed through as the backend answered
        shown = cli("events", "new", "--api", url, "--limit", "2")
        assert shown.code == 0, shown
        assert "1 replica OOM-killed 3 times in the last 5 min" in shown.out
        rows = [line for line in shown.out.splitlines() if line.startswith("2 ")]
        assert rows and "137" in rows[0] and "true" in rows[0]
        assert "\x1b" not in shown.out and "␛[2J" in shown.out  # a control character shows, never acts
        assert ("events", "new", {"limit": "2"}) in asked

        back = cli("rollback", "new", "--api", url, "--revision", "3", "--json")
        assert back.code == 0 and back.json()["Image"] == WEB_IMAGE_2
        plain = cli("rollback", "new", "--api", url)
        assert plain.code == 0 and table_rows(plain.out)[1][:2] == ["new", "updating"]
        assert ("rollback", "new", {"Revision": 3}) in asked and ("rollback", "new", {}) in asked


def test_rm_on_a_backend_that_deletes_in_the_background(cli):
    """DELETE answered 202 (teardown under way): `rm` says so; `rm --wait` waits for GET to answer 404."""
    with stand_in(newer=True) as (url, asked):
        waited = cli("rm", "new", "--api", url, "--wait")
        assert waited.code == 0 and waited.out == "deleted new\n", waited
        assert "new: deleting" in waited.err and ("delete", "new") in asked  # it waited through the teardown
    with stand_in(newer=True) as (url, _):
        at_once = cli("rm", "old", "--api", url)
        assert at_once.code == 0 and at_once.out == "deleting old (the backend tears it down)\n"


def test_events_and_rollback_on_an_older_backend_say_so(cli):
    with stand_in(newer=False) as (url, _):
        for argv in (["events", "old"], ["rollback", "old"]):
            result = cli(*argv, "--api", url)
            assert result.code == 1, result
            assert f"the backend at {url} has no" in result.err and "older than this command" in result.err
        unknown = cli("events", "ghost", "--api", url)
        assert unknown.code == 1 and unknown.err == "hyperservice: no service named ghost\n"


# --- exit codes without an engine ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["ls", "--bogus"],
    ["scale", "web", "many"],
    ["rolling-update", "web"],  # --image is required
    ["create", "web", "--replicas", "two"],
    ["frobnicate"],
])
def test_a_command_line_that_cannot_be_acted_on_exits_2(cli, argv):
    result = cli(*argv)
    assert result.code == 2 and "usage:" in result.err and result.out == ""


def test_unreadable_files_and_unaddressable_names_exit_2_before_anything_is_sent(cli, tmp_path):
    nowhere = ["--api", "http://127.0.0.1:9"]  # nothing listens: reaching it would exit 1, not 2
    result = cli("create", "web", "--ssl-cert-file", str(tmp_path / "missing.pem"), *nowhere)
    assert result.code == 2 and "cannot read --ssl-cert-file" in result.err
    result = cli("inspect", "../fips", *nowhere)
    assert result.code == 2 and "'../fips' is not a service name" in result.err


def test_an_unreachable_backend_exits_1_and_the_verbs_load_no_textual():
    code = ("import sys; from tui.cli import main; status = main(['ls', '--api', 'http://127.0.0.1:9']); "
            "print(status, 'textual' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.split() == ["1", "False"], result
    assert "hyperservice: cannot reach the backend at http://127.0.0.1:9" in result.stderr


# --- the pure parts ------------------------------------------------------------------------------


def sample(name: str, status: str = "active", spec_fields: dict[str, Any] | None = None, **state: Any) -> Service:
    spec = ServiceSpec.model_validate({"Name": name, "Image": WEB_IMAGE, "ServicePort": 80, "Replicas": 2,
                                       **(spec_fields or {})})
    return Service.from_spec(spec, Tenant=TENANT, Status=status, **state)


def replica(name: str, health: str = "UP") -> ContainerInfo:
    return ContainerInfo(Id=name * 8, Name=name, State="running", Health=health, Address="10.0.0.2:80",
                         Started="", Restarts=0, Image=WEB_IMAGE)


def test_the_services_table_aligns_counts_and_cuts_only_on_a_terminal():
    services = [sample("web", IP="127.0.0.5", FIP="127.0.0.9", Message="Scaling complete"),
                sample("a-much-longer-name", "error", Message="image x not found\x1b]52;c;bad\x07")]
    replicas = {"web": [replica("web-1"), replica("web-2", "DOWN")]}
    text = services_table(services, replicas)
    lines = text.splitlines()
    column = lines[0].index("REPLICAS")  # aligned: every row's count starts under its header
    assert lines[1][column:].startswith("1/2") and lines[2][column:].startswith("0/2")
    assert lines[1].split()[:6] == ["web", "active", "1/2", WEB_IMAGE, "127.0.0.5:80", "127.0.0.9"]
    assert lines[2].split()[:6] == ["a-much-longer-name", "error", "0/2", WEB_IMAGE, "-", "-"]
    assert "\x1b" not in text and "\x07" not in text and "␛]52;c;bad␇" in text
    cut = services_table(services, replicas, width=110).splitlines()
    assert all(len(line) <= 110 for line in cut) and cut[2].endswith("…") and cut[1].endswith("Scaling complete")
    coloured = services_table(services, replicas, colour=True)
    assert "\x1b[32mactive\x1b[0m" in coloured and "\x1b[31merror\x1b[0m" in coloured


def test_the_revisions_table_lists_newest_first_and_colours_the_outcome():
    revisions = [
        Revision(Number=2, Image=WEB_IMAGE_2, Created="2025-01-01T00:01:00Z", By="ci", Outcome="rolled back",
                 Reason="revision 2's replicas kept exiting (code 1)"),
        Revision(Number=1, Image=WEB_IMAGE, Created="2025-01-01T00:00:00Z", By="local", Outcome="active"),
    ]
    lines = revisions_table(revisions).splitlines()
    assert lines[0].split() == ["REVISION", "IMAGE", "CREATED", "BY", "OUTCOME", "REASON"]
    assert lines[1].split()[:6] == ["2", WEB_IMAGE_2, "2025-01-01T00:01:00Z", "ci", "rolled", "back"]
    assert lines[1].endswith("revision 2's replicas kept exiting (code 1)")
    assert lines[2].split() == ["1", WEB_IMAGE, "2025-01-01T00:00:00Z", "local", "active", "-"]
    assert "\x1b[31mrolled back\x1b[0m" in revisions_table(revisions, colour=True)
    assert revisions_table([]) == "(no revisions)"


def test_a_table_cuts_its_last_column_with_an_ellipsis():
    text = table(["A", "MESSAGE"], [["x", "a very long message indeed"]], width=12)
    assert text.splitlines()[1] == "x   a very …"


def test_any_json_answer_reads_as_a_table():
    text = any_table(HISTORY)
    assert text.startswith("Name:   new\nWindow: 300")
    summary, events = text.split("\n\nSummary:\n")[1].split("\n\nEvents:\n")
    assert "1 replica OOM-killed 3 times" in summary and summary.splitlines()[0].split()[:2] == ["CAUSE", "COUNT"]
    header = events.splitlines()[0].split()
    assert header == ["ID", "TIME", "TYPE", "ACTION", "REPLICA", "MESSAGE", "EXITCODE", "OOMKILLED", "BY"]
    assert any_table([]) == "(none)" and any_table({"Events": []}) == "Events:\n(none)"


def test_inspect_reads_as_one_field_a_line_then_the_replicas():
    service = sample("web", IP="127.0.0.5",
                     spec_fields={"Labels": {"a": "1", "b": "2"}, "Env": ["X=1", "Y=2"], "Cmd": ["sh", "-c", "echo hi"]})
    text = service_block(service, [replica("web-1")])
    assert "Cmd:                 sh -c 'echo hi'" in text
    assert "Labels:              a=1\n                     b=2" in text
    assert "Replicas:            2 (1/2 ready)" in text and "web-1" in text.split("\n\n")[1]


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_writes_lines_elsewhere():
    terminal = TerminalStream()
    progress = Progress(terminal, width=30)
    progress.show("web: scaling 0/2 ready", "1s")
    progress.show("web: scaling 1/2 ready - a long message that does not fit", "2s")
    progress.end()
    written = terminal.getvalue()
    assert "\n" not in written and written.count("\r") == 3
    assert all(len(part.replace("\x1b[K", "")) <= 29 for part in written.split("\r"))
    piped = io.StringIO()
    progress = Progress(piped)
    for text in ("web: created", "web: created", "web: active"):
        progress.show(text, "1s")
    progress.end()
    assert piped.getvalue() == "web: created\nweb: active\n"


def test_refusals_name_the_field_and_its_flag():
    err = io.StringIO()
    out = Out(io.StringIO(), err, flags=FIELD_FLAGS["create"])
    code = out.api_error(ApiError(400, "invalid request", [FieldError(field="HealthCheckFall", message="must be at least 1"),
                                                           FieldError(field="Env", message="'1X' is not a valid name")]))
    assert code == 1
    assert err.getvalue() == ("hyperservice: HealthCheckFall (--health-check-fall): must be at least 1\n"
                              "hyperservice: Env (--env): '1X' is not a valid name\n")
    assert set(FIELD_FLAGS["create"]) == set(ServiceSpec.model_fields)  # a flag for every field of the request
