"""The caller, resolved once after authentication (proxy/auth/caller.py): when the CHT
settings cannot be read, nobody is guessed to be online. Every request whose answer
depends on offline-or-not is refused with the read's error, and the ones that do not
depend on it are served as before."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.access.config import AppSettings
from proxy.auth.caller import resolve
from proxy.auth.principal import Principal
from proxy.devserver.backend import PouchServer
from proxy.errors import UpstreamUnavailable
from proxy.offline.sync import IndexSync

from offline_data import auth
from support import Gateway, assert_couch_error, basic

UNREADABLE = "couchgate cannot read the app settings yet"
OFFLINE_CHW = AppSettings(offline_roles=frozenset({"chw"}))


async def _unreadable(self: IndexSync) -> AppSettings:
    # CouchDB failing the settings read: a fault a live server cannot be made to show on cue.
    raise UpstreamUnavailable(UNREADABLE)


async def test_unreadable_settings_refuse_what_depends_on_them(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(IndexSync, "current_settings", _unreadable)
    chw = auth("chw1")
    asks: list[tuple[str, str, Any]] = [
        ("GET", f"/{medic}/_all_docs", None),  # dispatch: served offline, or forwarded?
        ("GET", f"/{medic}/chw1_person", None),
        ("POST", f"/{medic}/_couchgate/import", []),  # importer: where may they import?
        ("GET", "/_couchgate/audit/docs/chw1_person", None),  # audit: may they read the doc?
        ("GET", f"/{medic}/_couchgate/conflicts", None),  # conflicts: permission, offline
    ]
    for method, path, body in asks:
        status, answer, _ = await gw.call(method, path, auth=chw, json=body)
        assert_couch_error(status, answer, 503, "service_unavailable")
        assert answer["reason"] == UNREADABLE, (path, answer)
    # Nothing else depends on the judgement: the user's own session, an admin's reads.
    status, answer, _ = await gw.call("GET", "/_session", auth=chw)
    assert status == 200 and answer["userCtx"]["name"] == "chw1", answer
    admin = basic(backend.admin_user, backend.admin_password)
    status, answer, _ = await gw.call("GET", f"/{medic}/chw1_person", auth=admin)
    assert status == 200 and answer["_id"] == "chw1_person", answer


async def test_resolve_judges_once_and_fails_closed() -> None:
    reads = 0

    async def rules() -> AppSettings:
        nonlocal reads
        reads += 1
        return OFFLINE_CHW

    async def failing() -> AppSettings:
        raise UpstreamUnavailable(UNREADABLE)

    chw = Principal("chw1", roles=("chw",), facility_ids=("area1",), contact_id="p1", method="basic")
    caller = await resolve(chw, rules, AppSettings())
    assert caller.offline and caller.rules is OFFLINE_CHW and reads == 1
    assert (caller.user.name, caller.user.facility_ids, caller.user.contact_id) == ("chw1", ("area1",), "p1")
    online = Principal("nurse", roles=("chw", "mm-online"))
    assert not (await resolve(online, rules, AppSettings())).offline

    # Admins and anonymous callers are never offline: no read is made for them.
    for principal in (Principal("root", roles=("_admin", "chw")), Principal(None)):
        assert not (await resolve(principal, failing, OFFLINE_CHW)).offline
    assert reads == 2

    unjudged = await resolve(chw, failing, OFFLINE_CHW)
    for ask in ("offline", "rules"):
        with pytest.raises(UpstreamUnavailable, match=UNREADABLE):
            getattr(unjudged, ask)
    assert unjudged.offline_at_hand  # counted (metrics) as the held settings say
