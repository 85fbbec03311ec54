"""The authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AuthMethod = Literal["basic", "cookie", "jwt", "none"]


@dataclass(frozen=True)
class Principal:
    name: str | None
    roles: tuple[str, ...] = ()
    facility_ids: tuple[str, ...] = ()
    contact_id: str | None = None
    method: AuthMethod = "none"
    # Headers that carry the caller's own credentials upstream (basic and cookie callers);
    # empty for token callers, whom couchgate serves with its service account.
    upstream_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def is_admin(self) -> bool:
        return "_admin" in self.roles

    @property
    def authenticated(self) -> bool:
        return self.name is not None or self.is_admin


ANONYMOUS = Principal(name=None)


def as_tuple(value: object) -> tuple[str, ...]:
    """A `facility_id` may be a string or a list of strings; anything else counts as none."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str) and v)
    return ()
