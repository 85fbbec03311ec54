"""The caller of one request, resolved once after authentication (`auth_middleware`) and
read by every handler from `request[CALLER]` (`proxy.keys`): who they are (`principal`),
their CHT user context (`user`: roles, facilities, contact), whether they are an offline
user, and the rules (the CHT settings) that judgement was made with.

Offline or not is judged with the settings, which are read from CouchDB until the scope
index holds them. Admins and anonymous callers are never offline and need no read. When
the read fails, the caller is stored unjudged and the failure is raised where a handler
asks (`offline`, `rules`): a request that depends on the judgement is refused with that
error, one that does not (a CHW's `GET /_session`) is served as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.access.config import AppSettings, UserCtx, is_offline
from proxy.auth.principal import ANONYMOUS, Principal
from proxy.errors import CouchgateError


@dataclass(frozen=True)
class Caller:
    principal: Principal
    user: UserCtx
    # The settings the judgement was made with; for admins and anonymous callers, and when
    # they could not be read, those the index held. Handlers read `rules` and `offline`;
    # the `_at_hand` values are for counting (metrics), which must not fail.
    rules_at_hand: AppSettings
    offline_at_hand: bool = False
    # Why the caller could not be judged (the settings could not be read): raised on asking.
    unjudged: CouchgateError | None = field(default=None, repr=False)

    @property
    def name(self) -> str | None:
        return self.principal.name

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def authenticated(self) -> bool:
        return self.principal.authenticated

    @property
    def offline(self) -> bool:
        """An offline user (docs/design.md, 1)? Fails closed: raises what kept the settings
        from being read, rather than guess that an offline user is an online one."""
        if self.unjudged is not None:
            raise self.unjudged
        return self.offline_at_hand

    @property
    def rules(self) -> AppSettings:
        """The CHT settings in force for this caller (raises as `offline` does)."""
        if self.unjudged is not None:
            raise self.unjudged
        return self.rules_at_hand


def user_of(principal: Principal) -> UserCtx:
    """The principal as the access rules see a user."""
    return UserCtx(
        name=principal.name or "",
        roles=principal.roles,
        facility_ids=principal.facility_ids,
        contact_id=principal.contact_id,
        is_admin=principal.is_admin,
    )


def anonymous(held: AppSettings) -> Caller:
    return Caller(ANONYMOUS, user_of(ANONYMOUS), held)


async def resolve(
    principal: Principal, read_rules: Callable[[], Awaitable[AppSettings]], held: AppSettings
) -> Caller:
    """The caller `principal` is; `read_rules` reads the settings (failing closed), `held`
    are the settings already at hand (used where no judgement is needed)."""
    user = user_of(principal)
    if principal.is_admin or principal.name is None:
        return Caller(principal, user, held)
    try:
        rules = await read_rules()
    except CouchgateError as exc:
        return Caller(principal, user, held, is_offline(user, held), unjudged=exc)
    return Caller(principal, user, rules, is_offline(user, rules))
