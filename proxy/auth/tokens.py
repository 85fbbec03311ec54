"""JWT bearer tokens: issued by `POST /_couchgate/token`, accepted on every request.

Keys are chosen by the token's declared algorithm from an allow-list: HMAC algorithms only
ever use the shared secret and RSA/EC algorithms only the public key, so a public key can
never be replayed as an HMAC secret. `exp` is required; `aud` and `iss` are checked when
configured.

Tokens couchgate issues also carry `cg`: the issue time in milliseconds and a fingerprint
of the user's password at issue time, which `proxy.auth.token_guard` compares with the
user as CouchDB knows them now (tokens from elsewhere lack it: only their `iat` counts).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from jose import JWTError, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError

from proxy.settings import Settings

ROLES_CLAIM = "_couchdb.roles"  # the claim CouchDB's own JWT handler reads
OWN_CLAIM = "cg"  # couchgate's own: {"iat_ms": int, "cred": str}


class TokenError(Exception):
    """The token is not acceptable; the message is safe to show the client."""


@dataclass(frozen=True)
class TokenClaims:
    name: str
    roles: tuple[str, ...]
    expires_at: int
    issued_ms: int = 0  # when it was issued (0: not said, older than any revocation)
    credential: str | None = None  # the password fingerprint at issue time, when couchgate issued it


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self.algorithms = tuple(settings.jwt_algorithms)
        self.issue_algorithm = settings.jwt_issue_algorithm
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.public_key = settings.jwt_public_key
        self.private_key = settings.jwt_private_key.get_secret_value() if settings.jwt_private_key else None
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.ttl = settings.jwt_ttl_seconds

    @property
    def can_issue(self) -> bool:
        if self.issue_algorithm.startswith("HS"):
            return self.secret is not None
        return self.private_key is not None

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.public_key is not None

    def issue(self, name: str, roles: tuple[str, ...], credential: str = "") -> tuple[str, int]:
        key = self.secret if self.issue_algorithm.startswith("HS") else self.private_key
        if key is None:
            raise TokenError("token issuing is not configured")
        now_ms = time.time_ns() // 1_000_000
        now = now_ms // 1000
        claims: dict[str, object] = {
            "sub": name,
            ROLES_CLAIM: list(roles),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            OWN_CLAIM: {"iat_ms": now_ms, "cred": credential},
        }
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, key, algorithm=self.issue_algorithm), self.ttl

    def _key_for(self, algorithm: str) -> str:
        key = self.secret if algorithm.startswith("HS") else self.public_key
        if key is None:
            raise TokenError("no key configured for the token's algorithm")
        return key

    def verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise TokenError("malformed token") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise TokenError("token algorithm not allowed")
        try:
            claims = jwt.decode(
                token,
                self._key_for(algorithm),
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require_exp": True,
                    "require_sub": True,
                    "verify_aud": self.audience is not None,
                    "require_aud": self.audience is not None,
                    "require_iss": self.issuer is not None,
                    "leeway": 5,
                },
            )
        except ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except JWTClaimsError as exc:
            raise TokenError("token claims rejected") from exc
        except (JWTError, ValueError, TypeError, KeyError) as exc:
            raise TokenError("invalid token") from exc
        name = claims.get("sub")
        roles = claims.get(ROLES_CLAIM, [])
        if not isinstance(name, str) or not name:
            raise TokenError("token has no subject")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenError("token roles malformed")
        own = claims.get(OWN_CLAIM)
        own = own if isinstance(own, dict) else {}
        issued = own.get("iat_ms")
        if not isinstance(issued, int) or isinstance(issued, bool):
            iat = claims.get("iat")
            issued = int(iat * 1000) if isinstance(iat, int | float) and not isinstance(iat, bool) else 0
        credential = own.get("cred")
        return TokenClaims(
            name=name,
            roles=tuple(roles),
            expires_at=int(claims["exp"]),
            issued_ms=issued,
            credential=credential if isinstance(credential, str) else None,
        )
