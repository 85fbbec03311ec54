"""The floors of `proxy` (pyproject.toml, `[tool.importlinter]`): each layer imports only
the layers below it (and within the forwarding wing, `proxy.forward`, likewise), and
`proxy.access` imports nothing that does I/O. A type hint needs no import at run time
(`if TYPE_CHECKING:`), so it does not count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_import_runs_back_up_the_floors() -> None:
    # In a process of its own: import-linter reconfigures logging, which the tests that
    # read couchgate's log records in this process must not inherit.
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "3 kept, 0 broken" in report, report
