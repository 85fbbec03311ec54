"""What a doc is and under which replication keys it is filed (docs/design.md, 1).

Contacts are keyed by their own `_id`; tasks by `user`; targets by `owner`; user-settings
docs by their own `_id`; a report by its subject: the first present of
`fields.patient_id`, `patient_id`, `fields.place_id`, `place_id`, `fields.patient_uuid`,
`contact._id`, else `_unassigned`, and with `fields.needs_signoff` also by its submitter
and every ancestor in the submitter's lineage.

These keys are where the index files a doc, not what grants it: the read rules
(`proxy.access.read`) give each key its meaning. Ids and shortcodes are separate key
spaces: only a report's subject taken from a shortcode field (`patient_id`, `place_id`)
may name a contact by its shortcode (`ReportFacts.code_field`), and a shortcode is never
a reserved value (`reserved`), so no contact can hold `_unassigned` or a user's doc id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

GLOBAL_IDS = frozenset(
    {
        "settings",
        "resources",
        "branding",
        "partners",
        "service-worker-meta",
        "zscore-charts",
        "privacy-policies",
        "_design/medic-client",
    }
)
GLOBAL_TYPES = frozenset({"form", "translations"})
PLACE_TYPES = frozenset({"district_hospital", "health_center", "clinic"})
UNASSIGNED = "_unassigned"
USER_PREFIX = "org.couchdb.user:"

PLACE, PERSON, CONTACT, REPORT, TASK, TARGET, USER_SETTINGS, GLOBAL, DESIGN, OTHER = (
    "place",
    "person",
    "contact",
    "report",
    "task",
    "target",
    "user_settings",
    "global",
    "design",
    "other",
)
CONTACT_KINDS = frozenset({PLACE, PERSON, CONTACT})


def kind_of(doc: Mapping[str, Any]) -> str:
    """The doc's kind. `type: "contact"` stays `contact`: whether it is a person or a place
    depends on the settings' `contact_types` (see `contact_is_person`). Fields of the wrong
    JSON type count as absent: one malformed doc must never break anyone's sync."""
    doc_id = _str(doc.get("_id"))
    doc_type = _str(doc.get("type"))
    if doc_id in GLOBAL_IDS or doc_type in GLOBAL_TYPES:
        return GLOBAL
    if doc_id is not None and doc_id.startswith("_design/"):
        return DESIGN
    if doc_type == "data_record":
        return REPORT
    if doc_type == "person":
        return PERSON
    if doc_type in PLACE_TYPES:
        return PLACE
    if doc_type == "contact" and _str(doc.get("contact_type")) is not None:
        return CONTACT
    return _OTHER_TYPES.get(doc_type or "", OTHER)


_OTHER_TYPES = {"task": TASK, "target": TARGET, "user-settings": USER_SETTINGS}


def contact_is_person(doc: Mapping[str, Any], person_types: frozenset[str]) -> bool:
    kind = kind_of(doc)
    if kind == CONTACT:
        return _str(doc.get("contact_type")) in person_types
    return kind == PERSON


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object (parsed bodies are dicts: checked first, as the ABC check is slow)."""
    return isinstance(value, (dict, Mapping))


def lineage_ids(node: object) -> list[str]:
    """Ids of a lineage `{"_id": a, "parent": {"_id": b, ...}}`, nearest first."""
    ids: list[str] = []
    seen = 0
    while _mapping(node) and seen < 64:
        doc_id = node.get("_id")
        if isinstance(doc_id, str) and doc_id:
            ids.append(doc_id)
        node = node.get("parent")
        seen += 1
    return ids


def parent_id(doc: Mapping[str, Any]) -> str | None:
    parent = doc.get("parent")
    return _str(parent.get("_id")) if isinstance(parent, Mapping) else None


def reserved(value: str) -> bool:
    """Values no shortcode may take: they key other things (`_unassigned`, a user's own doc
    id) or name no doc a contact could be (`_design/...`, `_local/...`)."""
    return value.startswith(("_", USER_PREFIX))


def shortcode(doc: Mapping[str, Any]) -> str | None:
    """The contact's shortcode (`patient_id`, else `place_id`); a reserved value is none."""
    code = _str(doc.get("patient_id")) or _str(doc.get("place_id"))
    return None if code is None or reserved(code) else code


@dataclass(frozen=True, slots=True)
class ReportFacts:
    subject: str | None  # None: no subject field at all (the report is unassigned)
    code_field: bool  # the subject came from a field that may hold a shortcode
    submitter: str | None
    private: bool
    signoff: tuple[str, ...]  # with `fields.needs_signoff`: the submitter's lineage

    def __reduce__(self) -> tuple[type[ReportFacts], tuple[object, ...]]:  # a plain tuple (snapshots)
        return ReportFacts, (self.subject, self.code_field, self.submitter, self.private, self.signoff)


def report_subject(doc: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The subject value and whether its field may hold a shortcode (`patient_id`,
    `place_id`) rather than only an id (`patient_uuid`, the submitter)."""
    fields = doc.get("fields")
    fields = fields if _mapping(fields) else {}
    for value, code_field in (
        (fields.get("patient_id"), True),
        (doc.get("patient_id"), True),
        (fields.get("place_id"), True),
        (doc.get("place_id"), True),
        (fields.get("patient_uuid"), False),
    ):
        if isinstance(value, str) and value:
            return value, code_field
    contact = doc.get("contact")
    value = contact.get("_id") if _mapping(contact) else None
    return (value, False) if isinstance(value, str) and value else (None, False)


def report_facts(doc: Mapping[str, Any]) -> ReportFacts:
    fields = doc.get("fields")
    fields = fields if _mapping(fields) else {}
    submitter = lineage_ids(doc.get("contact"))
    subject, code_field = report_subject(doc)
    signoff = tuple(dict.fromkeys(submitter)) if fields.get("needs_signoff") else ()
    return ReportFacts(
        subject, code_field, submitter[0] if submitter else None, bool(fields.get("private")), signoff
    )


def replication_keys(
    doc: Mapping[str, Any], kind: str | None = None, facts: ReportFacts | None = None
) -> tuple[str, ...]:
    """The keys the doc is filed under; `facts`: a report's, when the caller has them."""
    kind = kind or kind_of(doc)
    if kind in CONTACT_KINDS or kind == USER_SETTINGS:
        doc_id = _str(doc.get("_id"))
        return (doc_id,) if doc_id else ()
    if kind == TASK:
        user = _str(doc.get("user"))
        return (user,) if user else ()
    if kind == TARGET:
        owner = _str(doc.get("owner"))
        return (owner,) if owner else ()
    if kind == REPORT:
        return report_keys(facts or report_facts(doc))
    return ()


def report_keys(facts: ReportFacts) -> tuple[str, ...]:
    subject = UNASSIGNED if facts.subject is None else facts.subject
    return tuple(dict.fromkeys((subject, *facts.signoff)))
