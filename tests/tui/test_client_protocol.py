"""One Protocol for the console's client: `ApiClient` (the real one) and `FakeClient` (fixed data for
snapshots and fast Pilot tests) both match `ConsoleClient` exactly — names, parameters, defaults,
annotations, async or streaming — and the console uses nothing of its client that the Protocol lacks.
So the fake cannot drift from the real client unnoticed. (mypy checks the same through `_typed` below.)
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import FakeClient

from tui.client import ApiClient, ConsoleClient

TUI = Path(__file__).resolve().parents[2] / "tui"


def _typed(real: ApiClient, fake: FakeClient) -> tuple[ConsoleClient, ConsoleClient]:
    return real, fake  # mypy: both are ConsoleClients


def protocol_methods() -> dict[str, Callable[..., object]]:
    return {name: value for name, value in vars(ConsoleClient).items()
            if callable(value) and not name.startswith("_")}


def protocol_attributes() -> dict[str, object]:
    return typing.get_type_hints(ConsoleClient)


def kind(function: Callable[..., object]) -> str:
    if inspect.isasyncgenfunction(function):
        return "stream"
    if inspect.iscoroutinefunction(function):
        return "coroutine"
    returns = typing.get_type_hints(function).get("return")
    return "stream" if typing.get_origin(returns) is typing.get_origin(typing.AsyncIterator[int]) else "function"


def shape(function: Callable[..., object]) -> tuple[object, ...]:
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    parameters = tuple((p.name, p.kind, p.default, hints.get(p.name)) for p in signature.parameters.values())
    return kind(function), parameters, hints.get("return")


def test_the_protocol_is_what_it_claims():
    assert set(protocol_methods()) >= {"list_services", "events", "stats", "follow_logs", "aclose"}
    assert set(protocol_attributes()) == {"description", "backend"}


@pytest.mark.parametrize("client", [ApiClient, FakeClient], ids=["ApiClient", "FakeClient"])
@pytest.mark.parametrize("name", sorted(protocol_methods()))
def test_each_client_has_each_method_with_the_protocols_signature(client: type, name: str):
    assert hasattr(client, name), f"{client.__name__} lacks {name}"
    assert shape(getattr(client, name)) == shape(protocol_methods()[name])


async def test_each_client_has_the_protocols_attributes():
    real = ApiClient.remote("http://127.0.0.1:9")  # nothing is sent: the client is only looked at
    try:
        for client in (real, FakeClient()):
            for name, annotation in protocol_attributes().items():
                assert hasattr(client, name), f"{type(client).__name__} lacks {name}"
                if annotation is not typing.Any:
                    assert isinstance(getattr(client, name), annotation), (type(client).__name__, name)
    finally:
        await real.aclose()


def client_members_used_by_the_console() -> set[str]:
    """Every `….client.X` and `getattr(….client, "X")` in tui/ (but the client's own module)."""
    used: set[str] = set()
    for path in TUI.rglob("*.py"):
        if path.name == "client.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "client":
                used.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) >= 2 and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "client"
                  and isinstance(node.args[1], ast.Constant)):
                used.add(str(node.args[1].value))
    return used


def test_the_console_uses_nothing_of_its_client_beyond_the_protocol():
    used = client_members_used_by_the_console()
    assert {"events", "update_service", "backend"} <= used  # the scan finds what is there
    assert used <= set(protocol_methods()) | set(protocol_attributes()), used - set(protocol_methods())
