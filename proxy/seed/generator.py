"""Generate a CHT-shaped data set, deterministic from a seed, streamed doc by doc.

Hierarchy (`type: "contact"` with `contact_type`, as in CHT's configurable hierarchy):
district -> health_center (a supervisor's facility) -> chw_area (a CHW's facility) ->
household -> person. Every contact stores its full lineage, nearest first. Around it:
the `settings` doc (roles, permissions, `replication_depth` as in docs/design.md), other global
docs, reports about people (by shortcode or uuid) and households, private reports,
reports that need sign-off, unallocated SMS reports, tasks and targets.

Users: `administrator` (a CouchDB server admin, as CHT's admins are, with the CHT role
`admin` in its docs), `supervisor` (facility: the first health center), `chw1`..`chwN`
(one per area of that health center; `chw2` has two areas, as a list), and `clerk` (an
online data-entry user). Passwords are `<name>-pass`. Timestamps come from the seed, never
the clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ROLES = {"chw": {"offline": True}, "chw_supervisor": {"offline": True}, "data_entry": {}}
OFFLINE = ["chw", "chw_supervisor"]
SETTINGS: dict[str, Any] = {
    "_id": "settings",
    "settings": {
        "roles": ROLES,
        "permissions": {
            "can_edit": [*OFFLINE, "data_entry"],
            "can_create_records": [*OFFLINE, "data_entry"],
            "can_update_reports": OFFLINE,
            "can_create_people": OFFLINE,
            "can_create_places": OFFLINE,
            "can_update_people": OFFLINE,
            "can_update_places": OFFLINE,
            "can_delete_reports": ["chw_supervisor"],
            "can_delete_contacts": ["chw_supervisor"],
            "can_view_unallocated_data_records": ["chw_supervisor"],
            "can_resolve_conflicts": ["chw_supervisor"],
        },
        "replication_depth": [
            {"role": "chw", "depth": 2, "report_depth": 1},
            {"role": "chw_supervisor", "depth": -1},
        ],
        "district_admins_access_unallocated_messages": True,
        "contact_types": [
            {"id": "district", "parents": []},
            {"id": "health_center", "parents": ["district"]},
            {"id": "chw_area", "parents": ["health_center"]},
            {"id": "household", "parents": ["chw_area"]},
            {
                "id": "person",
                "person": True,
                "parents": ["district", "health_center", "chw_area", "household"],
            },
        ],
    },
}
GLOBALS: list[dict[str, Any]] = [
    SETTINGS,
    {"_id": "resources", "resources": {"icon-person": "person.png"}},
    {"_id": "branding", "title": "couchgate demo"},
    {"_id": "form:pregnancy", "type": "form", "internalId": "pregnancy", "title": "Pregnancy registration"},
    {"_id": "form:assessment", "type": "form", "internalId": "assessment", "title": "Assessment"},
    {"_id": "messages-en", "type": "translations", "code": "en", "generic": {"hello": "Hello"}},
]
EPOCH_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Shape:
    districts: int = 1
    health_centers: int = 2  # per district
    areas: int = 4  # per health center
    households: int = 10  # per area
    people: int = 4  # per household
    reports: int = 4  # per person


PRESETS = {
    "tiny": Shape(1, 1, 3, 5, 4, 3),
    "small": Shape(1, 2, 4, 10, 4, 4),
    "100k": Shape(1, 5, 10, 40, 5, 8),
    "1m": Shape(5, 10, 10, 40, 5, 8),
}


def docs_per_household(shape: Shape) -> int:
    # the place, 2 reports, a task, and its people with their reports
    return 4 + shape.people * (1 + shape.reports)


def docs_per_area(shape: Shape) -> int:
    # area + chw person + target + households
    return 3 + shape.households * docs_per_household(shape)


def users_of(shape: Shape) -> int:
    return shape.areas + 3  # a CHW per area of the first health center, supervisor, clerk, admin


def approx_docs(shape: Shape) -> int:
    """Exactly the number of docs `DemoData(shape).docs()` yields."""
    areas = shape.districts * shape.health_centers * shape.areas
    unallocated = max(3, shape.districts * 3)
    places = shape.districts * (1 + shape.health_centers * 2)  # districts, centers, supervisors
    return len(GLOBALS) + users_of(shape) + places + areas * docs_per_area(shape) + unallocated


def _split(total: int, most: int) -> tuple[int, int]:
    """`total` as about `groups * per_group`, with `per_group <= most` and as even as may be."""
    groups = max(1, -(-total // most))
    return groups, max(1, round(total / groups))


def for_size(n_docs: int) -> Shape:
    """A shape of about `n_docs` docs (within a few percent from ~300 to millions): areas of
    ~2,000 docs (at least three, so `chw2` has two), ten to a health center, ten centers to a
    district; the households per area then absorb what rounding the tree left over."""
    base = PRESETS["100k"]
    wanted_areas = max(3, round(n_docs / docs_per_area(base)))
    hcs_total, areas = _split(wanted_areas, 10)
    districts, hcs = _split(hcs_total, 10)
    bare = Shape(districts, hcs, areas, 0, base.people, base.reports)
    all_areas = districts * hcs * areas
    households = round((n_docs - approx_docs(bare)) / (all_areas * docs_per_household(bare)))
    return Shape(districts, hcs, areas, max(1, households), base.people, base.reports)


@dataclass(frozen=True)
class DemoUser:
    name: str
    password: str
    roles: tuple[str, ...]
    facility_ids: tuple[str, ...]
    contact_id: str | None
    # A CouchDB server admin (the loader adds it to the server's `admins`): couchgate treats
    # a user as an admin when CouchDB does (docs/design.md, 1).
    server_admin: bool = False

    def user_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": f"org.couchdb.user:{self.name}",
            "name": self.name,
            "password": self.password,
            "type": "user",
            "roles": list(self.roles),
        }
        if self.facility_ids:
            doc["facility_id"] = (
                list(self.facility_ids) if len(self.facility_ids) > 1 else self.facility_ids[0]
            )
        if self.contact_id:
            doc["contact_id"] = self.contact_id
        return doc

    def settings_doc(self) -> dict[str, Any]:
        doc = self.user_doc()
        doc.pop("password")
        doc["type"] = "user-settings"
        return doc


def lineage(ids: list[str]) -> dict[str, Any]:
    node: dict[str, Any] | None = None
    for doc_id in reversed(ids):
        node = {"_id": doc_id, **({"parent": node} if node else {})}
    assert node is not None
    return node


@dataclass
class DemoData:
    shape: Shape
    seed: int = 1
    users: list[DemoUser] = field(default_factory=list)

    def __post_init__(self) -> None:
        hc = "d0-hc0"
        areas = [f"{hc}-a{i}" for i in range(self.shape.areas)]
        self.users = [DemoUser("supervisor", "supervisor-pass", ("chw_supervisor",), (hc,), f"{hc}-sup")]
        for i, area in enumerate(areas, start=1):
            facilities = (area, areas[i]) if i == 2 and len(areas) > 2 else (area,)
            self.users.append(DemoUser(f"chw{i}", f"chw{i}-pass", ("chw",), facilities, f"{area}-chw"))
        self.users.append(DemoUser("clerk", "clerk-pass", ("data_entry",), (hc,), None))
        self.users.append(
            DemoUser("administrator", "administrator-pass", ("admin",), (), None, server_admin=True)
        )

    @property
    def approx_docs(self) -> int:
        return approx_docs(self.shape)

    def docs(self) -> Iterator[dict[str, Any]]:
        """Every doc of the `medic` database, streamed (a million never sit in memory)."""
        rng = random.Random(self.seed)
        codes = iter(range(100_000, 10_000_000))
        clock = iter(range(EPOCH_MS, EPOCH_MS + 10**12, 60_000))
        yield from (dict(d) for d in GLOBALS)
        for user in self.users:
            yield user.settings_doc()
        for d in range(self.shape.districts):
            district = f"d{d}"
            yield {
                "_id": district,
                "type": "contact",
                "contact_type": "district",
                "name": f"District {d}",
                "place_id": str(next(codes)),
                "reported_date": next(clock),
            }
            for h in range(self.shape.health_centers):
                yield from self._health_center(rng, codes, clock, [f"{district}-hc{h}", district])
        yield from self._unallocated(rng, clock)

    def _health_center(
        self, rng: random.Random, codes: Iterator[int], clock: Iterator[int], line: list[str]
    ) -> Iterator[dict[str, Any]]:
        hc = line[0]
        supervisor = f"{hc}-sup"
        yield {
            "_id": hc,
            "type": "contact",
            "contact_type": "health_center",
            "name": hc,
            "parent": lineage(line[1:]),
            "contact": {"_id": supervisor},
            "place_id": str(next(codes)),
            "reported_date": next(clock),
        }
        yield {
            "_id": supervisor,
            "type": "contact",
            "contact_type": "person",
            "name": f"Supervisor {hc}",
            "parent": lineage(line),
            "patient_id": str(next(codes)),
            "reported_date": next(clock),
        }
        for a in range(self.shape.areas):
            # The demo users chw1..chwN work the areas of the first health center.
            user = f"chw{a + 1}" if hc == "d0-hc0" else f"chw-{hc}-a{a}"
            yield from self._area(rng, codes, clock, [f"{hc}-a{a}", *line], supervisor, user)

    def _area(
        self,
        rng: random.Random,
        codes: Iterator[int],
        clock: Iterator[int],
        line: list[str],
        supervisor: str,
        user_name: str,
    ) -> Iterator[dict[str, Any]]:
        area = line[0]
        chw = f"{area}-chw"
        chw_line = [chw, *line]
        user = f"org.couchdb.user:{user_name}"
        yield {
            "_id": area,
            "type": "contact",
            "contact_type": "chw_area",
            "name": area,
            "parent": lineage(line[1:]),
            "contact": {"_id": chw},
            "place_id": str(next(codes)),
            "reported_date": next(clock),
        }
        yield {
            "_id": chw,
            "type": "contact",
            "contact_type": "person",
            "name": f"CHW {area}",
            "parent": lineage(line),
            "patient_id": str(next(codes)),
            "reported_date": next(clock),
        }
        yield {
            "_id": f"target-{area}",
            "type": "target",
            "owner": chw,
            "user": user,
            "targets": [{"id": "visits", "value": {"pass": rng.randint(0, 40), "total": 40}}],
        }
        for h in range(self.shape.households):
            house = f"{area}-h{h}"
            house_line = [house, *line]
            yield {
                "_id": house,
                "type": "contact",
                "contact_type": "household",
                "name": f"Household {house}",
                "parent": lineage(line),
                "place_id": str(next(codes)),
                "reported_date": next(clock),
            }
            yield self._report(f"{house}-survey", "household_survey", chw_line, clock, {"place_id": house})
            private = h % 7 == 3  # about the CHW's own area, submitted by a household member
            submitter = [f"{house}-p0", *house_line] if private else chw_line
            yield self._report(
                f"{house}-note", "area_note", submitter, clock, {"patient_uuid": area, "private": private}
            )
            yield {
                "_id": f"task-{house}",
                "type": "task",
                "user": user,
                "owner": house,
                "requester": house,
                "state": rng.choice(["Ready", "Completed", "Cancelled"]),
            }
            for p in range(self.shape.people):
                person = f"{house}-p{p}"
                code = str(next(codes))
                yield {
                    "_id": person,
                    "type": "contact",
                    "contact_type": "person",
                    "name": f"Person {person}",
                    "parent": lineage(house_line),
                    "patient_id": code,
                    "sex": rng.choice(["f", "m"]),
                    "date_of_birth": f"{rng.randint(1950, 2024)}-01-01",
                    "reported_date": next(clock),
                }
                for r in range(self.shape.reports):
                    by_supervisor = r % 5 == 4
                    fields: dict[str, Any] = {"patient_id": code} if r % 2 == 0 else {"patient_uuid": person}
                    if (h + p + r) % 6 == 5:
                        fields["needs_signoff"] = True
                    fields["temperature"] = round(rng.uniform(35.5, 40.0), 1)
                    who = [supervisor, *line[1:]] if by_supervisor else chw_line
                    yield self._report(
                        f"{person}-r{r}", rng.choice(["pregnancy", "assessment"]), who, clock, fields
                    )

    def _report(
        self, doc_id: str, form: str, submitter: list[str], clock: Iterator[int], fields: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "_id": doc_id,
            "type": "data_record",
            "form": form,
            "content_type": "xml",
            "reported_date": next(clock),
            "contact": lineage(submitter),
            "fields": fields,
        }

    def _unallocated(self, rng: random.Random, clock: Iterator[int]) -> Iterator[dict[str, Any]]:
        for i in range(max(3, self.shape.districts * 3)):
            yield {
                "_id": f"sms-{i}",
                "type": "data_record",
                "form": None,
                "from": f"+2547{rng.randint(10**7, 10**8 - 1)}",
                "sms_message": {"message": "HELP"},
                "reported_date": next(clock),
                "fields": {},
            }


def preset(name: str, seed: int = 1) -> DemoData:
    if name in PRESETS:
        return DemoData(PRESETS[name], seed)
    if name.isdigit():
        return DemoData(for_size(int(name)), seed)
    raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)} or a number of docs")
