"""Schemathesis hooks for tests/test_fuzz_api.py (loaded through SCHEMATHESIS_HOOKS).

They keep the fuzz run's side effects on this machine and bounded, without narrowing what reaches
the API's validation: a *valid* image reference becomes the offline test image (the engine would
otherwise try a registry), valid volume names get a per-run prefix (so the run removes exactly the
volumes it made), and `follow` on the logs route is turned off (an endless stream is not a hang).
Invalid values pass through untouched: refusing them is what is under test.

`error_shape` is an extra check: every 4xx answer is the API's error body.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from backend.models import check_image

FUZZ_IMAGE = os.environ.get("HYPERSERVICE_FUZZ_IMAGE", "hyperservice-test/web:1")
VOLUME_PREFIX = os.environ.get("HYPERSERVICE_FUZZ_VOLUME_PREFIX", "hsfuzz-")


def _is_image(value: Any) -> bool:
    try:
        check_image(value)
    except (ValueError, TypeError):
        return False
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("Image"), str) and _is_image(body["Image"]):
            body["Image"] = FUZZ_IMAGE
        volumes = body.get("Volumes")
        if isinstance(volumes, list):
            body["Volumes"] = [VOLUME_PREFIX + v if isinstance(v, str) and v[:1].isalnum() else v for v in volumes]
    if case.operation.path == "/services/{name}/logs" and isinstance(case.query, dict) and "follow" in case.query:
        case.query["follow"] = "false"


@schemathesis.check
def error_shape(context: Any, response: Any, case: Any) -> bool | None:
    """A 4xx carries {"message": "...", "errors": [{"field": "...", "message": "..."}]}."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"message", "errors"}, f"not the error shape: {body!r}"
    assert isinstance(body["message"], str) and body["message"], f"no message: {body!r}"
    assert isinstance(body["errors"], list), f"errors is not a list: {body!r}"
    for item in body["errors"]:
        assert isinstance(item, dict) and set(item) == {"field", "message"}, f"a field error of another shape: {item!r}"
        assert isinstance(item["field"], str) and isinstance(item["message"], str), item
    return None
