"""The HTTP API (FastAPI): the routes of SPEC.md over a `Backend`.

The same app serves the console in-process (httpx's ASGI transport, no port opened) and over TCP
(`hyperservice serve`). Request bodies are validated here with the models, so every error comes back
in one shape: `{"message": ..., "errors": [{"field": ..., "message": ...}]}`.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.core import Backend, Conflict, Invalid, NotFound
from backend.models import (
    ContainerInfo,
    ErrorBody,
    FieldError,
    Service,
    ServiceSpec,
    ServiceUpdate,
    VolumeInfo,
    field_errors,
    summarise,
)

log = logging.getLogger(__name__)

PING_SECONDS = 5.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 500: {"model": ErrorBody}
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


def _streamed(follower: _Follower, media_type: str) -> StreamingResponse:
    """Stream a follower's lines; its Docker streams are closed when the client goes away."""

    async def body() -> AsyncIterator[str]:
        try:
            async for line in follower.lines():
                yield line
        finally:
            follower.close()

    return StreamingResponse(body(), media_type=media_type)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _validated(request: Request, model: type[_Model], context: dict[str, Any]) -> _Model:
    try:
        data = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Invalid("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Invalid(f"invalid request: {summarise(errors)}", errors) from None


def create_app(backend: Backend, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="hyperservice",
        version="0.1.0",
        description="Load-balanced, replicated container services on Docker (the Hyper.sh service API).",
    )
    app.state.backend = backend

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Check the token; turn any unexpected failure into a 500 with its message (never re-raised,
        so an in-process client gets an answer, not a traceback)."""
        if token:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        try:
            return await call_next(request)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, str(exc) or exc.__class__.__name__)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc), exc.errors)

    @app.exception_handler(Invalid)
    async def _invalid(request: Request, exc: Invalid) -> JSONResponse:
        return _error(400, str(exc), exc.errors)

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
        return await run_in_threadpool(backend.create, spec)

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
        return await run_in_threadpool(backend.update, name, change)

    @app.delete("/services/{name}", status_code=204, responses=_ERRORS)
    def delete_service(
        name: str,
        keep: bool = Query(False, description="leave the replicas running"),
        volumes: bool = Query(False, description="also remove the service's named volumes and their data"),
    ) -> Response:
        backend.delete(name, keep, volumes)
        return Response(status_code=204)

    @app.get("/services/{name}/volumes", response_model=list[VolumeInfo], responses=_ERRORS)
    def service_volumes(name: str) -> list[VolumeInfo]:
        """Extension: the service's named volumes, each with its scoped name on the engine."""
        return backend.volumes(name)

    @app.get("/services/{name}/containers", response_model=list[ContainerInfo], responses=_ERRORS)
    def service_containers(name: str) -> list[ContainerInfo]:
        """Each replica: Id, Name, State, Health (as the balancer sees it), Address, Started, Restarts."""
        return backend.containers(name)

    @app.get("/replicas", response_model=dict[str, list[ContainerInfo]], responses=_ERRORS)
    def all_replicas() -> dict[str, list[ContainerInfo]]:
        """Extension: every service's replicas in one answer ({"<service>": [...]})."""
        return backend.all_containers()

    @app.get("/fips", responses=_ERRORS)
    def floating_ips() -> list[dict[str, str]]:
        """Extension: the floating IP pool, each address with the service it is attached to ("" = free)."""
        return backend.floating_ips()

    @app.get("/limits", responses=_ERRORS)
    def limits() -> dict[str, int]:
        """Extension: the limits the backend validates against (for a remote console's form)."""
        return {"MaxReplicas": backend.settings.max_replicas}

    @app.get("/services/{name}/logs", response_class=PlainTextResponse, responses=_ERRORS)
    def service_logs(
        name: str,
        container: str | None = Query(None, description="one replica (name or id); all when empty"),
        tail: int | None = Query(None, ge=0, description="lines per replica from the end"),
        follow: bool = Query(False, description="keep the stream open and send new lines"),
    ) -> Response:  # the whole log as plain text, or (follow) a stream of it
        if follow:
            return _streamed(backend.follow_logs(name, container or None, tail), "text/plain; charset=utf-8")
        return PlainTextResponse(backend.logs(name, container or None, tail))

    @app.get("/services/{name}/stats", responses=_ERRORS)
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
