"""requirements.lock (what scripts/test installs) still answers pyproject.toml: every dependency and dev
extra is pinned there, with hashes, at a version the project accepts. A dependency added to
pyproject.toml without refreshing the lock fails here (README: refreshing the lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", text, flags=re.MULTILINE))
    return {canonicalize_name(name): version for name, version in pins.items()}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_is_locked_at_an_accepted_version():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: refresh it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml asks {requirement}: refresh it")


def test_every_pin_carries_its_hashes():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements.lock").read_text())
    pinned = [block for block in blocks if re.match(r"[A-Za-z0-9._-]+==", block)]
    assert pinned and all("--hash=sha256:" in block for block in pinned)


def test_textual_is_exact_in_both():
    (textual,) = [r for r in declared() if canonicalize_name(r.name) == "textual"]
    assert str(textual.specifier).startswith("==") and locked()["textual"] == str(textual.specifier)[2:]
