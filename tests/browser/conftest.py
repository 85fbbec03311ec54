"""Says where the console's screenshots went (pytest hides what passing tests print)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
STARTED = time.time()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    shots = sorted(p.name for p in ARTIFACTS.glob("*.png") if p.stat().st_mtime >= STARTED)
    if shots:
        terminalreporter.write_line(f"console screenshots ({len(shots)}): {ARTIFACTS}")
