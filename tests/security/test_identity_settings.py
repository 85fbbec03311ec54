"""The settings of issue 11 fail fast, naming the variable, like every other setting."""

from __future__ import annotations

import pytest

from proxy.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("COUCHGATE_TRUSTED_PROXIES", "not-an-address"),
        ("COUCHGATE_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("COUCHGATE_LOGIN_MAX_DELAY", "0.5"),  # below the base delay (1 s)
        ("COUCHGATE_LOGIN_FREE_FAILURES", "0"),
        ("COUCHGATE_HEADER_TIMEOUT", "0"),
        ("COUCHGATE_BODY_MIN_BYTES", "0"),
        ("COUCHGATE_MAX_CONNECTIONS_PER_CLIENT", "0"),
        ("COUCHGATE_AUTH_DB", "Bad Name"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value) and "\n" not in str(info.value)


def test_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUCHGATE_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7")
    assert load_settings().trusted_proxies == ("10.0.0.0/8", "192.168.1.7")
    monkeypatch.setenv("COUCHGATE_TRUSTED_PROXIES", '["::1"]')
    assert load_settings().trusted_proxies == ("::1",)
