"""`couchgate dev` explains a backend that cannot start in one line, not a traceback."""

from __future__ import annotations

import pytest

from proxy.devserver import run
from proxy.devserver.backend import BackendError, PouchServer, pouchdb_server_bin


def test_missing_pouchdb_server_says_make_install(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackendError, match="make install"):
        pouchdb_server_bin(tmp_path)


def test_backend_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(self: PouchServer, timeout: float = 30.0) -> PouchServer:
        raise BackendError("pouchdb-server is not installed in node; run `make install`")

    monkeypatch.setattr(PouchServer, "start", fail)
    assert run.run_dev("tiny", port=1, backend_port=1) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["couchgate dev: pouchdb-server is not installed in node; run `make install`"]
