"""The HTTP API (FastAPI): the routes of SPEC.md over a `Backend`.

The same app serves the console in-process (httpx's ASGI transport, no port opened) and over TCP
(`hyperservice serve`). Request bodies are validated here with the models, so every error comes back
in one shape: `{"message": ..., "errors": [{"field": ..., "message": ...}]}`.

It also owns the guards in front of every route (`guard`): the Host a request names (against DNS
rebinding, when served over TCP), the Origin of a state-changing request (against cross-site pages),
the bearer token, the body's media type (JSON only) and size (`MAX_BODY_BYTES`, counted while it is
read). Parsing and validating a body runs in a worker thread, never on the event loop. An unexpected
failure answers 500 with an error id; its detail goes to the log only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.core import LOCAL, Backend, Conflict, Invalid, NotFound
from backend.docker_driver import MAX_IMAGE_TAGS, EngineUnavailable
from backend.history import DEFAULT_WINDOW
from backend.models import (
    BalancerView,
    ContainerInfo,
    ErrorBody,
    FieldError,
    Revision,
    RollbackRequest,
    Service,
    ServiceHistory,
    ServiceSpec,
    ServiceUpdate,
    VolumeInfo,
    field_errors,
    summarise,
)
from backend.store import EVENTS_KEPT
from backend.tokens import Tokens

log = logging.getLogger(__name__)

PING_SECONDS = 5.0
MAX_BODY_BYTES = 1024 * 1024  # the largest request body read (a create with a PEM chain is a few kB)
# Methods that change state: a browser sends them cross-site only with an Origin header, which must be ours.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ERROR_STATUSES = {
    400: "invalid input",
    401: "missing or wrong token",
    403: "refused: a cross-site request",
    404: "no such service",
    409: "conflict: the name or floating IP is taken, or the service is being deleted",
    413: "the request body is too large",
    415: "the request body is not application/json",
    421: "the Host header names no address this backend serves",
    500: "internal error (the id in the message finds the detail in the backend's log)",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERROR_STATUSES.items()
}
MAX_LOG_TAIL = 100_000  # lines per replica one logs request may ask for
_ENGINE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS, 503: {"model": ErrorBody, "description": "the Docker engine cannot be reached"}
}


def _error(status: int, message: str, errors: list[FieldError] | None = None) -> JSONResponse:
    body = ErrorBody(message=message, errors=errors or [])
    return JSONResponse(body.model_dump(), status_code=status)


_Model = TypeVar("_Model", bound=BaseModel)


class _Follower(Protocol):
    """Live lines from the engine (backend.core's log and stats followers)."""

    def lines(self) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


class _ClosingResponse(StreamingResponse):
    """A stream whose resources (a follower's threads and Docker streams) are released when the
    response ends, however it ends: done, failed, or the client went while a write
    waited (then the body generator is merely left suspended, and its `finally` would wait for the
    garbage collector)."""

    def __init__(self, content: AsyncIterator[str] | AsyncIterator[bytes], media_type: str, on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type=media_type)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _streamed(follower: Any, media_type: str) -> StreamingResponse:
    """Stream a follower's lines; its threads and Docker streams end when the client goes away."""
    return _ClosingResponse(follower.lines(), media_type, follower.close)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


class BodyTooLarge(Exception):
    """The request body is larger than MAX_BODY_BYTES (answered 413)."""


def _too_large_message() -> str:
    return f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB"


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it grows beyond MAX_BODY_BYTES (never read whole first)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(_too_large_message())
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, model: type[_Model], context: dict[str, Any]) -> _Model:
    """JSON → validated model (CPU work: called in a worker thread)."""
    try:
        data = json.loads(raw or b"null")
    except RecursionError:
        raise Invalid("the request body is nested too deeply") from None
    except ValueError:  # bad JSON, bad UTF-8, an integer of thousands of digits
        raise Invalid("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Invalid(f"invalid request: {summarise(errors)}", errors) from None
    except RecursionError:
        raise Invalid("the request body is nested too deeply") from None


async def _validated(request: Request, model: type[_Model], context: dict[str, Any]) -> _Model:
    raw = await _read_body(request)
    return await run_in_threadpool(_parse, raw, model, context)


def host_name(authority: str) -> str:
    """'Example.COM:8765' → 'example.com', '[::1]:8765' → '::1' (the Host header without its port)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    if authority.count(":") == 1:
        authority = authority.partition(":")[0]
    return authority.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(name: str, allowed_hosts: Collection[str]) -> bool:
    """Whether a Host header's name may reach this API; "*" allows any IP address (never a DNS name,
    which is what a rebinding attack needs)."""
    return name in allowed_hosts or ("*" in allowed_hosts and _is_ip(name))


def _origin(scheme: str, authority: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in, to compare two origins; None
    when the port is not a number."""
    try:
        port = urlsplit(f"//{authority}").port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, host_name(authority), port if port is not None else default


def same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """Whether an Origin header names this API itself (the scheme and Host the request came with)."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc or parts.path not in ("", "/"):
        return False
    ours = _origin(scheme, host_header)
    return ours is not None and _origin(parts.scheme.lower(), parts.netloc) == ours


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _refusal(request: Request, tokens: Tokens | None, allowed_hosts: Collection[str] | None) -> JSONResponse | None:
    """The answer to a request refused before any route sees it, or None to let it through (with
    `request.state.caller`: the name of the token it carries, see `caller`)."""
    headers = request.headers
    host = headers.get("host", "")
    if allowed_hosts is not None:
        if not host:
            return _error(400, "the request has no Host header")
        name = host_name(host)
        if not host_allowed(name, allowed_hosts):
            name = name[:100]
            return _error(421, f"Host {name!r} is not served here: use the address the backend listens on, "
                               f"or start it with --allowed-host {name}")
    origin = headers.get("origin")
    if request.method in STATE_CHANGING and origin is not None and not same_origin(origin, request.url.scheme, host):
        return _error(403, f"refused a {request.method} from another origin ({origin[:100]}): "
                           "the API takes changes only from its own clients")
    if tokens:
        caller = tokens.caller(headers.get("authorization", ""))
        if caller is None:
            return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        request.state.caller = caller
    if request.method in ("POST", "PUT", "PATCH"):
        length = headers.get("content-length")
        has_body = (length is not None and length.strip() != "0") or "transfer-encoding" in headers
        content_type = headers.get("content-type")
        if (content_type is not None or has_body) and _media_type(content_type or "") != "application/json":
            return _error(415, f"the request body must be application/json, not {content_type or 'untyped'}"[:200])
        if length is not None and length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, _too_large_message())
    return None


def _documented_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Every error answer is the JSON ErrorBody, also on routes whose success is text (FastAPI would
    give their errors the route's media type); FastAPI's 422 goes: this API answers 400 instead."""
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                if str(status)[:1] in ("4", "5"):
                    response["content"] = dict(error_content)
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def caller(request: Request) -> str:
    """Who sent the request, as revisions and events record it: the name of its token (backend.tokens),
    or "local" when the API takes no token (the in-process console, a loopback serve without one)."""
    return str(getattr(request.state, "caller", LOCAL))


def create_app(
    backend: Backend, token: str | Tokens | None = None, allowed_hosts: Collection[str] | None = None
) -> FastAPI:
    """The API over `backend`. `token`: the bearer token every request must carry, or the named tokens
    of which it must carry one (`Tokens`: what it changes is recorded as by that name). `allowed_hosts`:
    the names a request's Host header may give (see `host_allowed`), None for no Host check (the
    in-process console, which no browser can reach)."""
    app = FastAPI(
        title="hyperservice",
        version="0.1.0",
        description="Load-balanced, replicated container services on Docker (the Hyper.sh service API).",
    )
    app.state.backend = backend
    tokens = Tokens.single(token) if isinstance(token, str) and token else token or None

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _documented_errors(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Refuse what must not reach a route (`_refusal`); turn any unexpected failure into a 500
        with an error id (never re-raised, so an in-process client gets an answer, not a traceback).
        The failure's detail goes to the log only: it may name paths, addresses or engine internals."""
        refused = _refusal(request, tokens, allowed_hosts)
        if refused is not None:
            return refused
        try:
            return await call_next(request)
        except Exception:
            error_id = secrets.token_hex(6)
            log.exception("error %s: %s %s failed", error_id, request.method, request.url.path)
            return _error(500, f"internal error {error_id}: the backend's log has the details")

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc), exc.errors)

    @app.exception_handler(Invalid)
    async def _invalid(request: Request, exc: Invalid) -> JSONResponse:
        return _error(400, str(exc), exc.errors)

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(request: Request, exc: EngineUnavailable) -> JSONResponse:
        return _error(503, str(exc))  # names DOCKER_HOST and how to fix it

    @app.exception_handler(RequestValidationError)
    async def _bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(field=str(e["loc"][-1]), message=e["msg"]) for e in exc.errors()]
        return _error(400, f"invalid request: {summarise(errors)}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.post("/services/create", status_code=201, response_model=Service, responses=_ERRORS,
              openapi_extra=_body_schema(ServiceSpec))
    async def create_service(request: Request) -> Service:
        """Create a service; it answers at once, provisioning goes on in the background."""
        spec = await _validated(request, ServiceSpec, backend.validation_context)
        return await run_in_threadpool(backend.create, spec, caller(request))

    @app.get("/services", response_model=list[Service], responses=_ERRORS)
    def list_services() -> list[Service]:
        return backend.list_services()

    @app.get("/services/{name}", response_model=Service, responses=_ERRORS)
    def inspect_service(name: str) -> Service:
        return backend.get(name)

    @app.post("/services/{name}/update", response_model=Service, responses=_ERRORS,
              openapi_extra=_body_schema(ServiceUpdate))
    async def update_service(name: str, request: Request) -> Service:
        """Change Replicas (scale), Image (rolling update) or FIP ("" detaches)."""
        change = await _validated(request, ServiceUpdate, backend.validation_context)
        return await run_in_threadpool(backend.update, name, change, caller(request))

    @app.delete("/services/{name}", status_code=202, response_class=Response,
                responses={**_ERRORS, 202: {"description": "accepted: the service is being torn down"},
                           204: {"description": "the service is gone already (deleted before)"}})
    def delete_service(
        name: str,
        request: Request,
        keep: bool = Query(False, description="leave the replicas running"),
        volumes: bool = Query(False, description="also remove the service's named volumes and their data"),
    ) -> Response:
        """Answers at once: 202 while the service is torn down in the background (its status says
        `deleting`; a `deleted` event on /events when it is gone), 204 when it is gone already. A
        repeated DELETE during the teardown changes nothing (the first `keep` holds)."""
        return Response(status_code=204 if backend.delete(name, keep, volumes, caller(request)) else 202)

    @app.get("/services/{name}/revisions", response_model=list[Revision], responses=_ERRORS)
    def service_revisions(name: str) -> list[Revision]:
        """Extension: the service's revisions, newest first (every change of Image is one): number,
        image, when, by whom, outcome (rolling, active, failed, rolled back, superseded) and why."""
        return backend.revisions(name)

    @app.post("/services/{name}/rollback", response_model=Service, responses=_ERRORS,
              openapi_extra=_body_schema(RollbackRequest))
    async def rollback_service(name: str, request: Request) -> Service:
        """Extension: back to the last revision whose replicas were all ready (or {"Revision": N}): a
        new revision with that image, rolled out like an image update. 400 for an unknown revision,
        the current one, or nothing to go back to; 409 while the service is being deleted."""
        raw = await _read_body(request)
        wanted = await run_in_threadpool(_parse, raw or b"{}", RollbackRequest, {})
        return await run_in_threadpool(backend.rollback, name, wanted.Revision, caller(request))

    @app.get("/services/{name}/volumes", response_model=list[VolumeInfo], responses=_ERRORS)
    def service_volumes(name: str) -> list[VolumeInfo]:
        """Extension: the service's named volumes, each with its scoped name on the engine."""
        return backend.volumes(name)

    @app.get("/services/{name}/events", response_model=ServiceHistory, responses=_ERRORS)
    def service_events(
        name: str,
        limit: int = Query(100, ge=1, le=EVENTS_KEPT, description="the last this many entries"),
        window: int = Query(DEFAULT_WINDOW, ge=1, le=86_400, description="seconds back the Summary looks"),
    ) -> ServiceHistory:
        """Extension: the service's history, oldest first (status changes; replica starts, exits with
        exit code and OOM kills, replacements; health changes; operator actions), kept across restarts
        (the last 500 per service), and `Summary`: the trouble of the last `window` seconds grouped by
        cause, most telling first ("1 replica OOM-killed 3 times in the last 5 min")."""
        return backend.service_history(name, limit, window)

    @app.get("/services/{name}/containers", response_model=list[ContainerInfo], responses=_ENGINE_ERRORS)
    def service_containers(name: str) -> list[ContainerInfo]:
        """Each replica: Id, Name, State, Health (as the balancer sees it), Address, Started, Restarts."""
        return backend.containers(name)

    @app.get("/services/{name}/balancer", response_model=BalancerView, responses=_ENGINE_ERRORS)
    def service_balancer(name: str) -> BalancerView:
        """Extension: what the balancer counts, from HAProxy's runtime stats (since each balancer
        started). `Fronts`: per address the service answers on (ip, fip). `Replicas`: per serving
        replica its State (UP, DOWN, MAINT, DRAIN), last Check and its duration (CheckMs), Sessions
        open now, Total since start, Rate (per second), Share (of all replicas' Total), Http5xx,
        BytesIn, BytesOut. A sync route: the `docker exec` runs in the threadpool."""
        return backend.balancer(name)

    @app.get("/replicas", response_model=dict[str, list[ContainerInfo]], responses=_ENGINE_ERRORS)
    def all_replicas() -> dict[str, list[ContainerInfo]]:
        """Extension: every service's replicas in one answer ({"<service>": [...]})."""
        return backend.all_containers()

    @app.get("/fips", responses=_ERRORS)
    def floating_ips() -> list[dict[str, str]]:
        """Extension: the floating IP pool, each address with the service it is attached to ("" = free)."""
        return backend.floating_ips()

    @app.get("/images", response_model=list[str], responses=_ERRORS)
    def images(
        prefix: str = Query("", max_length=300, description="only references starting with this"),
        limit: int = Query(MAX_IMAGE_TAGS, ge=1, le=500, description="the most references answered"),
    ) -> list[str]:
        """Extension: the image references (repository:tag) the engine has, sorted (for suggestions)."""
        return backend.images(prefix, limit)

    @app.get("/limits", responses=_ERRORS)
    def limits() -> dict[str, int]:
        """Extension: the limits the backend validates against (for a remote console's form)."""
        return {"MaxReplicas": backend.settings.max_replicas}

    @app.get("/engine", responses=_ERRORS)
    def engine() -> dict[str, str]:
        """Extension: which engine runs the services, `docker` or `swarm` (HYPERSERVICE_ENGINE; shown in the
        console's header)."""
        return {"Engine": backend.engine_name}

    @app.get("/services/{name}/logs", response_class=PlainTextResponse, responses=_ENGINE_ERRORS)
    def service_logs(
        name: str,
        container: str | None = Query(None, description="one replica (name or id); all when empty"),
        tail: int | None = Query(None, ge=0, le=MAX_LOG_TAIL,
                                 description="lines per replica from the end (default 1000; 100 when following)"),
        follow: bool = Query(False, description="keep the stream open and send new lines"),
    ) -> Response:  # the whole log as plain text, or (follow) a stream of it
        if follow:
            return _streamed(backend.follow_logs(name, container or None, tail), "text/plain; charset=utf-8")
        return PlainTextResponse(backend.logs(name, container or None, tail))

    @app.get("/services/{name}/stats", responses=_ENGINE_ERRORS)
    def service_stats(name: str) -> StreamingResponse:
        """Newline-delimited JSON, one line per replica about every second: Id, Name, CPUPercent
        (100 = one CPU busy), MemoryBytes, MemoryLimit. Ends when the replicas it started with are gone."""
        return _streamed(backend.follow_stats(name), "application/x-ndjson")

    @app.get("/events", responses=_ERRORS)
    async def events(request: Request) -> StreamingResponse:
        """Newline-delimited JSON: one object per change of a service, a container or the engine.

        The first line is {"Type": "hello", ...} (sent once subscribed: read the list after it and
        nothing is missed); a {"Type": "ping"} line comes every few seconds of quiet.
        """
        subscription = backend.hub.subscribe_async()
        engine = backend.reconciler.engine_error

        async def body() -> AsyncIterator[bytes]:
            try:
                yield _line({"Type": "hello", "Action": "subscribed", "Engine": engine or "ok", "Tenant": backend.tenant})
                while True:
                    event = await subscription.get(timeout=PING_SECONDS)
                    if await request.is_disconnected():
                        return
                    yield _line(event or {"Type": "ping", "Action": "ping"})
            finally:
                subscription.close()

        return StreamingResponse(body(), media_type="application/x-ndjson")

    return app
