"""couchgate's settings, read once from the environment (prefix `COUCHGATE_`).

Invalid settings fail at start with one line naming the variable (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUCHGATE_", frozen=True, extra="ignore")

    # Upstream CouchDB and the service account couchgate uses there.
    couch_url: AnyHttpUrl = Field(default=AnyHttpUrl("http://127.0.0.1:5984"))
    couch_user: str = "admin"
    couch_password: SecretStr = SecretStr("")
    db: str = Field(default="medic", pattern=r"^[a-z][a-z0-9_$()+/-]*$")
    audit_db: str = Field(default="medic-audit", pattern=r"^[a-z][a-z0-9_$()+/-]*$")
    # The audit log: written in batches off the request path (see proxy/audit/log.py).
    audit_enabled: bool = True
    # Crash-proof: an intent is stored before each write is forwarded (proxy/audit/log.py).
    audit_durable: bool = True
    audit_batch_size: int = Field(default=200, ge=1, le=10_000)
    audit_flush_interval: float = Field(default=0.5, gt=0)
    audit_queue_max: int = Field(default=100_000, ge=1)
    audit_retention_days: int = Field(default=0, ge=0)  # 0 keeps entries forever
    audit_retention_interval: float = Field(default=3600.0, gt=0)

    # Where couchgate listens, and the address clients use (for rewritten Location headers).
    host: str = "127.0.0.1"
    port: int = Field(default=5988, ge=1, le=65535)
    public_url: AnyHttpUrl | None = None

    # Bearer tokens issued by POST /_couchgate/token and accepted on every request.
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_private_key: SecretStr | None = None
    jwt_algorithms: Annotated[tuple[JwtAlgorithm, ...], NoDecode] = ("HS256",)
    jwt_issue_algorithm: JwtAlgorithm = "HS256"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_ttl_seconds: int = Field(default=900, ge=10, le=86400)

    # How long a verified basic/cookie credential, and what a bearer token's user is (exists,
    # roles, password, logouts), is trusted before asking CouchDB again.
    auth_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Where logouts and `POST /_couchgate/token/revoke` are kept (admins only; made on first use).
    auth_db: str = Field(default="couchgate-auth", pattern=r"^[a-z][a-z0-9_$()+/-]*$")

    # Failed logins (Basic, POST /_session, POST /_couchgate/token), per user name and per client
    # address: free failures, then delays from the base doubling up to the max; forgotten after
    # a quiet spell. Never a permanent lockout.
    login_throttle: bool = True
    login_free_failures: int = Field(default=5, ge=1)
    login_free_failures_per_address: int = Field(default=20, ge=1)
    login_base_delay: float = Field(default=1.0, gt=0)
    login_max_delay: float = Field(default=300.0, gt=0)
    login_forget_seconds: float = Field(default=900.0, gt=0)

    # The edge: proxies whose X-Forwarded-* headers are believed (IPs or CIDR networks), time
    # limits for a request's head and for its body's progress, connections per client address.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=20.0, gt=0)
    body_min_bytes: int = Field(default=1024, ge=1)
    max_connections_per_client: int = Field(default=128, ge=1)

    # Devices forget what leaves their user's scope (proxy/offline/removals.py); a device whose
    # checkpoint is older than the horizon starts over (a full resync, without removals).
    removals: bool = True
    removals_horizon_days: float = Field(default=30.0, gt=0)
    # How far apart the clocks of couchgate's replicas may be (NTP keeps them within
    # milliseconds): a since token handed out by another replica, or before a restart, is
    # placed in this replica's index by wall-clock times, widened by this much.
    clock_skew_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Where the scope index is saved (proxy/offline/snapshot.py), so a restart resumes in
    # seconds with its since tokens and removals exact; unset: rebuilt from CouchDB at start.
    # Needs COUCHGATE_SINCE_SECRET (or the JWT secret): the snapshot is signed with it.
    state_dir: Path | None = None
    snapshot_interval_seconds: float = Field(default=300.0, ge=1)

    # Limits and timeouts.
    # CouchDB 3 accepts request bodies up to 4 GiB (max_http_request_size); so do we, streamed.
    max_body_bytes: int = Field(default=4 * 1024**3, ge=1024)
    max_json_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Bodies of couchgate's own endpoints, read whole: `POST _changes` of offline users
    # (`doc_ids`); an offline user's `_local` doc or own `_users` doc; a conflict's resolve or
    # split request; one imported doc (CouchDB's default max_document_size) and one NDJSON line.
    # (`_revs_diff`, `_bulk_get`, `_all_docs` of offline users take max_json_bytes.)
    max_changes_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # What one request of an offline user may name, as CouchDB bounds `_bulk_get` and
    # `_bulk_docs` (max_bulk_get_count, max_bulk_docs_count): docs of `_bulk_get` and
    # `_bulk_docs`, keys of `_all_docs`, revisions of `_revs_diff`, ids of a `_changes`
    # doc_ids filter. Each is judged in one go on the event loop, and a body under
    # max_json_bytes could otherwise name millions (seconds in which nobody is answered).
    max_bulk_items: int = Field(default=10_000, ge=1)
    max_user_doc_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_conflicts_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_import_doc_bytes: int = Field(default=8_000_000, ge=1024)
    max_import_line_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Upstream timeouts (README, "Timeouts"): connecting; the first byte of CouchDB's answer
    # where a phone is waiting (offline users, the index) and everywhere else; the longest
    # silence inside a streamed answer.
    connect_timeout: float = Field(default=5.0, gt=0)
    first_byte_timeout: float = Field(default=10.0, gt=0)
    request_timeout: float = Field(default=300.0, gt=0)
    idle_timeout: float = Field(default=60.0, gt=0)
    # Client connections served at once (0: from the open-file limit; see proxy/connections.py).
    max_connections: int = Field(default=0, ge=0)
    upstream_pool_size: int = Field(default=100, ge=1)

    # Browser PouchDB: origins allowed to call couchgate with credentials ("*" echoes any origin).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    # Conflicts: how often the monitor counts them (metrics), where it announces new ones,
    # and whether it resolves the ones whose three-way merge is clean.
    conflicts_interval: float = Field(default=60.0, gt=0)
    conflicts_webhook_url: AnyHttpUrl | None = None
    conflicts_auto_resolve: bool = False
    metrics_public: bool = False

    # Offline users: how many docs a user may replicate before the scope report warns.
    scope_warn_docs: int = Field(default=10_000, ge=1)
    # The users-at-risk list (GET /_couchgate/users): how often the docs in each offline
    # user's scope are recounted in the background, and the window (seconds) over which
    # their sync errors and refusals are counted.
    users_refresh_interval: float = Field(default=60.0, gt=0)
    users_activity_window: float = Field(default=86400.0, gt=0)
    # Key for signing offline users' `since` tokens; random per process when unset.
    since_secret: SecretStr | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    @field_validator("jwt_algorithms", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _list_from_env(cls, value: object) -> object:
        # From the environment: a JSON list, or the plain comma list people write (`*`, `HS256,RS256`).
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)  # a JSONDecodeError is a ValueError: reported for this variable
        return tuple(part.strip() for part in text.split(",") if part.strip())

    @field_validator("couch_url")
    @classmethod
    def _no_credentials_in_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.username or value.password:
            raise ValueError("put credentials in COUCHGATE_COUCH_USER/COUCHGATE_COUCH_PASSWORD, not the URL")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # a ValueError names this variable
        return value

    @model_validator(mode="after")
    def _login_delays_grow(self) -> Settings:
        if self.login_max_delay < self.login_base_delay:
            raise ValueError("login_max_delay: must not be less than login_base_delay")
        return self

    @model_validator(mode="after")
    def _jwt_keys_match_algorithms(self) -> Settings:
        wants_hmac = any(a.startswith("HS") for a in (*self.jwt_algorithms, self.jwt_issue_algorithm))
        if self.jwt_issue_algorithm.startswith("HS") and self.jwt_secret is not None:
            if len(self.jwt_secret.get_secret_value()) < 32:
                raise ValueError("jwt_secret: must be at least 32 characters")
        elif not self.jwt_issue_algorithm.startswith("HS") and self.jwt_private_key is None:
            raise ValueError("jwt_private_key: required when jwt_issue_algorithm is not HS*")
        if not wants_hmac and self.jwt_public_key is None:
            raise ValueError("jwt_public_key: required for the configured jwt_algorithms")
        issuing = self.jwt_secret if self.jwt_issue_algorithm.startswith("HS") else self.jwt_private_key
        if issuing is not None and self.jwt_issue_algorithm not in self.jwt_algorithms:
            # Tokens couchgate issued would then be refused by couchgate itself.
            raise ValueError("jwt_issue_algorithm: must be one of jwt_algorithms")
        return self

    @property
    def upstream(self) -> str:
        return str(self.couch_url).rstrip("/")


class SettingsError(Exception):
    """Raised with a one-line message naming the offending variable."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SourceError as exc:
        # A value the environment source could not decode (e.g. a list that is not JSON).
        match = re.search(r'field "(\w+)"', str(exc))
        var = f"COUCHGATE_{match.group(1).upper()}" if match else "COUCHGATE_*"
        raise SettingsError(f"invalid setting {var}: cannot parse the value") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        field = str(loc[0]) if loc else _field_from_message(str(first.get("msg", "")))
        var = f"COUCHGATE_{field.upper()}" if field else "COUCHGATE_*"
        raise SettingsError(f"invalid setting {var}: {first.get('msg', 'invalid value')}") from None


def _field_from_message(msg: str) -> str:
    # Model-level validators name the field before a colon: "Value error, jwt_secret: ...".
    head = msg.removeprefix("Value error, ").split(":", 1)[0]
    return head if head.isidentifier() else ""
