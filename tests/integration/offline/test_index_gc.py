"""The scope index is frozen out of the cyclic garbage collector's reach once it is large."""

from __future__ import annotations

import gc

import pytest

from proxy.devserver.backend import PouchServer
from proxy.offline import sync as sync_module

from offline_data import auth, person
from support import gateway_settings, start_gateway, stop_gateway


async def test_large_index_is_frozen_after_build_and_every_so_many_rows(
    backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []
    real = sync_module.freeze_long_lived

    def freeze() -> None:
        real()
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(sync_module, "FREEZE_EVERY_ROWS", 10)
    monkeypatch.setattr(sync_module, "freeze_long_lived", freeze)
    gateway = await start_gateway(gateway_settings(backend, medic))
    try:
        status, _, _ = await gateway.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
        assert status == 200
        assert len(frozen) == 1 and frozen[0] > 1000  # the first build: the index and the rest
        for i in range(3):
            backend.request("PUT", f"/{medic}/gc-a{i}", person(f"gc-a{i}", "house1", "area1", "hc1"))
        await gateway.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
        assert len(frozen) == 1  # 3 rows since: not yet
        for i in range(8):
            backend.request("PUT", f"/{medic}/gc-b{i}", person(f"gc-b{i}", "house1", "area1", "hc1"))
        status, _, _ = await gateway.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
        assert status == 200 and len(frozen) == 2  # 11 rows since: frozen again
    finally:
        await stop_gateway(gateway)
        gc.unfreeze()  # the test process is not couchgate's: give it its collector back
