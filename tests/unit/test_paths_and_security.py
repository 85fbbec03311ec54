"""The decoded path rules decide on, and CouchDB's `_security` rules for token callers."""

from __future__ import annotations

import pytest

from proxy.access.couch_security import Verdict, decide, design_ids_in, user_doc_problem
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
        ("/a%2Bb/_local/f+g%2Bh", ("a+b", "_local/f g+h")),  # `+` as CouchDB reads it
    ],
)
def test_parse_normalises(raw: str, segments: tuple[str, ...]) -> None:
    assert CouchPath.parse(raw).segments == segments


def test_encoded_round_trip_is_canonical() -> None:
    for raw in ("/medic/a%2Fb/att%2F1", "/medic/_design/app/_view/v", "/medic/x%20y"):
        path = CouchPath.parse(raw)
        assert CouchPath.parse(path.encoded()) == path


def test_plus_and_space_are_always_sent_escaped() -> None:
    """CouchDB reads a raw `+` in a path as a space: a `+` must leave couchgate as `%2B`."""
    path = CouchPath(("a+b", "_design/c+d e", "f+g"))
    assert path.encoded() == "/a%2Bb/_design/c%2Bd%20e/f%2Bg"
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


def full_decision(
    method: str,
    raw: str,
    name: str | None,
    roles: tuple[str, ...],
    security: dict | None = SECURITY,
    destination: str | None = None,
) -> Verdict:
    first = decide(method, CouchPath.parse(raw), name, roles, destination=destination)
    if first.needs_security:
        return decide(method, CouchPath.parse(raw), name, roles, security, destination=destination)
    return first


def verdict(
    method: str, raw: str, name: str | None, roles: tuple[str, ...], security: dict | None = SECURITY
) -> bool:
    return full_decision(method, raw, name, roles, security).allowed


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
        # CouchDB 3 defaults to admin_only_all_dbs = true.
        ("GET", "/_all_dbs", "m1", ("member",), False),
        ("GET", "/_up", "m1", (), True),
        ("GET", "/_node/_local/_config", "m1", ("member",), False),
        ("GET", "/_global_changes/_changes", "m1", ("member",), False),
        ("PUT", "/_replicator/r1", "m1", ("member",), False),
        ("DELETE", "/_users/org.couchdb.user:m1", "m1", (), True),
        ("COPY", "/_users/org.couchdb.user:m1", "m1", (), False),
        ("PUT", "/_users/org.couchdb.user:m1/att", "m1", (), False),
        ("PUT", "/_users/org.couchdb.user:m2", "m1", (), False),
        ("GET", "/_users/_design/_auth", "m1", (), False),
        ("POST", "/_users", "m1", (), False),
        ("POST", "/_users/_bulk_docs", "m1", (), False),
        ("POST", "/medic/_index", "m1", (), False),
        ("DELETE", "/medic/_index/_design/i/json/i", "m1", (), False),
        ("GET", "/medic/_index", "m1", (), True),
        ("POST", "/medic/_index", "dba", (), True),
        ("POST", "/medic/_view_cleanup", "m1", (), False),
        ("PUT", "/medic/_revs_limit", "m1", (), False),
        ("PUT", "/medic/_design/app/logo.png", "m1", (), False),
        ("DELETE", "/medic/_design/app", "m1", (), False),
        ("COPY", "/medic/_design/app", "m1", (), True),  # copying from it reads it
        ("POST", "/medic/_design/app/_view/v", "m1", (), True),  # a read with `keys`
        ("GET", "/medic/_design/app/_view/v", "m1", (), True),
        ("POST", "/medic/_design/app/_update/u/doc", "m1", (), False),
        ("POST", "/medic/_find", "m1", (), True),
        ("PUT", "/medic/_local/cp", "m1", (), True),
        ("PUT", "/medic/doc", "x", ("stranger",), False),
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


@pytest.mark.parametrize(
    ("destination", "allowed"),
    [("copy", True), ("_design/x", False), ("_design%2Fx?rev=1-a", False), ("%5Fdesign/x", False)],
)
def test_copy_destination_decides(destination: str, allowed: bool) -> None:
    assert full_decision("COPY", "/medic/doc", "m1", (), destination=destination).allowed is allowed
    assert full_decision("COPY", "/medic/doc", "dba", (), destination=destination).allowed


def test_bodies_are_checked_for_members_not_for_db_admins() -> None:
    assert full_decision("POST", "/medic/_bulk_docs", "m1", ()).body_check == "design_ids"
    assert full_decision("POST", "/medic", "m1", ()).body_check == "design_ids"
    assert full_decision("POST", "/medic/_bulk_docs", "dba", ()).body_check is None
    assert full_decision("PUT", "/_users/org.couchdb.user:m1", "m1", ()).body_check == "user_doc"


def test_design_ids_in_bodies() -> None:
    bulk = {"docs": [{"_id": "a"}, {"_id": "_design/x"}, "junk", {"_id": 3}], "new_edits": False}
    assert design_ids_in(bulk, bulk=True) == ["_design/x"]
    assert design_ids_in({"_id": "_design/y"}, bulk=False) == ["_design/y"]
    assert design_ids_in({"_id": "_local/y"}, bulk=False) == []
    assert design_ids_in({"docs": "nope"}, bulk=True) == []


def test_other_users_docs_read_as_missing_and_bad_db_names_are_400() -> None:
    other = full_decision("GET", "/_users/org.couchdb.user:m2", "m1", ())
    assert (other.allowed, other.status, other.error) == (False, 404, "not_found")
    bad = full_decision("GET", "/Bad_Name/doc", "m1", ())
    assert (bad.allowed, bad.status, bad.error) == (False, 400, "illegal_database_name")


STORED = {"_id": "org.couchdb.user:m1", "name": "m1", "type": "user", "roles": ["chw", "b"]}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"password": "new"}, None),
        ({"roles": ["b", "chw"]}, None),  # order does not matter, as in CouchDB
        ({"roles": ["chw", "b", "_admin"]}, "Only _admin may edit roles"),
        ({"roles": []}, "Only _admin may edit roles"),
        ({"roles": "chw"}, "doc.roles must be an array of strings"),
        ({"name": "m2"}, "Usernames can not be changed."),
        ({"type": "admin"}, "doc.type must be user"),
        ({"_id": "org.couchdb.user:m2"}, "Doc ID must be of the form org.couchdb.user:name"),
        ({"_deleted": True, "roles": ["x"]}, None),  # deleting one's own doc is not checked further
    ],
)
def test_user_doc_updates_keep_roles_name_and_type(change: dict, problem: str | None) -> None:
    assert user_doc_problem({**STORED, **change}, STORED, "m1", STORED["_id"]) == problem


def test_a_new_user_doc_may_not_set_roles() -> None:
    new = {**STORED, "roles": ["chw"]}
    assert user_doc_problem(new, None, "m1", STORED["_id"]) == "Only _admin may set roles"
    assert user_doc_problem({**new, "roles": []}, None, "m1", STORED["_id"]) is None


def test_a_users_db_admin_may_write_its_docs_but_not_delete_or_create_the_db() -> None:
    """Creating and deleting databases is a server admin's, `_users` included: its own db
    admins (a `_security` role) may edit any user doc, nothing more."""
    security = {"admins": {"roles": ["user_admins"]}, "members": {}}
    admin = ("user_admins",)
    assert full_decision("PUT", "/_users/org.couchdb.user:m2", "ua", admin, security).allowed
    assert full_decision("GET", "/_users/_all_docs", "ua", admin, security).allowed
    for method in ("DELETE", "PUT"):
        verdict_ = full_decision(method, "/_users", "ua", admin, security)
        assert (verdict_.allowed, verdict_.reason) == (False, "You are not a server admin.")
