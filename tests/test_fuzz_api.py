"""The whole HTTP API under property-based fuzzing (schemathesis), from its own OpenAPI document,
against a real `hyperservice serve` over TCP on the real engine: no 5xx, no hang (every request
answers within its timeout), every answer as documented and every 4xx in the error shape.

Bounded for CI: one worker, a few examples per operation and a time budget (FUZZ_SECONDS). The
endless streams (`/events`, `/services/{name}/stats`) are left out; `logs?follow=` is turned off by
tests/fuzz_hooks.py. Whatever the run creates is removed afterwards (tenant label, volume prefix).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import subprocess
import sys

import docker
import httpx
import pytest

from tests.conftest import WEB_IMAGE
from tests.test_hardening import ROOT, serve_env, serving

FUZZ_SECONDS = int(os.environ.get("HYPERSERVICE_FUZZ_SECONDS", "60"))
EXAMPLES_PER_OPERATION = int(os.environ.get("HYPERSERVICE_FUZZ_EXAMPLES", "30"))
REQUEST_TIMEOUT = 60  # seconds: more than any answer takes (DELETE waits for the teardown)
STREAMS = ("/events", "/services/{name}/stats")
# no 5xx; each answer's status, media type and body as documented; every 4xx in the error shape
# (tests/fuzz_hooks.py); data the schema forbids is refused (the schema's bounds are the API's).
CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
    "negative_data_rejection", "error_shape",
))


def remove_volumes(docker_client: docker.DockerClient, prefix: str) -> None:
    for volume in docker_client.volumes.list():
        if prefix in volume.name:
            with contextlib.suppress(docker.errors.APIError):  # gone already, or still in use elsewhere
                volume.remove(force=True)


@pytest.mark.docker
def test_the_whole_api_survives_fuzzing(tmp_path, docker_client):
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
    volume_prefix = f"hsfuzz{secrets.token_hex(3)}-"
    env = serve_env(
        tmp_path,
        HYPERSERVICE_MAX_REPLICAS="2",  # what fuzzed creates may start stays small
        HYPERSERVICE_ADDRESS_POOL=f"{block}.0/25",
        HYPERSERVICE_FIP_POOL=f"{block}.200,{block}.201",
        HYPERSERVICE_RESYNC_SECONDS="5",
    )
    try:
        with serving(tmp_path, docker_client, ["serve", "--token-file", str(token_file)], token=token, env=env,
                     delete_services=False) as served:
            document = httpx.get(served.url + "/openapi.json", headers=served.headers, timeout=30).json()
            schema = tmp_path / "openapi.json"
            schema.write_text(json.dumps(document))
            argv = [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "tests" / "fuzz_schemathesis.toml"),
                "run", str(schema), "--url", served.url,
                "-H", f"Authorization: Bearer {token}",
                "--checks", CHECKS,
                "--phases", "examples,coverage,fuzzing",
                "--max-examples", str(EXAMPLES_PER_OPERATION), "--max-time", str(FUZZ_SECONDS),
                "--request-timeout", str(REQUEST_TIMEOUT), "--workers", "1",
                "--suppress-health-check", "all", "--no-color",
            ]
            for path in STREAMS:
                argv += ["--exclude-path", path]
            run_env = {**env, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
                       "HYPERSERVICE_FUZZ_IMAGE": WEB_IMAGE, "HYPERSERVICE_FUZZ_VOLUME_PREFIX": volume_prefix}
            # Run where its cache (.schemathesis/) lands in the test's own directory, not the repository.
            result = subprocess.run(argv, cwd=tmp_path, env=run_env, capture_output=True, text=True,
                                    timeout=FUZZ_SECONDS + 4 * REQUEST_TIMEOUT)
            output = result.stdout + result.stderr
            (tmp_path / "schemathesis.txt").write_text(output)
            errors = [line for line in served.log.read_text().splitlines() if " ERROR " in line]
            report = "\n".join(line[:300] for line in output.splitlines())  # a fuzzed body may be huge
            assert result.returncode == 0, report[-15000:] + "\nserver errors:\n" + "\n".join(errors[-20:])
            assert "API Operations" in output, output[-3000:]
            assert served.process.poll() is None  # the server is still up
    finally:
        remove_volumes(docker_client, volume_prefix)
