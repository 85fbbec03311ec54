"""The floors of `proxy` (pyproject.toml, `[tool.importlinter]`): each layer imports only
the layers below it (and within the forwarding wing, `proxy.forward`, likewise), and
`proxy.access` imports nothing that does I/O. A type hint needs no import at run time
(`if TYPE_CHECKING:`), so it does not count."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_no_import_runs_back_up_the_floors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "3 kept, 0 broken" in report, report
