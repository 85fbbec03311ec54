"""The decoded path rules decide on, and CouchDB's `_security` rules for token callers."""

from __future__ import annotations

import pytest

from proxy.access.couch_security import decide
from proxy.access.paths import BadPath, CouchPath

SECURITY = {"admins": {"names": ["dba"], "roles": ["ops"]}, "members": {"names": ["m1"], "roles": ["member"]}}


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("/", ()),
        ("//medic//doc1/", ("medic", "doc1")),
        ("/medic/_design%2Fapp/_view/v", ("medic", "_design/app", "_view", "v")),
        ("/medic/_design/app", ("medic", "_design/app")),
        ("/%5Fusers/org.couchdb.user%3Abob", ("_users", "org.couchdb.user:bob")),
        ("/medic/a%2Fb/att%2F1", ("medic", "a/b", "att/1")),
        ("/medic/_local/cp?x=1", ("medic", "_local/cp")),
        ("/me%64ic/_all_docs", ("medic", "_all_docs")),
    ],
)
def test_parse_normalises(raw: str, segments: tuple[str, ...]) -> None:
    assert CouchPath.parse(raw).segments == segments


def test_encoded_round_trip_is_canonical() -> None:
    for raw in ("/medic/a%2Fb/att%2F1", "/medic/_design/app/_view/v", "/medic/x%20y"):
        path = CouchPath.parse(raw)
        assert CouchPath.parse(path.encoded()) == path


@pytest.mark.parametrize("raw", ["/medic/%FF", "/medic/../_users", "/medic/%2E%2E/x", "/medic/a%00b"])
def test_parse_refuses_dangerous_paths(raw: str) -> None:
    with pytest.raises(BadPath):
        CouchPath.parse(raw)


def test_doc_id_and_server_paths() -> None:
    assert CouchPath.parse("/medic/doc/att").doc_id == "doc"
    assert CouchPath.parse("/medic/_all_docs").doc_id is None
    assert CouchPath.parse("/_all_dbs").is_server
    assert not CouchPath.parse("/_users/x").is_server
    assert not CouchPath.parse("/medic").is_server


def verdict(
    method: str, raw: str, name: str | None, roles: tuple[str, ...], security: dict | None = SECURITY
) -> bool:
    first = decide(method, CouchPath.parse(raw), name, roles)
    if first.needs_security:
        return decide(method, CouchPath.parse(raw), name, roles, security).allowed
    return first.allowed


@pytest.mark.parametrize(
    ("method", "raw", "name", "roles", "allowed"),
    [
        ("GET", "/_all_dbs", "admin", ("_admin",), True),
        ("GET", "/_all_dbs", "m1", (), False),
        ("GET", "/_config", "m1", ("member",), False),
        ("GET", "/", "m1", (), True),
        ("GET", "/_uuids", "m1", (), True),
        ("GET", "/_users/org.couchdb.user:m1", "m1", (), True),
        ("PUT", "/_users/org.couchdb.user:m1", "m1", (), True),
        ("GET", "/_users/org.couchdb.user:m2", "m1", (), False),
        ("GET", "/_users/_all_docs", "m1", (), False),
        ("GET", "/_replicator/_all_docs", "m1", ("member",), False),
        ("PUT", "/medic", "m1", ("member",), False),
        ("DELETE", "/medic", "dba", (), False),
        ("GET", "/medic", "m1", (), True),
        ("GET", "/medic/doc", "x", ("member",), True),
        ("PUT", "/medic/doc", "x", ("member",), True),
        ("GET", "/medic/doc", "stranger", ("other",), False),
        ("PUT", "/medic/_design/app", "m1", ("member",), False),
        ("PUT", "/medic/_design%2Fapp", "m1", ("member",), False),
        ("PUT", "/medic/_design/app", "dba", (), True),
        ("PUT", "/medic/_design/app", "x", ("ops",), True),
        ("GET", "/medic/_design/app", "m1", (), True),
        ("PUT", "/medic/_security", "m1", (), False),
        ("GET", "/medic/_security", "m1", (), True),
        ("POST", "/medic/_compact", "m1", (), False),
        ("POST", "/medic/_purge", "m1", (), False),
        ("POST", "/medic/_bulk_docs", "m1", (), True),
    ],
)
def test_couchdb_security_rules(
    method: str, raw: str, name: str, roles: tuple[str, ...], allowed: bool
) -> None:
    assert verdict(method, raw, name, roles) is allowed


def test_empty_members_make_a_database_public() -> None:
    public = {"admins": {"names": [], "roles": []}, "members": {"names": [], "roles": []}}
    assert verdict("GET", "/open/doc", "anyone", (), public)
    assert not verdict("PUT", "/open/_design/x", "anyone", (), public)
