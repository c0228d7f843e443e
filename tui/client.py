"""The console's one way to the backend: `ApiClient`, typed async methods over httpx.

`ConsoleClient` is what the console needs of it, as a Protocol: the console is typed against that, and
the tests' fixed-data fake (tests/tui/fakes.py) is one too; tests/tui/test_client_protocol.py holds both
to its signatures, so they cannot drift apart.

The same client serves both modes: in-process (the FastAPI app of `backend.api` on a `Backend`, reached
through `StreamingASGITransport`, no port opened) and remote (`hyperservice serve` at a URL, with an
optional bearer token). Answers come back as the backend's own pydantic models; every failure, from a
400 with per-field errors to an unreachable server, is raised as one `ApiError`.

httpx's own `ASGITransport` collects the whole response before handing it over, so the endless
`/events` stream and `logs?follow=true` would never arrive through it; `StreamingASGITransport` runs the
app as a task and passes body chunks through a queue as they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from backend.models import BalancerView, ContainerInfo, FieldError, Revision, Service, ServiceHistory

IN_PROCESS_URL = "http://hyperservice.local"
_END = object()


class Replica(ContainerInfo):
    """A replica as the containers route reports it; fields the backend adds later (CPU, memory)
    are kept rather than dropped, so the console shows them as soon as they exist."""

    model_config = ConfigDict(extra="allow")


class ReplicaStats(BaseModel):
    """One sample of `GET /services/{name}/stats`: CPU (100 = one CPU busy) and memory of a replica."""

    model_config = ConfigDict(extra="allow")

    Id: str
    Name: str = ""
    CPUPercent: float | None = None
    MemoryBytes: int | None = None
    MemoryLimit: int | None = None


class FloatingIP(BaseModel):
    """One address of the backend's floating IP pool and the service holding it ("" = free)."""

    Address: str
    Service: str = ""


class Limits(BaseModel):
    """What the backend validates against (`GET /limits`)."""

    model_config = ConfigDict(extra="allow")

    MaxReplicas: int


class ApiError(Exception):
    """A failed API call: the HTTP status (0 when the server could not be reached), the server's
    message, and its per-field errors (400, 409)."""

    def __init__(self, status: int, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []

    def __str__(self) -> str:
        return self.message


class ConsoleClient(Protocol):
    """Everything the console asks of its way to the backend (`ApiClient`, or a test's fake)."""

    description: str  # where the backend is, for messages
    backend: Any  # the in-process Backend, None when remote

    async def list_services(self) -> list[Service]: ...

    async def get_service(self, name: str) -> Service: ...

    async def create_service(self, body: dict[str, Any]) -> Service: ...

    async def update_service(self, name: str, **changes: Any) -> Service: ...

    async def delete_service(self, name: str, keep: bool = False) -> bool: ...

    async def containers(self, name: str) -> list[ContainerInfo]: ...

    async def all_replicas(self) -> dict[str, list[ContainerInfo]]: ...

    async def floating_ips(self) -> list[FloatingIP]: ...

    async def images(self, prefix: str = "", limit: int | None = None) -> list[str]: ...

    async def service_events(self, name: str, limit: int = 100, window: int | None = None) -> ServiceHistory: ...

    async def revisions(self, name: str) -> list[Revision]: ...

    async def rollback(self, name: str, revision: int | None = None) -> Service: ...

    async def limits(self) -> Limits: ...

    async def engine(self) -> str: ...

    async def balancer(self, name: str) -> BalancerView: ...

    # streams: async generators, so plain `def`s answering an async iterator
    def stats(self, name: str) -> AsyncIterator[ReplicaStats]: ...

    def follow_logs(self, name: str, container: str | None = None, tail: int | None = 200) -> AsyncIterator[str]: ...

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# A streaming ASGI transport
# ---------------------------------------------------------------------------------------------


class _QueueStream(httpx.AsyncByteStream):
    """The response body: chunks as the app sends them; closing it cancels the app's task."""

    def __init__(self, queue: asyncio.Queue, task: asyncio.Task, closed: asyncio.Event) -> None:
        self._queue = queue
        self._task = task
        self._closed = closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is _END:
                return
            if isinstance(chunk, BaseException):
                raise httpx.ReadError(f"the backend failed while answering: {chunk}") from chunk
            yield chunk

    async def aclose(self) -> None:
        self._closed.set()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Call an ASGI app in-process and stream its response (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 0),
            "root_path": "",
        }
        queue: asyncio.Queue = asyncio.Queue()
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        closed = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if closed.is_set():
                raise OSError("the client went away")
            if message["type"] == "http.response.start":
                if not started.done():
                    started.set_result(message)
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    queue.put_nowait(bytes(chunk))
                if not message.get("more_body", False):
                    queue.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # surfaced to the reader, never swallowed
                if not started.done():
                    started.set_exception(exc)
                else:
                    queue.put_nowait(exc)
                return
            if not started.done():
                started.set_exception(RuntimeError("the app ended without answering"))
            queue.put_nowait(_END)

        task = asyncio.create_task(run(), name=f"asgi {request.method} {request.url.path}")
        try:
            start = await started
        except BaseException:
            closed.set()
            task.cancel()
            raise
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        return httpx.Response(start["status"], headers=headers, stream=_QueueStream(queue, task, closed), request=request)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


async def _log_lines(response: httpx.Response) -> AsyncIterator[str]:
    r"""The body's lines, split at "\n" only (and "\r\n"). httpx's `aiter_lines` also splits at a lone
    CR, FF, VT, \x1c-\x1e, NEL and U+2028, which would cut a log line that carries one into pieces
    without their label; here such characters stay in their line (the log pane shows them)."""
    pending = ""
    async for chunk in response.aiter_text():
        pending += chunk
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line.removesuffix("\r")
    if pending:
        yield pending.removesuffix("\r")


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and "message" in body:
        errors = [FieldError.model_validate(e) for e in body.get("errors") or [] if isinstance(e, dict)]
        return ApiError(response.status_code, str(body["message"]), errors)
    text = response.text.strip()[:300] if response.content else ""
    return ApiError(response.status_code, text or f"HTTP {response.status_code} {response.reason_phrase}")


class ApiClient:
    """Typed access to the HTTP API (SPEC.md), in-process or remote.

    `ApiClient.in_process(backend)` or `ApiClient.remote(url, token)`. The owner calls `aclose()`.
    """

    def __init__(self, http: httpx.AsyncClient, description: str, backend: Any = None) -> None:
        self.http = http
        self.description = description  # "in-process backend" or the URL, for messages
        self.backend = backend  # the in-process Backend, None when remote

    @classmethod
    def in_process(cls, backend: Any, token: str | None = None) -> ApiClient:
        from backend.api import create_app

        transport = StreamingASGITransport(create_app(backend, token))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx.AsyncClient(transport=transport, base_url=IN_PROCESS_URL, headers=headers, timeout=180)
        return cls(http, "the in-process backend", backend)

    @classmethod
    def remote(cls, url: str, token: str | None = None) -> ApiClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(180, connect=5)
        http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        return cls(http, url, None)

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- plumbing ----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the backend at {self.description}: {exc or exc.__class__.__name__}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    @contextlib.asynccontextmanager
    async def _stream(self, path: str, params: dict | None = None) -> AsyncIterator[httpx.Response]:
        try:
            async with self.http.stream("GET", path, params=params, timeout=httpx.Timeout(None, connect=5)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error_from(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiError(0, f"lost the stream from {self.description}: {exc or exc.__class__.__name__}") from exc

    # -- the API -----------------------------------------------------------------------------

    async def list_services(self) -> list[Service]:
        response = await self._request("GET", "/services")
        return [Service.model_validate(item) for item in response.json()]

    async def get_service(self, name: str) -> Service:
        response = await self._request("GET", f"/services/{name}")
        return Service.model_validate(response.json())

    async def create_service(self, body: dict[str, Any]) -> Service:
        response = await self._request("POST", "/services/create", json=body)
        return Service.model_validate(response.json())

    async def update_service(self, name: str, **changes: Any) -> Service:
        response = await self._request("POST", f"/services/{name}/update", json=changes)
        return Service.model_validate(response.json())

    async def delete_service(self, name: str, keep: bool = False) -> bool:
        """Ask for the deletion; True when the service is gone already (204), False while the
        backend tears it down (202: its `deleted` event on /events says when it is gone)."""
        response = await self._request("DELETE", f"/services/{name}", params={"keep": "true" if keep else "false"})
        return response.status_code == 204

    async def remove_service(self, name: str, keep: bool = False, volumes: bool = False) -> bool:
        """DELETE with both options (the scriptable CLI's `rm`): True when the service is gone (204),
        False while the backend tears it down (202: GET answers 404 once it is gone)."""
        params = {"keep": "true" if keep else "false"}
        if volumes:
            params["volumes"] = "true"
        response = await self._request("DELETE", f"/services/{name}", params=params)
        return response.status_code == 204

    async def rollback(self, name: str, revision: int | None = None) -> Service:
        """Back to the previous revision (or `revision`): `POST /services/{name}/rollback`."""
        body: dict[str, Any] = {"Revision": revision} if revision is not None else {}
        response = await self._request("POST", f"/services/{name}/rollback", json=body)
        return Service.model_validate(response.json())

    async def revisions(self, name: str) -> list[Revision]:
        """The service's revisions, newest first: `GET /services/{name}/revisions`."""
        response = await self._request("GET", f"/services/{name}/revisions")
        return [Revision.model_validate(item) for item in response.json()]

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """A GET route's answer as the backend's JSON, unparsed (for a route this client has no typed
        method for, shown as it comes: e.g. the scriptable CLI's `events`)."""
        response = await self._request("GET", path, params=params)
        return response.json()

    async def containers(self, name: str) -> list[ContainerInfo]:
        response = await self._request("GET", f"/services/{name}/containers")
        return [Replica.model_validate(item) for item in response.json()]

    async def service_events(self, name: str, limit: int = 100, window: int | None = None) -> ServiceHistory:
        """The service's history (`GET /services/{name}/events`): the last `limit` entries, oldest
        first, and the trouble of the last `window` seconds (the backend's default: 5 min) grouped."""
        params: dict[str, Any] = {"limit": limit}
        if window is not None:
            params["window"] = window
        response = await self._request("GET", f"/services/{name}/events", params=params)
        return ServiceHistory.model_validate(response.json())

    async def balancer(self, name: str) -> BalancerView:
        """What the service's balancers count per front and per replica (`GET /services/{name}/balancer`)."""
        response = await self._request("GET", f"/services/{name}/balancer")
        return BalancerView.model_validate(response.json())

    async def all_replicas(self) -> dict[str, list[ContainerInfo]]:
        """Every service's replicas in one answer (`GET /replicas`)."""
        response = await self._request("GET", "/replicas")
        return {str(name): [Replica.model_validate(item) for item in items] for name, items in response.json().items()}

    async def floating_ips(self) -> list[FloatingIP]:
        """The floating IP pool, each address with its holder (`GET /fips`)."""
        response = await self._request("GET", "/fips")
        return [FloatingIP.model_validate(item) for item in response.json()]

    async def images(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """The image references (repository:tag) the backend's engine has, sorted (`GET /images`)."""
        params: dict[str, Any] = {"prefix": prefix}
        if limit is not None:
            params["limit"] = limit
        response = await self._request("GET", "/images", params=params)
        return [str(reference) for reference in response.json()]

    async def limits(self) -> Limits:
        response = await self._request("GET", "/limits")
        return Limits.model_validate(response.json())

    async def engine(self) -> str:
        """Which engine runs the services: docker or swarm (`GET /engine`)."""
        response = await self._request("GET", "/engine")
        return str(response.json().get("Engine", ""))

    async def stats(self, name: str) -> AsyncIterator[ReplicaStats]:
        """CPU and memory samples of the service's replicas, about one per replica and second, until
        the replicas the stream started with are gone."""
        async with self._stream(f"/services/{name}/stats") as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    yield ReplicaStats.model_validate_json(line)
                except ValueError:
                    continue

    async def logs(self, name: str, container: str | None = None, tail: int | None = None) -> str:
        params: dict[str, Any] = {}
        if container:
            params["container"] = container
        if tail is not None:
            params["tail"] = tail
        response = await self._request("GET", f"/services/{name}/logs", params=params)
        return response.text

    async def follow_logs(self, name: str, container: str | None = None, tail: int | None = 200) -> AsyncIterator[str]:
        """Labelled log lines ("<time> <replica> | <text>") as the replicas write them."""
        params: dict[str, Any] = {"follow": "true"}
        if container:
            params["container"] = container
        if tail is not None:
            params["tail"] = tail
        async with self._stream(f"/services/{name}/logs", params) as response:
            async for line in _log_lines(response):
                yield line

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The backend's change feed: one dict per event; the first is {"Type": "hello", ...}."""
        async with self._stream("/events") as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
