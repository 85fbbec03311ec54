"""Settings come from COUCHGATE_* variables; invalid ones fail fast naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.settings import SettingsError, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.db) == ("127.0.0.1", 5988, "medic")


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUCHGATE_COUCH_URL", "http://couch.internal:5984")
    monkeypatch.setenv("COUCHGATE_DB", "other")
    monkeypatch.setenv("COUCHGATE_PORT", "6000")
    s = load_settings()
    assert (s.upstream, s.db, s.port) == ("http://couch.internal:5984", "other", 6000)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("COUCHGATE_PORT", "not-a-port"),
        ("COUCHGATE_PORT", "70000"),
        ("COUCHGATE_COUCH_URL", "ftp://x"),
        ("COUCHGATE_COUCH_URL", "http://admin:pw@couch:5984"),
        ("COUCHGATE_DB", "Bad Name"),
        ("COUCHGATE_JWT_SECRET", "short"),
        ("COUCHGATE_JWT_ALGORITHMS", '["none"]'),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert var in message and "\n" not in message


def test_serve_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"COUCHGATE_PORT": "nope", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "COUCHGATE_PORT" in lines[0], result.stderr
