"""The layout's promises: the backend is a UI-free core that never imports textual."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_backend_sources_never_import_the_ui():
    for path in (ROOT / "backend").rglob("*.py"):
        assert not {"textual", "tui"} & imported_modules(path), path


def test_loading_the_whole_backend_loads_no_textual():
    code = "import sys, backend.api, backend.server, backend.core; print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_every_module_says_what_it_owns():
    for path in list((ROOT / "backend").rglob("*.py")) + list((ROOT / "tui").rglob("*.py")):
        if path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
