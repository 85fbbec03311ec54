"""A user's facility and contact come from the `_users` doc, then the `user-settings` doc."""

from __future__ import annotations

from proxy.auth.principal import as_tuple
from proxy.auth.users import merge_user_docs

SETTINGS = "user-settings"


def test_users_doc_wins_and_settings_doc_fills_in() -> None:
    info = merge_user_docs(
        {"facility_id": "hc1", "roles": ["chw"]},
        {"type": SETTINGS, "facility_id": "other", "contact_id": "c1"},
    )
    assert (info.facility_ids, info.contact_id, info.roles, info.exists) == (("hc1",), "c1", ("chw",), True)


def test_only_a_user_settings_doc_fills_in() -> None:
    """Any other doc under the id (a report an offline user once could plant there) names
    no facility or contact of the user."""
    planted = {"type": "data_record", "facility_id": "elsewhere", "contact_id": "c9"}
    info = merge_user_docs({"roles": ["chw"]}, planted)
    assert (info.facility_ids, info.contact_id) == ((), None)
    assert merge_user_docs({"roles": ["chw"]}, {**planted, "type": SETTINGS}).contact_id == "c9"


def test_facility_as_list_or_string_and_garbage() -> None:
    assert merge_user_docs({"facility_id": ["a", "b", 3, ""]}, None).facility_ids == ("a", "b")
    assert merge_user_docs(None, {"type": SETTINGS, "facility_id": "x"}).facility_ids == ("x",)
    assert merge_user_docs({"facility_id": {"no": 1}}, None).facility_ids == ()
    assert merge_user_docs(None, None).exists is False
    assert as_tuple(None) == () and as_tuple("") == ()
