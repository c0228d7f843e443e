"""The first run on a fresh offline machine, on the real engine: which image the balancers run when
the configured one is missing (the offline fallback, said once; neither: an error naming the fix),
scripts/up's image stage (images/ensure) pulling the configured image when it can and building the
fallback for real when the pull fails, ensure-docker's word to a user who can neither reach nor start
an engine, and scripts/up itself: install, engine, images, console, in that order (pip and the
console are stand-ins: the shared environment is not installed over)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from backend.balancer import Balancers
from backend.core import Backend
from backend.docker_driver import LABEL_ROLE, LABEL_TENANT, DockerDriver, ImageUnavailable
from backend.settings import DEMO_IMAGE
from tests.balancer_helpers import who
from tests.conftest import LB_IMAGE, client_for, eventually, make_settings, remove_tenant_objects, wait_status, web_body
from tests.registry import SavedImage

ROOT = Path(__file__).resolve().parents[1]


def missing_image() -> str:
    """An image on a registry at a closed loopback port: its pull fails at once, and stays local."""
    return f"127.0.0.1:9/hyperservice-test/absent-{uuid.uuid4().hex[:8]}:1"


@pytest.fixture
def fallback_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    """A name of our own for an offline fallback image; whatever is tagged with it is untagged after."""
    tag = f"hyperservice-test/fallback-{uuid.uuid4().hex[:8]}:debian"
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(tag)


def balancers_for(configured: str, fallback: str, notices: list[str]) -> Balancers:
    return Balancers(DockerDriver("hbx-test-resolve"), configured, 2, lambda *_: None, fallback, notices.append)


def test_the_configured_image_wins_when_the_engine_has_it(docker_client, fallback_tag):
    docker_client.images.get(LB_IMAGE).tag(fallback_tag)
    notices: list[str] = []
    assert balancers_for(LB_IMAGE, fallback_tag, notices).resolve_image() == LB_IMAGE
    assert notices == []


def test_a_missing_configured_image_gives_way_to_the_fallback_said_once(docker_client, fallback_tag):
    docker_client.images.get(LB_IMAGE).tag(fallback_tag)
    configured = missing_image()
    notices: list[str] = []
    balancers = balancers_for(configured, fallback_tag, notices)
    assert balancers.resolve_image() == fallback_tag
    assert balancers.resolve_image() == fallback_tag
    (notice,) = notices
    assert configured in notice and fallback_tag in notice and f"docker pull {configured}" in notice


def test_neither_image_is_an_error_naming_the_fix(docker_client):
    configured, fallback = missing_image(), missing_image()
    notices: list[str] = []
    with pytest.raises(ImageUnavailable) as caught:
        balancers_for(configured, fallback, notices).resolve_image()
    message = str(caught.value)
    assert configured in message and fallback in message and "run scripts/up" in message
    assert notices == []


async def test_a_service_without_any_balancer_image_shows_the_fix(docker_client, tmp_path):
    settings = make_settings(tmp_path / "data", lb_image=missing_image(), lb_fallback_image=missing_image())
    backend = Backend(settings)
    backend.start()
    try:
        async with client_for(backend) as api:
            assert (await api.post("/services/create", json=web_body("nolb", 1))).status_code == 201
            service = await wait_status(api, "nolb", "error", timeout=60)
            assert "run scripts/up" in service["Message"] and settings.lb_image in service["Message"]
    finally:
        backend.close()
        remove_tenant_objects(docker_client, backend.tenant)


def run_image_stage(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "images" / "ensure")], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )


async def test_the_image_stage_builds_the_fallback_when_the_pull_fails_and_the_backend_runs_it(
    docker_client, fallback_tag, tmp_path
):
    configured = missing_image()
    env = {
        "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"),  # no config file of anyone else's
        "HYPERSERVICE_LB_IMAGE": configured,
        "HYPERSERVICE_LB_FALLBACK_IMAGE": fallback_tag,
        "HYPERSERVICE_PULL_TIMEOUT": "60",
    }
    first = run_image_stage(env)
    assert first.returncode == 0, first.stderr
    assert f"balancer image {configured}: cannot be pulled" in first.stderr
    assert f"built {fallback_tag}" in first.stderr and "HAProxy version" in first.stderr
    image = docker_client.images.get(fallback_tag)
    config = image.attrs["Config"]
    assert config["User"] == "haproxy"  # laid out like the official image
    assert config["Cmd"] == ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    assert f"demo image {DEMO_IMAGE}" in first.stderr

    again = run_image_stage(env)  # a second run keeps what the first one built
    assert again.returncode == 0, again.stderr
    assert f"using {fallback_tag}, built earlier" in again.stderr
    assert docker_client.images.get(fallback_tag).id == image.id

    # the backend, with the same settings and nothing else, runs the image the stage built
    backend = Backend(make_settings(tmp_path / "backend", lb_image=configured, lb_fallback_image=fallback_tag))
    backend.start()
    try:
        async with client_for(backend) as api:
            created = await api.post("/services/create", json=web_body("fallback", 1))
            assert created.status_code == 201, created.text
            service = await wait_status(api, "fallback", "active", timeout=90)
            tenant = f"{LABEL_TENANT}={backend.tenant}"
            (balancer,) = docker_client.containers.list(filters={"label": [tenant, f"{LABEL_ROLE}=balancer"]})
            assert balancer.image.id == image.id
            (replica,) = docker_client.containers.list(filters={"label": [tenant, f"{LABEL_ROLE}=replica"]})
            hostname = replica.attrs["Config"]["Hostname"]
            assert await eventually(lambda: who(service["IP"], 80) == hostname, 30, what="the service address")
    finally:
        backend.close()
        remove_tenant_objects(docker_client, backend.tenant)


def machine_without_an_engine(tmp_path: Path, dockerd_installed: bool) -> tuple[Path, Path]:
    """A PATH of its own (only what ensure-docker runs) on which no engine answers until `dockerd` has
    run: `docker info` fails until then; `apt-get install docker.io` puts a `dockerd` there. Each
    stand-in notes its call; answers the PATH and the notes."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "id", "nohup", "seq", "sleep", "tail"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    grep, chmod = shutil.which("grep") or "/usr/bin/grep", shutil.which("chmod") or "/usr/bin/chmod"
    stand_ins = {
        "docker": f'[ "$1" = info ] && {grep} -qx dockerd {calls}',
        "apt-get": f'echo "apt-get $*" >> {calls}\n'
                   f'case "$*" in *docker.io*) printf "#!/bin/sh\\necho dockerd >> {calls}\\n" > {bin_dir}/dockerd; '
                   f"{chmod} +x {bin_dir}/dockerd;; esac",
    }
    if dockerd_installed:
        stand_ins["dockerd"] = f"echo dockerd >> {calls}"
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir, calls


@pytest.mark.parametrize(("dockerd_installed", "expected"), [
    pytest.param(True, ["dockerd"], id="installed-not-running"),
    pytest.param(False, ["apt-get update -qq", "apt-get install -y -qq docker.io", "dockerd"], id="not-installed"),
])
def test_ensure_docker_as_root_without_an_engine_gets_debians_and_starts_dockerd(
    tmp_path, dockerd_installed: bool, expected: list[str]
):
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if os.geteuid() != 0 or not unshare or not mount:
        pytest.skip("needs root and unshare (its dockerd log goes to a /var/log of its own)")
    bin_dir, calls = machine_without_an_engine(tmp_path, dockerd_installed)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}  # no DOCKER_HOST: the default socket
    result = subprocess.run(  # a mount namespace of its own: a /var/log on tmpfs, so no real log is touched
        [unshare, "-m", "sh", "-c", f'{mount} -t tmpfs none /var/log && exec "$0"', str(ROOT / "scripts" / "ensure-docker")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == expected
    assert "ensure-docker: starting dockerd" in result.stdout
    assert ("installing docker.io" in result.stdout) is not dockerd_installed


def test_ensure_docker_tells_a_user_without_an_engine_what_to_do():
    if os.geteuid() != 0:
        pytest.skip("needs root to run the script as an unprivileged user")
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(ROOT / "scripts" / "ensure-docker")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no Docker engine answers" in result.stderr and "DOCKER_HOST" in result.stderr


def test_the_image_stage_pulls_the_configured_image_when_it_can(registry, docker_client, fallback_tag, tmp_path):
    configured = registry.publish("hyperservice-test/lb", "1", SavedImage.from_engine(docker_client, LB_IMAGE))
    env = {
        "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"),
        "HYPERSERVICE_LB_IMAGE": configured,
        "HYPERSERVICE_LB_FALLBACK_IMAGE": fallback_tag,
    }
    stage = run_image_stage(env)
    assert stage.returncode == 0, stage.stderr
    assert f"balancer image {configured}: pulled" in stage.stderr and "cannot be pulled" not in stage.stderr
    assert any(r.startswith("GET /v2/hyperservice-test/lb/blobs/") for r in registry.requests)  # pulled from it
    docker_client.images.get(configured)
    with pytest.raises(docker.errors.ImageNotFound):  # no fallback built when the pull worked
        docker_client.images.get(fallback_tag)


def stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH directory whose python3 records `-m pip ...` instead of installing (and runs anything
    else with this interpreter), and whose hyperservice records its arguments; and their record."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "pip in $PWD: $*" >> {calls}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    (bin_dir / "hyperservice").write_text(f'#!/bin/sh\necho "console: $*" >> {calls}\n')
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    return bin_dir, calls


def run_up(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir, calls = stand_ins(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"),
           "HYPERSERVICE_LB_IMAGE": LB_IMAGE, **env}
    result = subprocess.run([str(ROOT / "scripts" / "up"), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_up_installs_makes_sure_of_the_engine_and_images_then_opens_the_console(docker_client, tmp_path):
    result, calls = run_up(tmp_path, "--token-file", "t")
    assert result.returncode == 0, result.stderr
    assert calls == [f"pip in {ROOT}: -m pip install -q --disable-pip-version-check .", "console: --token-file t"]
    said = result.stderr
    assert f"balancer image {LB_IMAGE}: on the engine" in said
    assert f"demo image {DEMO_IMAGE}" in said and f"Image {DEMO_IMAGE}" in said  # and what to type in the form
    docker_client.images.get(DEMO_IMAGE)


@pytest.mark.docker  # the docker CLI and dockerd are looked for (as root without them, ensure-docker installs them)
def test_up_without_an_engine_says_so_and_opens_no_console(tmp_path):
    result, calls = run_up(tmp_path, DOCKER_HOST="tcp://127.0.0.1:9")
    assert result.returncode != 0
    assert "DOCKER_HOST=tcp://127.0.0.1:9 does not answer" in result.stderr
    assert not any(call.startswith("console") for call in calls), calls
