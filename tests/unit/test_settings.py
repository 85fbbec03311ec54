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
        ("COUCHGATE_JWT_ALGORITHMS", "none"),
        ("COUCHGATE_JWT_ALGORITHMS", "[HS256"),
        ("COUCHGATE_CORS_ORIGINS", '["unclosed"'),
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


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("COUCHGATE_CORS_ORIGINS", "*", "cors_origins", ("*",)),
        ("COUCHGATE_CORS_ORIGINS", "http://a.example, http://b.example", "cors_origins",
         ("http://a.example", "http://b.example")),
        ("COUCHGATE_CORS_ORIGINS", '["http://a.example"]', "cors_origins", ("http://a.example",)),
        ("COUCHGATE_JWT_ALGORITHMS", "HS256", "jwt_algorithms", ("HS256",)),
        ("COUCHGATE_JWT_ALGORITHMS", "HS256,HS512", "jwt_algorithms", ("HS256", "HS512")),
        ("COUCHGATE_JWT_ALGORITHMS", '["HS256"]', "jwt_algorithms", ("HS256",)),
    ],
)  # fmt: skip
def test_lists_are_json_or_comma_separated(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(load_settings(), field) == expected


def test_issue_algorithm_must_be_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUCHGATE_JWT_SECRET", "s" * 40)
    monkeypatch.setenv("COUCHGATE_JWT_ALGORITHMS", "HS512")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "COUCHGATE_JWT_ISSUE_ALGORITHM" in str(info.value)
    monkeypatch.setenv("COUCHGATE_JWT_ISSUE_ALGORITHM", "HS512")
    assert load_settings().jwt_issue_algorithm == "HS512"
    # Verifying tokens from elsewhere without issuing any is fine.
    monkeypatch.delenv("COUCHGATE_JWT_SECRET")
    monkeypatch.delenv("COUCHGATE_JWT_ISSUE_ALGORITHM")
    monkeypatch.setenv("COUCHGATE_JWT_ALGORITHMS", "RS256")
    monkeypatch.setenv("COUCHGATE_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----")
    assert load_settings().jwt_algorithms == ("RS256",)


def test_serve_names_a_list_variable_in_one_line() -> None:
    env = {"COUCHGATE_JWT_ALGORITHMS": "[oops", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "COUCHGATE_JWT_ALGORITHMS" in lines[0], result.stderr
