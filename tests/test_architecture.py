"""The layout's promises that import-linter can't check (its contracts are in pyproject.toml).

The import rules themselves — the backend never imports tui or textual; backend.models and
backend.haproxy import nothing of ours above them — are import-linter contracts, run by scripts/test
(`lint-imports`). What stays here: no third-party package drags textual in at run time, every module
says what it owns, the contracts' lists name every backend module above their sources, and the
project stands alone (its tests, scripts and benchmarks read nothing outside the repository).
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_loading_the_whole_backend_loads_no_textual():
    code = "import sys, backend.api, backend.server, backend.core; print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_every_module_says_what_it_owns():
    for path in list((ROOT / "backend").rglob("*.py")) + list((ROOT / "tui").rglob("*.py")):
        if path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"



# The import contracts forbid by name: a backend module added later must join their lists.
BASE_LAYER = {"backend.models", "backend.haproxy", "backend.certs"}  # pure; they may import one another


def backend_modules() -> set[str]:
    backend = ROOT / "backend"
    return {f"backend.{path.stem}" for path in backend.glob("*.py") if path.stem != "__init__"} | {
        f"backend.{path.parent.name}" for path in backend.glob("*/__init__.py")}


@pytest.mark.parametrize(
    ("contract", "allowed"),
    [("backend-base", BASE_LAYER), ("planner-pure", {"backend.planner", "backend.models"})],
)
def test_the_import_contracts_forbid_every_backend_module_above(contract: str, allowed: set[str]):
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (forbidden,) = [set(c["forbidden_modules"]) for c in contracts if c["id"] == contract]
    assert {"backend.models", "backend.store"} <= backend_modules()  # the scan finds what is there
    assert backend_modules() - allowed - forbidden == set()


# The benchmarks are run by hand: each module (bench/create_converge.py's harness, cases and profile
# among them) must at least import, so a split or a rename that broke one shows here.
BENCH_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "bench").rglob("*.py")
    if path.name != "__init__.py"
)


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_every_bench_module_imports(module: str):
    importlib.import_module(module)


def test_create_converge_is_split_into_harness_cases_and_profile():
    assert {"bench.converge.harness", "bench.converge.cases", "bench.converge.profile"} <= set(BENCH_MODULES)


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_benchmarks_never_import_the_tests():
    """What both need (load, the lab's driver, polling, the engine cut) lives in bench/ and the tests
    import it from there; a benchmark importing tests/ would run the tests' fixtures' assumptions."""
    importers = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m == "tests" or m.startswith("tests."))
        for path in (ROOT / "bench").rglob("*.py")
    }
    assert {path: modules for path, modules in importers.items() if modules} == {}
    assert imported_modules(ROOT / "bench" / "rolling_update.py") >= {"bench.lab", "bench.load"}  # the scan sees imports

# -- the project stands alone: nothing it runs reads files outside the repository ------------------

SELF_CONTAINED = ("tests", "scripts", "images", "bench", ".ci")
OUTSIDE_NAMES = re.compile(r"\.\./shared|/work/|shared/seed|shared/SPEC|[\"']\.\.[\"']")  # last: a ".." path part


def escapes_the_repository(relative: Path, text: str) -> list[str]:
    """What in `text` (the file at `relative`, from the root) names a path outside the repository."""
    found = [match.group(0) for match in OUTSIDE_NAMES.finditer(text)]
    depth = len(relative.parts) - 1  # how many directories the file sits below the root
    for match in re.finditer(r"parents\[(\d+)\]", text):  # parents[k]: k + 1 levels up from the file
        if int(match.group(1)) > depth:
            found.append(match.group(0))
    for match in re.finditer(r"__file__\)(?:\.resolve\(\))?((?:\.parent\b)+)", text):
        if match.group(1).count(".parent") > depth + 1:
            found.append(match.group(0))
    for match in re.finditer(r"dirname \"\$0\"\)((?:/\.\.)+)", text):  # shell: the script's directory, then ..
        if match.group(1).count("..") > depth:
            found.append(match.group(0))
    return found


def test_nothing_outside_the_repository_is_read():
    offenders = {}
    for top in SELF_CONTAINED:
        for path in (ROOT / top).rglob("*"):
            if not path.is_file() or "__snapshots__" in path.parts or "__pycache__" in path.parts:
                continue
            if path.resolve() == Path(__file__).resolve():
                continue  # this file names the patterns it looks for
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if found := escapes_the_repository(path.relative_to(ROOT), text):
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        ("tests/test_models.py", 'SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"'),
        ("tests/tui/x.py", "ROOT = Path(__file__).resolve().parent.parent.parent.parent"),
        ("scripts/x", 'cd "$(dirname "$0")/../.."'),
        ("tests/x.py", 'open("/work/shared/seed/services-create.txt")'),
        ("bench/x.py", 'SPEC = Path(__file__).resolve().parents[1] / ".." / "shared" / "SPEC.md"'),
    ],
)
def test_the_check_catches_paths_outside(relative: str, text: str):
    assert escapes_the_repository(Path(relative), text)


def test_the_check_lets_the_repository_be():
    assert not escapes_the_repository(Path("tests/tui/x.py"), "ROOT = Path(__file__).resolve().parents[2]")
    assert not escapes_the_repository(Path("tests/images/build.sh"), 'root="$(cd "$(dirname "$0")/../.." && pwd)"')


# -- the engine seam: above it, no Docker SDK call --------------------------------------------------

ABOVE_THE_SEAM = ("backend/planner.py", "backend/reconciler.py", "backend/balancer.py", "backend/history.py")
SDK_CALLS = {"client", "api", "exec_run", "put_archive", "get_archive", "reload", "logs", "prepare_model"}


def test_above_the_engine_seam_nothing_calls_the_docker_sdk():
    """The reconciler, its planner, the balancers and the history make every Docker call through the
    engine (backend/engine.py; the docker one is backend/engines/docker.py), so another engine (swarm)
    slots in: none of them reaches for the SDK's client or a container's own methods."""
    found = {
        f"{relative}:{node.lineno} .{node.attr}"
        for relative in ABOVE_THE_SEAM
        for node in ast.walk(ast.parse((ROOT / relative).read_text()))
        if isinstance(node, ast.Attribute) and node.attr in SDK_CALLS
    }
    assert found == set()
