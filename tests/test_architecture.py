"""The layout's promises that import-linter can't check (its contracts are in pyproject.toml).

The import rules themselves — the backend never imports tui or textual; backend.models and
backend.haproxy import nothing of ours above them — are import-linter contracts, run by scripts/test
(`lint-imports`). What stays here: no third-party package drags textual in at run time, and every
module says what it owns.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loading_the_whole_backend_loads_no_textual():
    code = "import sys, backend.api, backend.server, backend.core; print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_every_module_says_what_it_owns():
    for path in list((ROOT / "backend").rglob("*.py")) + list((ROOT / "tui").rglob("*.py")):
        if path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
