"""The scriptable CLI: the verbs of Hyper's `hyper service` command (create, ls, inspect, scale,
rolling-update, rollback, attach-fip, detach-fip, rm, logs, events), beside the console, and two
extensions: `revisions` (the service's revisions: image, when, by whom, outcome) and `balancer` (what
the service's balancer counts).

Each verb is one call (or a few) on the console's own client, `tui.client.ApiClient`: in-process by
default (a `Backend` on this machine's data dir, opened for the verb and closed after it, its reconciler
running meanwhile, so `--wait` sees the work done) or remote with `--api URL`. An in-process backend
holds the data dir's lock: while `hyperservice serve` (or the console) runs on it, give `--api`.

Output: a table (or a readable block) by default, the API's JSON with `--json`. `--wait` follows the
backend's `/events` stream (no polling; a re-read every few seconds of quiet guards against a missed
event) until the service is `active` (exit 0) or `error` (exit 1), or gone for `rm`; it shows a single
progress line rewritten in place on a terminal, plain lines otherwise, both on stderr.

Exit status: 0 done; 1 the backend refused or failed (its message on stderr, naming the field and
the flag), the service ended in `error`, the wait timed out, or the backend was unreachable; 2 a
command line that cannot be acted on (unknown flag, a number that is not one, an unreadable file);
130 interrupted while waiting (the backend goes on with the change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeVar

from pydantic import ValidationError

from backend.models import ContainerInfo, Service
from tui.cli_output import (
    Progress,
    any_table,
    balancer_table,
    dump_json,
    is_tty,
    revisions_table,
    service_block,
    services_table,
    terminal_width,
    wants_colour,
)
from tui.client import ApiClient, ApiError
from tui.formatting import replicas_up, visible

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_WAIT_TIMEOUT = 600.0
RECHECK_SECONDS = 5.0  # re-read the service after this long without an event about it
HELLO_TIMEOUT = 30.0  # how long the /events stream may take to say hello


class CliUsageError(Exception):
    """A verb's arguments cannot be acted on (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# The verbs' command lines
# ---------------------------------------------------------------------------------------------


class CreateOption(NamedTuple):
    """One flag of `create`: the create request's field it sets, and how its value is read."""

    flags: tuple[str, ...]
    field: str
    kind: str  # "int", "text", "flag" (true when given), "list" (repeatable), "file" (its content)
    help: str


# Hyper's `hyper service create` flag names where it has one (--container-port, --protocol, --algorithm,
# --session-affinity, --health-check-*, -e/--env, -l/--label, -v/--volume, --security-group, --size,
# -w/--workdir, -t/--tty, -i/--stdin), with shorter aliases.
CREATE_OPTIONS: tuple[CreateOption, ...] = (
    CreateOption(("--image",), "Image", "text", "the image the replicas run (required), e.g. hyperservice/demo-web:1"),
    CreateOption(("--replicas",), "Replicas", "int", "how many replicas (required)"),
    CreateOption(("--port", "--service-port"), "ServicePort", "int", "the port the service answers on (required)"),
    CreateOption(("--container-port",), "ContainerPort", "int", "the port the replicas listen on (default: --port)"),
    CreateOption(("--size", "--container-size"), "ContainerSize", "text", "s1 s2 s3 s4 m1 m2 m3 l1 l2 l3 (default s4)"),
    CreateOption(("--protocol",), "Protocol", "text", "tcp, http, https or httpsTerm (default tcp)"),
    CreateOption(("--algorithm",), "Algorithm", "text", "roundrobin, leastconn or source (default roundrobin)"),
    CreateOption(("--session-affinity", "--affinity"), "SessionAffinity", "flag", "sticky sessions"),
    CreateOption(("--health-check-interval", "--health-interval"), "HealthCheckInterval", "int",
                 "seconds between health checks (default 5)"),
    CreateOption(("--health-check-fall", "--health-fall"), "HealthCheckFall", "int",
                 "failed checks before a replica is DOWN (default 3)"),
    CreateOption(("--health-check-rise", "--health-rise"), "HealthCheckRise", "int",
                 "passed checks before a replica is UP (default 2)"),
    CreateOption(("-e", "--env"), "Env", "list", "VAR=value (repeatable)"),
    CreateOption(("-l", "--label"), "Labels", "list", "key=value (repeatable)"),
    CreateOption(("-v", "--volume"), "Volumes", "list", "volume_name:/container/path[:ro] (repeatable)"),
    CreateOption(("--cmd",), "Cmd", "text", "the command, as a shell-like line"),
    CreateOption(("--entrypoint",), "Entrypoint", "text", "the entrypoint, as a shell-like line"),
    CreateOption(("-w", "--workdir"), "WorkingDir", "text", "the working directory (an absolute path)"),
    CreateOption(("--stop-signal",), "StopSignal", "text", "the signal that stops a replica (default SIGTERM)"),
    CreateOption(("--security-group", "--sg"), "SecurityGroups", "list", "a security group (repeatable)"),
    CreateOption(("--ssl-cert-file",), "SSLCert", "file", "PEM certificate chain and private key (httpsTerm)"),
    CreateOption(("-t", "--tty"), "Tty", "flag", "allocate a pseudo-TTY in the replicas"),
    CreateOption(("-i", "--stdin"), "Stdin", "flag", "keep STDIN open in the replicas"),
    CreateOption(("--net-mode", "--net"), "NetMode", "text", "the network mode: only bridge (the default)"),
)

# Which flag or argument sets each field the backend may name in an error, per verb.
FIELD_FLAGS: dict[str, dict[str, str]] = {
    "create": {"Name": "NAME", **{o.field: next(f for f in o.flags if f.startswith("--")) for o in CREATE_OPTIONS}},
    "scale": {"Replicas": "N"},
    "rolling-update": {"Image": "--image"},
    "rollback": {"Revision": "--revision"},
    "attach-fip": {"FIP": "IP"},
    "rm": {"keep": "--keep", "volumes": "--volumes"},
    "logs": {"tail": "--tail", "container": "--replica"},
    "events": {"limit": "--limit"},
}

VERB_HELP = {
    "create": "create a service (flags for every field of the create request)",
    "ls": "list the services",
    "inspect": "show one service (the API's object with --json)",
    "scale": "change the number of replicas",
    "rolling-update": "roll the replicas over to a new image, one at a time",
    "rollback": "go back to the previous revision (or --revision N)",
    "revisions": "the service's revisions: image, when, by whom, outcome (newest first)",
    "attach-fip": "attach a floating IP",
    "detach-fip": "detach the floating IP",
    "rm": "delete a service",
    "logs": "the replicas' logs (-f: follow them)",
    "events": "the service's history of events",
    "balancer": "what the balancer counts per front and per replica (traffic share, sessions, checks)",
}
VERBS = tuple(VERB_HELP)


def _add_output_options(parser: argparse.ArgumentParser, wait: bool) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    if wait:
        parser.add_argument("--wait", action="store_true",
                            help="block until the service is active (exit 0) or in error (exit 1)")
        parser.add_argument("--timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                            help=f"with --wait: give up after this long (exit 1; default {DEFAULT_WAIT_TIMEOUT:.0f})")


def add_verb_parsers(commands: Any, add_global_options: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """Add every verb to `commands` (the top-level parser's sub-parsers)."""

    def verb(name: str, wait: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=VERB_HELP[name], description=VERB_HELP[name])
        add_global_options(parser, True)
        _add_output_options(parser, wait)
        return parser

    create = verb("create", wait=True)
    create.add_argument("name", metavar="NAME", help="the service's name (a DNS label)")
    for option in CREATE_OPTIONS:
        common: dict[str, Any] = {"dest": f"field_{option.field}", "help": option.help}
        if option.kind == "flag":
            create.add_argument(*option.flags, action="store_const", const=True, default=None, **common)
        elif option.kind == "list":
            create.add_argument(*option.flags, action="append", default=None, metavar="VALUE", **common)
        elif option.kind == "int":
            create.add_argument(*option.flags, type=int, default=None, metavar="N", **common)
        else:
            create.add_argument(*option.flags, default=None, metavar="FILE" if option.kind == "file" else "VALUE",
                                **common)

    ls = verb("ls")
    ls.add_argument("-q", "--quiet", action="store_true", help="only the names")

    inspect = verb("inspect")
    inspect.add_argument("name", metavar="NAME")

    scale = verb("scale", wait=True)
    scale.add_argument("name", metavar="NAME")
    scale.add_argument("replicas", metavar="N", type=int, help="the new number of replicas")

    update = verb("rolling-update", wait=True)
    update.add_argument("name", metavar="NAME")
    update.add_argument("--image", required=True, help="the new image")

    rollback = verb("rollback", wait=True)
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--revision", type=int, default=None, metavar="N",
                          help="the revision to go back to (default: the previous one)")

    attach = verb("attach-fip", wait=True)
    attach.add_argument("name", metavar="NAME")
    attach.add_argument("fip", metavar="IP", help="an address of the floating IP pool")

    detach = verb("detach-fip", wait=True)
    detach.add_argument("name", metavar="NAME")

    rm = verb("rm", wait=True)
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--keep", action="store_true", help="leave the replicas running")
    rm.add_argument("--volumes", action="store_true", help="also remove the service's named volumes and their data")

    logs = verb("logs")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following (until Ctrl-C)")
    logs.add_argument("--tail", type=int, default=None, metavar="N", help="the last N lines of each replica")
    logs.add_argument("--replica", default=None, metavar="NAME", help="one replica (its name or id)")

    events = verb("events")
    events.add_argument("name", metavar="NAME")
    events.add_argument("--limit", type=int, default=None, metavar="N", help="the last N events")

    revisions = verb("revisions")
    revisions.add_argument("name", metavar="NAME")

    balancer = verb("balancer")
    balancer.add_argument("name", metavar="NAME")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


@dataclass
class Out:
    """Where a verb writes: results on stdout, errors and progress on stderr."""

    stdout: TextIO
    stderr: TextIO
    json: bool = False
    flags: dict[str, str] = field(default_factory=dict)  # field → the flag that sets it (for errors)

    @property
    def width(self) -> int | None:
        return terminal_width(self.stdout)

    @property
    def colour(self) -> bool:
        return wants_colour(self.stdout)

    def print(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def error(self, text: str) -> None:
        self.stderr.write(f"hyperservice: {text}\n")
        self.stderr.flush()

    def api_error(self, exc: ApiError) -> int:
        """The backend's refusal on stderr, one line per field (naming its flag too)."""
        if not exc.errors:
            self.error(visible(exc.message))
        for error in exc.errors:
            where = f"{error.field} ({self.flags[error.field]})" if error.field in self.flags else error.field
            self.error(visible(f"{where}: {error.message}" if where else error.message))
        return EXIT_FAILED

    def service(self, service: Service, replicas: list[ContainerInfo] | None) -> None:
        if self.json:
            self.print(dump_json(service.model_dump(mode="json")))
        else:
            self.print(services_table([service], {service.Name: replicas} if replicas is not None else None,
                                      width=self.width, colour=self.colour))


# ---------------------------------------------------------------------------------------------
# Waiting: the /events stream
# ---------------------------------------------------------------------------------------------


class EventWatch:
    """The backend's /events stream, opened before a change is asked for (so none of the change's
    events is missed) and read with a timeout."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        try:
            async for event in self.client.events():
                self._queue.put_nowait(event)
            self._queue.put_nowait(ApiError(0, f"the event stream from {self.client.description} ended"))
        except ApiError as exc:
            self._queue.put_nowait(exc)
        except Exception as exc:  # whatever broke the stream ends the wait with it, never silently
            self._queue.put_nowait(ApiError(0, f"the event stream from {self.client.description} failed: {exc}"))

    async def __aenter__(self) -> EventWatch:
        self._task = asyncio.create_task(self._pump(), name="hyperservice events")
        if await self.next(HELLO_TIMEOUT) is None:  # the first line is the hello: subscribed from here on
            await self.__aexit__()
            raise ApiError(0, f"the event stream from {self.client.description} did not start")
        return self

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def concerns(event: dict[str, Any], name: str) -> bool:
    """Whether an /events line may change what `--wait` waits on for service `name`."""
    return (event.get("Type") == "service" and event.get("Name") == name) or (
        event.get("Type") == "container" and event.get("Service") == name) or event.get("Type") == "engine"


async def _replicas_or_none(client: ApiClient, name: str) -> list[ContainerInfo] | None:
    try:
        return await client.containers(name)
    except ApiError:
        return None  # the table then counts the service's own container list


async def _observe(client: ApiClient, name: str) -> tuple[Service | None, list[ContainerInfo] | None]:
    try:
        service = await client.get_service(name)
    except ApiError as exc:
        if exc.status == 404:
            return None, None
        raise
    return service, await _replicas_or_none(client, name)


def progress_text(name: str, service: Service, replicas: list[ContainerInfo] | None) -> str:
    if service.Status == "updating" and replicas is not None:  # a rolling update: how many run the new image
        balanced = any(r.Health for r in replicas)  # counted as the console counts: UP once there is a balancer
        done = sum(1 for r in replicas if r.State == "running" and not r.Outdated and (r.Health == "UP" or not balanced))
        ready = f"{min(done, service.Replicas)}/{service.Replicas} updated"
    else:
        ready = f"{replicas_up(service, replicas)}/{service.Replicas} ready"
    return visible(f"{name}: {service.Status} {ready} - {service.Message}")


async def settle(client: ApiClient, name: str, watch: EventWatch, out: Out, timeout: float,
                 gone: bool = False) -> int:
    """Follow service `name` until it is active (0) or in error (1); with `gone`, until it no longer
    exists (0). Progress on stderr; the final service on stdout."""
    progress = Progress(out.stderr)
    started = time.monotonic()
    deadline = started + timeout
    look = True
    last_look = started
    service: Service | None = None
    replicas: list[ContainerInfo] | None = None
    try:
        while True:
            if look:
                service, replicas = await _observe(client, name)
                look, last_look = False, time.monotonic()
                if service is None:
                    progress.end()
                    if gone:
                        if not out.json:
                            out.print(f"deleted {name}")
                        return EXIT_OK
                    out.error(f"service {name} was deleted while waiting for it")
                    return EXIT_FAILED
                if not gone and service.Status in ("active", "error"):
                    progress.end()
                    out.service(service, replicas)
                    if service.Status == "error":
                        out.error(visible(f"{name}: error: {service.Message}"))
                        return EXIT_FAILED
                    return EXIT_OK
            if service is not None:
                progress.show(progress_text(name, service, replicas), f"{time.monotonic() - started:.0f}s")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                progress.end()
                state = f"{service.Status} ({service.Message})" if service else "unknown"
                out.error(visible(f"gave up waiting after {timeout:g}s: {name} is {state}; "
                                  "the backend goes on with it"))
                return EXIT_FAILED
            event = await watch.next(min(remaining, 1.0 if progress.tty else RECHECK_SECONDS))
            if event is None:
                look = time.monotonic() - last_look >= RECHECK_SECONDS
            else:
                look = concerns(event, name) or event.get("Type") == "ping"
    finally:
        progress.end()


# ---------------------------------------------------------------------------------------------
# The verbs
# ---------------------------------------------------------------------------------------------


def _addressable(name: str) -> bool:
    """Whether `name` can go into a route's path as one segment (no '/', '?', '#', '%', no '.' or '..'):
    a service name never has those, and the request must not reach another route."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/?#%\\") and name.isprintable()


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"Name": args.name}
    for option in CREATE_OPTIONS:
        value = getattr(args, f"field_{option.field}")
        if value is None:
            continue
        if option.kind == "file":
            try:
                value = Path(value).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliUsageError(f"cannot read {option.flags[0]} {value}: {exc}") from None
        body[option.field] = value
    return body


async def _older_backend(client: ApiClient, name: str, exc: ApiError, route: str) -> ApiError:
    """A 404/405 from a route an older backend lacks: say so (when the service itself exists)."""
    if exc.status not in (404, 405):
        return exc
    try:
        await client.get_service(name)
    except ApiError as missing:
        return missing  # no such service: the backend's own message says it
    where = client.description if client.description.startswith("the ") else f"the backend at {client.description}"
    return ApiError(exc.status, f"{where} has no {route}: it is older than this command; upgrade it")


Answer = TypeVar("Answer")


async def _on_newer_route(client: ApiClient, name: str, route: str, request: Awaitable[Answer]) -> Answer:
    """The answer to `request`, on a route an older backend lacks (its 404/405 said so: `_older_backend`)."""
    try:
        return await request
    except ApiError as exc:
        raise await _older_backend(client, name, exc, route) from None


async def _change(client: ApiClient, args: argparse.Namespace, out: Out,
                  ask: Callable[[], Awaitable[Service]], gone: bool = False) -> int:
    """Ask for a change; with --wait, follow it to its end (the stream opened before asking)."""
    if not args.wait:
        service = await ask()
        out.service(service, await _replicas_or_none(client, service.Name))
        return EXIT_OK
    async with EventWatch(client) as watch:
        await ask()
        return await settle(client, args.name, watch, out, args.timeout, gone)


async def verb_create(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    body: dict[str, Any] = args.body  # read before the backend was opened (a bad file is a usage error)
    return await _change(client, args, out, lambda: client.create_service(body))


async def verb_ls(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    services = await client.list_services()
    if args.json:
        out.print(dump_json([s.model_dump(mode="json") for s in services]))
    elif args.quiet:
        for service in services:
            out.print(visible(service.Name))
    else:
        try:
            replicas: dict[str, list[ContainerInfo]] | None = await client.all_replicas()
        except ApiError:
            replicas = None  # e.g. the engine is away: counted from the services' container lists
        out.print(services_table(services, replicas, width=out.width, colour=out.colour))
    return EXIT_OK


async def verb_inspect(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    service = await client.get_service(args.name)
    if args.json:
        out.print(dump_json(service.model_dump(mode="json")))
    else:
        replicas = await _replicas_or_none(client, args.name)
        out.print(service_block(service, replicas, width=out.width, colour=out.colour))
    return EXIT_OK


async def verb_scale(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    return await _change(client, args, out, lambda: client.update_service(args.name, Replicas=args.replicas))


async def verb_rolling_update(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    return await _change(client, args, out, lambda: client.update_service(args.name, Image=args.image))


async def verb_rollback(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    return await _change(client, args, out, lambda: _on_newer_route(
        client, args.name, "rollback (POST /services/{name}/rollback)", client.rollback(args.name, args.revision)))


async def verb_attach_fip(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    return await _change(client, args, out, lambda: client.update_service(args.name, FIP=args.fip))


async def verb_detach_fip(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    return await _change(client, args, out, lambda: client.update_service(args.name, FIP=""))


async def verb_rm(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    if args.wait:
        async with EventWatch(client) as watch:
            await client.remove_service(args.name, args.keep, args.volumes)
            return await settle(client, args.name, watch, out, args.timeout, gone=True)
    finished = await client.remove_service(args.name, args.keep, args.volumes)
    if not args.json:
        out.print(f"deleted {args.name}" if finished else f"deleting {args.name} (the backend tears it down)")
    return EXIT_OK


async def verb_logs(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    # On a terminal a log line's control characters are shown, never obeyed (as in the console); into a
    # pipe or a file the lines go as the replicas wrote them.
    terminal = is_tty(out.stdout)
    if args.follow:
        async for line in client.follow_logs(args.name, args.replica, args.tail):
            out.print(visible(line) if terminal else line)
        return EXIT_OK
    text = await client.logs(args.name, args.replica, args.tail)
    if text:
        if terminal:
            text = "\n".join(visible(line) for line in text.removesuffix("\n").split("\n")) + "\n"
        out.stdout.write(text)
        out.stdout.flush()
    return EXIT_OK


async def verb_events(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    history = await _on_newer_route(client, args.name, "service events (GET /services/{name}/events)", client.get_json(
        f"/services/{args.name}/events", None if args.limit is None else {"limit": args.limit}))
    out.print(dump_json(history) if args.json else any_table(history, width=out.width))
    return EXIT_OK


async def verb_revisions(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    revisions = await _on_newer_route(client, args.name, "revisions (GET /services/{name}/revisions)",
                                      client.revisions(args.name))
    out.print(dump_json([r.model_dump(mode="json") for r in revisions]) if args.json
              else revisions_table(revisions, width=out.width, colour=out.colour))
    return EXIT_OK


async def verb_balancer(client: ApiClient, args: argparse.Namespace, out: Out) -> int:
    view = await _on_newer_route(client, args.name, "balancer view (GET /services/{name}/balancer)",
                                 client.balancer(args.name))
    out.print(dump_json(view.model_dump(mode="json")) if args.json
              else balancer_table(view, width=out.width, colour=out.colour))
    return EXIT_OK


Verb = Callable[[ApiClient, argparse.Namespace, Out], Awaitable[int]]
HANDLERS: dict[str, Verb] = {
    "create": verb_create,
    "ls": verb_ls,
    "inspect": verb_inspect,
    "scale": verb_scale,
    "rolling-update": verb_rolling_update,
    "rollback": verb_rollback,
    "attach-fip": verb_attach_fip,
    "detach-fip": verb_detach_fip,
    "rm": verb_rm,
    "logs": verb_logs,
    "events": verb_events,
    "revisions": verb_revisions,
    "balancer": verb_balancer,
}


# ---------------------------------------------------------------------------------------------
# Running a verb
# ---------------------------------------------------------------------------------------------


class BackendUnavailable(Exception):
    """The in-process backend could not be opened (exit status 1, the reason on stderr)."""


def _open_backend() -> Any:
    from backend.core import Backend
    from backend.settings import Settings
    from backend.store import DataDirInUse

    try:
        backend = Backend(Settings())
    except DataDirInUse as exc:
        raise BackendUnavailable(f"{exc}. With `hyperservice serve` running, give --api URL") from None
    except Exception as exc:  # the data dir cannot be written, is unsafe, ...: one line, no traceback
        raise BackendUnavailable(f"cannot start the in-process backend: {exc}") from None
    backend.start()
    return backend


@contextlib.asynccontextmanager
async def open_client(api: str | None, token: str | None) -> AsyncIterator[ApiClient]:
    """The console's client: remote at `api`, else on an in-process backend (closed afterwards)."""
    if api:
        client = ApiClient.remote(api, token)
        try:
            yield client
        finally:
            await client.aclose()
        return
    backend = await asyncio.to_thread(_open_backend)
    client = ApiClient.in_process(backend)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
        await asyncio.to_thread(backend.close)


async def _run(args: argparse.Namespace, token: str | None, out: Out) -> int:
    handler = HANDLERS[args.command]
    try:
        if args.command == "create":
            args.body = _create_body(args)
        elif "name" in args and not _addressable(args.name):
            raise CliUsageError(f"{args.name!r} is not a service name")
        async with open_client(args.api, token) as client:
            return await handler(client, args, out)
    except ApiError as exc:
        return out.api_error(exc)
    except BackendUnavailable as exc:
        out.error(str(exc))
        return EXIT_FAILED
    except CliUsageError as exc:
        out.error(visible(str(exc)))
        return EXIT_USAGE
    except ValidationError as exc:  # an answer this client cannot read (a backend of another version)
        out.error(f"the backend's answer is not what this command expects: {exc.error_count()} problem(s), "
                  f"first: {visible(str(exc.errors()[0]['msg']))}")
        return EXIT_FAILED


def run_verb(args: argparse.Namespace, token: str | None) -> int:
    """Run the verb `args.command` to its exit status."""
    out = Out(sys.stdout, sys.stderr, json=bool(getattr(args, "json", False)), flags=FIELD_FLAGS.get(args.command, {}))
    try:
        return asyncio.run(_run(args, token, out))
    except KeyboardInterrupt:
        # Ctrl-C is how `logs -f` ends; during --wait it stops the waiting, not the change
        if args.command == "logs":
            return EXIT_OK
        out.error("interrupted; the backend goes on with the change")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hyperservice logs web | head`: the reader is gone, nothing more to say
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
