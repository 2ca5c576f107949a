"""Access tokens: JWTs signed with the appliance's Ed25519 token key (JOSE alg "Ed25519").

Claims: iss, aud, sub, exp, iat, nbf, jti, roles, team; tokens issued to people through the
authorization-code flow also carry kind ("user"), sid (their sign-in session) and scope.
Verification accepts only our algorithm, our keys (by kid), our issuer and audience, an unexpired
token; the caller then checks that the client (or person, and session) is still active.

The same key signs OpenID Connect ID tokens (`id_token_key`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from security.errors import Unauthenticated
from security.keys import TOKEN_SIGNING, KeyRing

ALGORITHM = "Ed25519"
_LEEWAY = 30
#: Tokens verified and remembered per service (signature, issuer, audience, lifetime checked
#: once); a remembered token is still refused once expired.
_VERIFIED_MAX = 4096


def _kid(version: int) -> str:
    return f"token-signing-{version}"


class TokenService:
    def __init__(self, keyring: KeyRing, *, issuer: str, audience: str, lifetime: int) -> None:
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._version = keyring.current_version(TOKEN_SIGNING)
        self._signing = OKPKey.import_key(keyring.signing_key(TOKEN_SIGNING, self._version),
                                          {"kid": _kid(self._version)})
        public: list[Any] = []
        for version in keyring.versions(TOKEN_SIGNING):
            private = keyring.signing_key(TOKEN_SIGNING, version)
            public.append(OKPKey.import_key(private.public_key(),
                                            {"kid": _kid(version), "use": "sig",
                                             "alg": ALGORITHM}))
        self._public = KeySet(public)
        # A client sends the same token for up to 15 minutes; checking its Ed25519 signature
        # and claims again on every request costs more than the rest of an HTTP request's
        # handling. The service is rebuilt when the signing keys change, and this with it.
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(self, *, subject: str, roles: Sequence[str], team: str | None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = dict(extra or {})
        claims.update({
            "iss": self.issuer, "aud": self.audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(16), "roles": list(roles), "team": team,
        })
        token = jwt.encode({"alg": ALGORITHM, "kid": _kid(self._version), "typ": "at+jwt"},
                           claims, self._signing, algorithms=[ALGORITHM])
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def verify(self, token: str) -> dict[str, Any]:
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() > claims["exp"] + _LEEWAY:
                raise Unauthenticated("access token has expired")
            return dict(claims)
        claims = self._verify(token)
        verified = self._verified
        if len(verified) >= _VERIFIED_MAX:
            now = time.time()
            for known, known_claims in list(verified.items()):
                if now > known_claims["exp"] + _LEEWAY:
                    verified.pop(known, None)
            if len(verified) >= _VERIFIED_MAX:
                verified.clear()
        verified[token] = claims
        return dict(claims)

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            decoded = jwt.decode(token, self._public, algorithms=[ALGORITHM])
        except jose_errors.JoseError as exc:
            raise Unauthenticated(f"invalid access token ({exc.error})") from None
        except (ValueError, TypeError, KeyError):
            raise Unauthenticated("malformed access token") from None
        registry = jwt.JWTClaimsRegistry(
            leeway=_LEEWAY,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True}, iat={"essential": True},
            sub={"essential": True}, jti={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except jose_errors.ExpiredTokenError:
            raise Unauthenticated("access token has expired") from None
        except jose_errors.JoseError as exc:
            raise Unauthenticated(f"access token rejected ({exc.error}: {exc.description})") from None
        claims = decoded.claims
        if claims["exp"] - claims["iat"] > 15 * 60 + _LEEWAY:
            raise Unauthenticated("access token lifetime exceeds 15 minutes")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("access token carries no roles")
        return claims

    def id_token_key(self) -> tuple[OKPKey, str]:
        """The current signing key and its kid, for ID tokens (alg Ed25519)."""
        return self._signing, _kid(self._version)

    def jwks(self) -> dict[str, Any]:
        return dict(self._public.as_dict(private=False))
