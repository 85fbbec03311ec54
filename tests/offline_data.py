"""A small, hand-made CHT tree for offline-user tests, with the readable set of each user
written out by hand (an oracle independent of the code under test).

    district1 (district_hospital)
    └── hc1 (health_center)                 supervisor's facility
        ├── area1 (clinic)                  chw1's facility; contact chw1_person
        │   ├── chw1_person
        │   └── house1 (household)
        │       ├── p1 (patient_id 1001)
        │       └── p2
        └── area2 (clinic)                  chw2's facility
            └── house2
                └── p3 (patient_id 3003)
    district2 -> hc2 -> area3 -> house3 -> p9   (nobody's)
"""

from __future__ import annotations

from typing import Any

from proxy.devserver.backend import PouchServer

from support import basic

PASSWORD = "pw-{}"


def auth(name: str) -> str:
    """Basic credentials of a demo user of this data set."""
    return basic(name, PASSWORD.format(name))


SETTINGS: dict[str, Any] = {
    "_id": "settings",
    "settings": {
        "roles": {"chw": {"offline": True}, "chw_supervisor": {"offline": True}, "data_entry": {}},
        "permissions": {
            "can_edit": ["chw", "chw_supervisor"],
            "can_create_records": ["chw", "chw_supervisor"],
            "can_update_reports": ["chw", "chw_supervisor"],
            "can_create_people": ["chw", "chw_supervisor"],
            "can_create_places": ["chw", "chw_supervisor"],
            "can_update_people": ["chw", "chw_supervisor"],
            "can_update_places": ["chw", "chw_supervisor"],
            "can_delete_reports": ["chw_supervisor"],
            "can_delete_contacts": ["chw_supervisor"],
            "can_view_unallocated_data_records": ["chw_supervisor"],
        },
        "replication_depth": [{"role": "chw", "depth": 2}],
        "district_admins_access_unallocated_messages": True,
    },
}


def lineage(*ids: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = None
    for doc_id in reversed(ids):
        node = {"_id": doc_id, **({"parent": node} if node else {})}
    return node


def place(doc_id: str, kind: str, *parents: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": doc_id, "type": kind, "name": doc_id}
    if parents:
        doc["parent"] = lineage(*parents)
    return doc


def person(doc_id: str, *parents: str, shortcode: str | None = None) -> dict[str, Any]:
    doc = {"_id": doc_id, "type": "person", "name": doc_id, "parent": lineage(*parents)}
    if shortcode:
        doc["patient_id"] = shortcode
    return doc


def report(doc_id: str, submitter: tuple[str, ...], **fields: Any) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "type": "data_record",
        "form": "visit",
        "contact": lineage(*submitter),
        "fields": fields,
    }


CHW1_LINE = ("chw1_person", "area1", "hc1", "district1")

DOCS: list[dict[str, Any]] = [
    SETTINGS,
    {"_id": "resources", "resources": {}},
    {"_id": "form:visit", "type": "form", "internalId": "visit"},
    place("district1", "district_hospital"),
    place("hc1", "health_center", "district1"),
    place("area1", "clinic", "hc1", "district1"),
    place("area2", "clinic", "hc1", "district1"),
    person("chw1_person", "area1", "hc1", "district1"),
    place("house1", "clinic", "area1", "hc1", "district1"),
    person("p1", "house1", "area1", "hc1", "district1", shortcode="1001"),
    person("p2", "house1", "area1", "hc1", "district1"),
    place("house2", "clinic", "area2", "hc1", "district1"),
    person("p3", "house2", "area2", "hc1", "district1", shortcode="3003"),
    place("district2", "district_hospital"),
    place("hc2", "health_center", "district2"),
    place("area3", "clinic", "hc2", "district2"),
    place("house3", "clinic", "area3", "hc2", "district2"),
    person("p9", "house3", "area3", "hc2", "district2"),
    report("r_p1", CHW1_LINE, patient_id="1001"),
    report("r_p2", CHW1_LINE, patient_uuid="p2"),
    report("r_p3", ("p3", "house2", "area2", "hc1", "district1"), patient_id="3003"),
    report("r_p9", ("p9", "house3", "area3", "hc2", "district2"), patient_uuid="p9"),
    report("r_house1", CHW1_LINE, place_id="house1"),
    {"_id": "r_unallocated", "type": "data_record", "form": "sms", "from": "+2547000", "fields": {}},
    {"_id": "task_chw1", "type": "task", "user": "org.couchdb.user:chw1", "owner": "p1"},
    {"_id": "task_chw2", "type": "task", "user": "org.couchdb.user:chw2", "owner": "p3"},
    {"_id": "target_chw1", "type": "target", "owner": "chw1_person"},
    {
        "_id": "org.couchdb.user:chw1",
        "type": "user-settings",
        "name": "chw1",
        "facility_id": "area1",
        "contact_id": "chw1_person",
    },
    {"_id": "org.couchdb.user:chw2", "type": "user-settings", "name": "chw2", "facility_id": "area2"},
]

USERS: dict[str, dict[str, Any]] = {
    "chw1": {"roles": ["chw"], "facility_id": "area1", "contact_id": "chw1_person"},
    "chw2": {"roles": ["chw"], "facility_id": "area2"},
    "supervisor": {"roles": ["chw_supervisor"], "facility_id": "hc1"},
    "clerk": {"roles": ["data_entry"], "facility_id": "hc1"},
}

GLOBAL = {"settings", "resources", "form:visit"}
CHW1_READS = GLOBAL | {
    "area1", "chw1_person", "house1", "p1", "p2", "r_p1", "r_p2", "r_house1",
    "task_chw1", "target_chw1", "org.couchdb.user:chw1",
}  # fmt: skip
SUPERVISOR_READS = GLOBAL | {
    "hc1", "area1", "area2", "chw1_person", "house1", "p1", "p2", "house2", "p3",
    "r_p1", "r_p2", "r_p3", "r_house1", "r_unallocated", "target_chw1",
}  # fmt: skip
# Depth: chw depth 2 from area1 -> area1 (0), house1/chw1_person (1), p1/p2 (2).


# The household of chw1's area that the removals tests move between areas: house1, its
# people and the reports about them.
HOUSEHOLD = {"house1", "p1", "p2", "r_p1", "r_p2", "r_house1"}


def move_house(backend: Any, db: str, *parents: str) -> str:
    """Move house1 under `parents` upstream (as an admin would); its new revision."""
    status, house = backend.request("GET", f"/{db}/house1")
    assert status == 200, house
    status, body = backend.request("PUT", f"/{db}/house1", {**house, "parent": lineage(*parents)})
    assert status == 201, body
    return str(body["rev"])


def conflicted_house(backend: PouchServer, medic: str) -> tuple[str, dict[str, Any]]:
    """house1 with two leaves: the winner still in area1, the other moved to district2 (out
    of chw1's scope). Their common ancestor, and the hidden leaf."""
    house = backend.request("GET", f"/{medic}/house1")[1]
    base = house["_rev"]
    ancestor = base.split("-", 1)[1]
    stay = {**house, "_rev": "2-" + "f" * 32, "_revisions": {"start": 2, "ids": ["f" * 32, ancestor]}}
    away = {**house, "parent": lineage("area3", "hc2", "district2"), "_rev": "2-" + "0" * 32,
            "_revisions": {"start": 2, "ids": ["0" * 32, ancestor]}}  # fmt: skip
    status, body = backend.request("POST", f"/{medic}/_bulk_docs", {"docs": [stay, away], "new_edits": False})
    assert status == 201, body
    return base, away
