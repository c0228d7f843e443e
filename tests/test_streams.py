"""The streaming routes over a real TCP socket: /events, logs?follow=true, stats."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
import uvicorn

from backend.api import create_app
from tests.conftest import eventually, wait_status, web_body
from tests.test_serve import free_port


@pytest.fixture
async def tcp_api(backend):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    await eventually(lambda: server.started, 10, 0.05, "the API server to start")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=10)


async def read_lines(response: httpx.Response, until, timeout: float = 30.0) -> list:
    seen = []

    async def reader():
        async for line in response.aiter_lines():
            if line.strip():
                seen.append(line)
                if until(seen):
                    return

    await asyncio.wait_for(reader(), timeout)
    return seen


async def test_events_stream_service_changes_as_they_happen(tcp_api: httpx.AsyncClient):
    async with tcp_api.stream("GET", "/events") as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        hello = json.loads(await anext(lines))
        assert hello["Type"] == "hello"
        await tcp_api.post("/services/create", json=web_body("watched", 1))
        events = []
        async for line in lines:
            event = json.loads(line)
            events.append(event)
            if event.get("Type") == "service" and event.get("Status") == "active":
                break
        kinds = [(e["Type"], e["Action"]) for e in events]
        assert ("service", "created") in kinds
        assert ("container", "start") in kinds  # from Docker's own event stream
        assert events[-1]["Name"] == "watched" and events[-1]["Message"] == "Scaling complete"


async def test_logs_follow_streams_labelled_lines_of_every_replica(tcp_api: httpx.AsyncClient, backend):
    await tcp_api.post("/services/create", json=web_body(
        "chatty", 2, Cmd=["sh", "-c", "/bin/serve & while true; do echo tick from $(hostname); sleep 0.2; done"],
        StopSignal="SIGKILL"))
    await wait_status(tcp_api, "chatty", "active")
    names = {c["Name"] for c in (await tcp_api.get("/services/chatty/containers")).json()}
    async with tcp_api.stream("GET", "/services/chatty/logs", params={"follow": "true", "tail": "1"}) as response:
        lines = await read_lines(response, lambda seen: {line.split(" ")[1] for line in seen} == names and len(seen) > 6)
    for line in lines:
        when, who, bar, *text = line.split(" ")
        assert who in names and bar == "|" and text == ["tick", "from", who]
    one = sorted(names)[0]
    async with tcp_api.stream("GET", "/services/chatty/logs", params={"follow": "true", "container": one}) as response:
        lines = await read_lines(response, lambda seen: len(seen) >= 3)
    assert {line.split(" ")[1] for line in lines} == {one}


async def test_stats_stream_cpu_and_memory_of_each_replica(tcp_api: httpx.AsyncClient):
    await tcp_api.post("/services/create", json=web_body("busy", 2, ContainerSize="s2"))
    await wait_status(tcp_api, "busy", "active")
    ids = {c["Id"] for c in (await tcp_api.get("/services/busy/containers")).json()}
    async with tcp_api.stream("GET", "/services/busy/stats") as response:
        lines = await read_lines(response, lambda seen: {json.loads(line)["Id"] for line in seen} == ids)
    for sample in map(json.loads, lines):
        assert sample["MemoryLimit"] == 128 * 1024 * 1024
        assert 0 < sample["MemoryBytes"] < sample["MemoryLimit"]
        assert sample["CPUPercent"] >= 0
