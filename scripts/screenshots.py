#!/usr/bin/env python3
"""Regenerate screenshots/: SVGs of the console's screens, on fixed sample data.

The services view, the create form, the service view (replicas with health, CPU and memory; logs;
events, balancer, revisions), the floating IP dialog and help.

The console runs headless on fixed sample data (tests/tui/fakes.py, the data of the snapshot tests),
so the pictures only change when the console's look does. Usage: python scripts/screenshots.py
[--size 100x30] [--out screenshots]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHOTS = [
    ("services", []),
    ("create-form", ["n", "w", "e", "b", "tab", "N", "G", "I", "N", "X", "tab", "0", "ctrl+s"]),
    ("service", ["down", "down", "enter"]),
    ("service-logs", ["down", "down", "enter", "2"]),
    ("service-events", ["down", "down", "enter", "4"]),
    ("service-balancer", ["down", "down", "enter", "5"]),
    ("service-revisions", ["down", "down", "enter", "6"]),
    ("floating-ip", ["down", "f", "down", "down"]),
    ("help", ["question_mark"]),
]


def _fakes():
    spec = importlib.util.spec_from_file_location("hyperservice_fakes", ROOT / "tests" / "tui" / "fakes.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


async def shoot(name: str, keys: list[str], size: tuple[int, int], out: Path) -> Path:
    from textual.widgets import Input

    app = _fakes().fake_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.2)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.05)
        for _ in range(3):
            await pilot.pause(0.1)
        for box in app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause(0.1)
        path = out / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100x30", help="terminal size COLSxROWS (default 100x30)")
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="where the SVGs go")
    args = parser.parse_args()
    cols, rows = (int(part) for part in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, keys in SHOTS:
        print(asyncio.run(shoot(name, keys, (cols, rows), out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
