"""Attacks on authentication, over real HTTP: the token endpoint, forged and stale tokens,
the published keys, health."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import types
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import issue_token, new_client, operator
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey
from sqlalchemy import text
from starlette.testclient import TestClient

from schema.context import unit_of_work
from schema.ops import clients
from schema.runtime import Appliance
from security.keys import AUDIT_SIGNING, TOKEN_SIGNING

GRANT = {"grant_type": "client_credentials"}
ME = {"query": "{ me { id roles team } }"}


# -- helpers ---------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text_: str) -> bytes:
    return base64.urlsafe_b64decode(text_ + "=" * (-len(text_) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return json.loads(unb64url(header)), json.loads(unb64url(payload)), unb64url(signature)


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(signature)))


def hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(claims).encode()))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def ed25519(private: Ed25519PrivateKey, claims: dict[str, Any], **header: Any) -> str:
    key = OKPKey.import_key(private, {"kid": header.get("kid", "token-signing-1")})
    return jwt.encode({"alg": "Ed25519", "kid": "token-signing-1", "typ": "at+jwt", **header},
                      claims, key, algorithms=["Ed25519"])


def graphql(http: TestClient, authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return http.post("/graphql", json=ME, headers=headers)


def assert_unauthenticated(response: Any) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    assert response.headers["www-authenticate"].startswith("Bearer")


def assert_invalid_client(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client", response.text
    assert "access_token" not in response.json()
    assert response.headers["www-authenticate"].startswith("Basic")


def revoke(appliance: Appliance, client_id: str) -> None:
    with unit_of_work(appliance, operator("admin")) as ctx:
        clients.revoke_client(ctx, client_id)


# -- 1. the token endpoint -------------------------------------------------------------------

def test_both_client_authentication_methods_issue_a_signed_jwt(
        appliance: Appliance, http: TestClient) -> None:
    client_id, secret = new_client(appliance, "sales_rep", team="east")
    basic = http.post("/oauth/token", data=GRANT, auth=(client_id, secret))
    post = http.post("/oauth/token", data={**GRANT, "client_id": client_id,
                                           "client_secret": secret})
    tokens = []
    for response in (basic, post):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == appliance.settings.token_lifetime <= 900
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        tokens.append(body["access_token"])
    assert tokens[0] != tokens[1]

    now = int(time.time())
    jtis = set()
    for token in tokens:
        header, claims, signature = parts(token)
        assert header["alg"] == "Ed25519"
        assert header["kid"] == "token-signing-1"
        assert len(signature) == 64
        assert {"iss", "aud", "exp", "iat", "jti", "sub", "roles", "team"} <= set(claims)
        assert claims["iss"] == appliance.settings.resolved_issuer
        assert claims["aud"] == appliance.settings.audience
        assert claims["sub"] == client_id
        assert claims["roles"] == ["sales_rep"] and claims["team"] == "east"
        assert abs(claims["iat"] - now) <= 60
        assert 0 < claims["exp"] - claims["iat"] <= 900
        assert len(claims["jti"]) >= 16
        jtis.add(claims["jti"])
        # The token works.
        answer = graphql(http, f"Bearer {token}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["me"] == {"id": client_id, "roles": ["sales_rep"],
                                               "team": "east"}
    assert len(jtis) == 2

    # An asked-for scope grants nothing beyond the client's roles.
    scoped = http.post("/oauth/token", data={**GRANT, "scope": "admin"},
                       auth=(client_id, secret))
    if scoped.status_code == 200:
        assert parts(scoped.json()["access_token"])[1]["roles"] == ["sales_rep"]
    else:
        assert scoped.json()["error"] == "invalid_scope"


def test_bad_client_credentials_are_one_indistinguishable_401(
        appliance: Appliance, http: TestClient) -> None:
    client_id, secret = new_client(appliance, "sales_rep", team="east")
    revoked_id, revoked_secret = new_client(appliance, "admin", name="old-app")
    revoke(appliance, revoked_id)
    unknown = "c-0190a4b2-7c3d-7e4f-8a1b-2c3d4e5f6a7b"

    attempts = {
        "wrong secret (basic)": {"data": GRANT, "auth": (client_id, secret + "x")},
        "wrong secret (post)": {"data": {**GRANT, "client_id": client_id,
                                         "client_secret": secret[:-1]}},
        "empty secret (post)": {"data": {**GRANT, "client_id": client_id, "client_secret": ""}},
        "another client's secret": {"data": GRANT, "auth": (client_id, revoked_secret)},
        "unknown client (basic)": {"data": GRANT, "auth": (unknown, secret)},
        "unknown client (post)": {"data": {**GRANT, "client_id": unknown,
                                           "client_secret": secret}},
        "revoked client (basic)": {"data": GRANT, "auth": (revoked_id, revoked_secret)},
        "revoked client (post)": {"data": {**GRANT, "client_id": revoked_id,
                                           "client_secret": revoked_secret}},
        "no credentials": {"data": GRANT},
        "client id only (post)": {"data": {**GRANT, "client_id": client_id}},
    }
    bodies = {}
    for name, request in attempts.items():
        response = http.post("/oauth/token", **request)
        assert_invalid_client(response)
        bodies[name] = (response.json(), response.headers["www-authenticate"])
    # Nothing in the answer tells an unknown or revoked client from a wrong secret.
    assert len({json.dumps(b, sort_keys=True) for b in bodies.values()}) == 1, bodies

    # The real secret still works, and every refusal was audited.
    assert issue_token(http, client_id, secret)
    with appliance.engine.connect() as connection:
        denied = connection.execute(text(
            "SELECT count(*) FROM audit_events WHERE action = 'token.issue' "
            "AND decision = 'deny' AND reason = 'invalid_client'")).scalar_one()
    assert denied == len(attempts)


def test_client_secrets_are_stored_as_argon2id_hashes(appliance: Appliance) -> None:
    issued = [new_client(appliance, "sales_rep", team="east", name=f"app-{n}") for n in range(2)]
    with appliance.engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, secret_hash FROM api_clients")).all())
    for client_id, secret in issued:
        digest = stored[client_id]
        assert digest.startswith("$argon2id$v=19$")
        params = dict(p.split("=") for p in digest.split("$")[3].split(","))
        assert int(params["m"]) >= 19 * 1024 and int(params["t"]) >= 2
        assert secret not in digest
        assert secret[:12] not in digest
        assert len(secret) >= 32
    assert stored[issued[0][0]] != stored[issued[1][0]]
    # The bootstrap client's secret is hashed the same way.
    assert all(v.startswith("$argon2id$") for v in stored.values())


GRANT_ERRORS = [
    ({}, "invalid_request"),
    ({"scope": "x"}, "invalid_request"),
    ({"grant_type": ""}, "unsupported_grant_type"),
    ({"grant_type": "password", "username": "admin", "password": "admin"},
     "unsupported_grant_type"),
    # A client-credentials client may not use the people's grant (RFC 6749 §5.2).
    ({"grant_type": "authorization_code", "code": "abc", "redirect_uri": "http://x"},
     "unauthorized_client"),
    ({"grant_type": "refresh_token", "refresh_token": "abc"}, "unsupported_grant_type"),
    ({"grant_type": "implicit"}, "unsupported_grant_type"),
    ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y.z"},
     "unsupported_grant_type"),
    ({"grant_type": "CLIENT_CREDENTIALS"}, "unsupported_grant_type"),
]


def test_other_or_missing_grant_types_are_rfc6749_errors(appliance: Appliance,
                                                         http: TestClient) -> None:
    client_id, secret = new_client(appliance, "admin")
    for form, error in GRANT_ERRORS:
        response = http.post("/oauth/token", content=_form(form), auth=(client_id, secret),
                             headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 400, (form, response.text)
        assert response.json()["error"] == error, (form, response.text)
        assert "access_token" not in response.json()


def _form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def test_malformed_token_requests_are_refused(appliance: Appliance, http: TestClient) -> None:
    client_id, secret = new_client(appliance, "admin")
    as_json = http.post("/oauth/token", json=GRANT, auth=(client_id, secret))
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    # A parameter given twice is an invalid request (RFC 6749 §3.2), not "the last one wins".
    twice = http.post("/oauth/token", content=b"grant_type=client_credentials&grant_type=x",
                      auth=(client_id, secret),
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert twice.status_code == 400 and twice.json()["error"] == "invalid_request", twice.text
    as_get = http.get("/oauth/token", params=GRANT, auth=(client_id, secret))
    assert as_get.status_code == 405
    huge = http.post("/oauth/token", content=b"grant_type=client_credentials&x=" + b"a" * 20_000,
                     auth=(client_id, secret),
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413


# -- 2. /graphql refuses every bad token -----------------------------------------------------

@pytest.fixture
def good(appliance: Appliance, http: TestClient) -> dict[str, Any]:
    """A real client, its real token, and claims for forging variants of it."""
    client_id, secret = new_client(appliance, "sales_manager", team="east")
    token = issue_token(http, client_id, secret)
    now = int(time.time())
    claims = {"iss": appliance.settings.resolved_issuer, "aud": appliance.settings.audience,
              "sub": client_id, "iat": now, "nbf": now, "exp": now + 300,
              "jti": secrets.token_urlsafe(16), "roles": ["sales_manager"], "team": "east"}
    return {"client_id": client_id, "secret": secret, "token": token, "claims": claims,
            "key": appliance.keyring.signing_key(TOKEN_SIGNING)}


def test_real_and_correctly_forged_tokens_are_accepted(http: TestClient,
                                                       good: dict[str, Any]) -> None:
    """The control: the forging helpers make tokens the API accepts when nothing is wrong."""
    for token in (good["token"], ed25519(good["key"], good["claims"])):
        answer = graphql(http, f"Bearer {token}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["me"]["id"] == good["client_id"]
    # "bearer" is case-insensitive (RFC 6750).
    assert graphql(http, f"bearer {good['token']}").status_code == 200


def test_missing_or_malformed_credentials_are_refused(http: TestClient,
                                                      good: dict[str, Any]) -> None:
    token = good["token"]
    for authorization in (None, "", "Bearer", "Bearer ", "Bearer garbage", "garbage",
                          f"Basic {token}", f"Token {token}", f"Bearer {token}x",
                          f"Bearer {token[:-4]}", f"Bearer {token.rsplit('.', 1)[0]}",
                          f"Bearer {token}.{token}", "Bearer a.b.c", "Bearer ...",
                          "Basic " + base64.b64encode(
                              f"{good['client_id']}:{good['secret']}".encode()).decode()):
        assert_unauthenticated(graphql(http, authorization))


def test_altered_tokens_are_refused(http: TestClient, good: dict[str, Any]) -> None:
    _, claims, signature = parts(good["token"])
    head, payload, _ = good["token"].split(".")
    for position in (0, 31, 63):
        flipped = bytearray(signature)
        flipped[position] ^= 0x01
        assert_unauthenticated(graphql(http, f"Bearer {head}.{payload}.{b64url(bytes(flipped))}"))
    # Claims changed under the original signature (privilege escalation).
    escalated = b64url(json.dumps({**claims, "roles": ["admin"]}).encode())
    assert_unauthenticated(graphql(http, f"Bearer {head}.{escalated}.{b64url(signature)}"))
    other_team = b64url(json.dumps({**claims, "team": "west"}).encode())
    assert_unauthenticated(graphql(http, f"Bearer {head}.{other_team}.{b64url(signature)}"))


def test_a_remembered_token_still_expires_and_its_variants_are_checked_afresh(
        http: TestClient, appliance: Appliance, good: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified tokens are remembered (the signature is not checked on every request); being
    remembered must not stretch a token's life, nor vouch for an altered copy of it."""
    short = ed25519(good["key"], {**good["claims"], "jti": "short-lived",
                                  "exp": good["claims"]["iat"] + 60})
    assert graphql(http, f"Bearer {short}").status_code == 200
    assert graphql(http, f"Bearer {short}").status_code == 200  # from memory
    _, claims, signature = parts(short)
    head, _, _ = short.split(".")
    escalated = b64url(json.dumps({**claims, "roles": ["admin"]}).encode())
    assert_unauthenticated(graphql(http, f"Bearer {head}.{escalated}.{b64url(signature)}"))
    # Two minutes later (past exp and the 30 s leeway) the remembered token is refused.
    import security.tokens as tokens_module
    later = time.time() + 120
    monkeypatch.setattr(tokens_module, "time", types.SimpleNamespace(time=lambda: later))
    refused = graphql(http, f"Bearer {short}")
    assert_unauthenticated(refused)
    assert "expired" in refused.json()["errors"][0]["message"]


def test_tokens_signed_by_other_keys_are_refused(http: TestClient, appliance: Appliance,
                                                 good: dict[str, Any]) -> None:
    claims = {**good["claims"], "roles": ["admin"]}
    attacker = Ed25519PrivateKey.generate()
    assert_unauthenticated(graphql(http, f"Bearer {ed25519(attacker, claims)}"))
    # The attacker's public key embedded in the header is not trusted.
    embedded = OKPKey.import_key(attacker.public_key()).as_dict()
    assert_unauthenticated(graphql(http, f"Bearer {ed25519(attacker, claims, jwk=embedded)}"))
    assert_unauthenticated(graphql(
        http, f"Bearer {ed25519(attacker, claims, jku='http://127.0.0.1:9/jwks.json')}"))
    # Another of the appliance's own keys (the audit signing key) does not sign tokens.
    audit_key = appliance.keyring.signing_key(AUDIT_SIGNING)
    assert_unauthenticated(graphql(http, f"Bearer {ed25519(audit_key, claims)}"))
    # The real key under an unknown kid.
    assert_unauthenticated(graphql(http, f"Bearer {ed25519(good['key'], claims, kid='x')}"))


def test_alg_none_and_algorithm_confusion_are_refused(http: TestClient,
                                                      good: dict[str, Any]) -> None:
    claims = {**good["claims"], "roles": ["admin"]}
    for alg in ("none", "None", "NONE", "nOnE"):
        header = {"alg": alg, "kid": "token-signing-1", "typ": "at+jwt"}
        assert_unauthenticated(graphql(http, f"Bearer {unsigned(header, claims)}"))
        assert_unauthenticated(graphql(http, f"Bearer {unsigned(header, claims, b'x' * 64)}"))
    header = {"alg": "none"}
    assert_unauthenticated(graphql(http, f"Bearer {unsigned(header, claims)}"))

    public = good["key"].public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    jwk_x = OKPKey.import_key(public).as_dict()["x"].encode()
    for secret in (raw, pem, jwk_x, b64url(raw).encode()):
        for alg in ("HS256", "HS384", "HS512"):
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
                      "HS512": hashlib.sha512}[alg]
            header = {"alg": alg, "kid": "token-signing-1", "typ": "at+jwt"}
            signing_input = (b64url(json.dumps(header).encode()) + "."
                             + b64url(json.dumps(claims).encode()))
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            assert_unauthenticated(graphql(http, f"Bearer {signing_input}.{b64url(mac)}"))
    assert_unauthenticated(graphql(http, "Bearer " + hs256(raw, {"alg": "HS256"}, claims)))
    # The right key and signature under another algorithm name.
    for alg in ("EdDSA", "ES256", "RS256"):
        header = {"alg": alg, "kid": "token-signing-1", "typ": "at+jwt"}
        signing_input = (b64url(json.dumps(header).encode()) + "."
                         + b64url(json.dumps(good["claims"]).encode()))
        signature = good["key"].sign(signing_input.encode())
        assert_unauthenticated(graphql(http, f"Bearer {signing_input}.{b64url(signature)}"))


BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "expired": {"iat": -4000, "nbf": -4000, "exp": -3600},
    "expired-beyond-leeway": {"iat": -400, "nbf": -400, "exp": -60},
    "lifetime-over-15-minutes": {"iat": 0, "nbf": 0, "exp": 3600},
    "issued-in-the-future": {"iat": 3600, "nbf": 3600, "exp": 3900},
    "not-yet-valid": {"nbf": 3600},
    "wrong-audience": {"aud": "another-api"},
    "wrong-audience-list": {"aud": ["another-api"]},
    "wrong-issuer": {"iss": "http://evil.example"},
    "issuer-trailing-slash": {"iss": "http://127.0.0.1:8000/"},
    "no-exp": {"exp": None},
    "no-iat": {"iat": None},
    "no-sub": {"sub": None},
    "no-jti": {"jti": None},
    "no-aud": {"aud": None},
    "no-iss": {"iss": None},
    "no-roles": {"roles": None},
    "roles-a-string": {"roles": "admin"},
    "roles-not-strings": {"roles": [1]},
    "exp-not-a-number": {"exp": "soon"},
    "unknown-client": {"sub": "c-0190a4b2-7c3d-7e4f-8a1b-2c3d4e5f6a7b"},
}


def test_tokens_with_bad_claims_are_refused(http: TestClient, good: dict[str, Any]) -> None:
    """Signed with the appliance's real token key, but the claims are wrong."""
    now = int(time.time())
    for name, change in BAD_CLAIMS.items():
        claims = dict(good["claims"])
        for claim, value in change.items():
            if value is None:
                claims.pop(claim)
            elif claim in ("iat", "nbf", "exp") and isinstance(value, int):
                claims[claim] = now + value
            else:
                claims[claim] = value
        response = graphql(http, f"Bearer {ed25519(good['key'], claims)}")
        assert response.status_code == 401, (name, response.text)
        assert_unauthenticated(response)


def test_a_revoked_clients_tokens_stop_working_at_once(appliance: Appliance, http: TestClient,
                                                       good: dict[str, Any]) -> None:
    forged_later = ed25519(good["key"], {**good["claims"], "jti": "later"})
    assert graphql(http, f"Bearer {good['token']}").status_code == 200
    revoke(appliance, good["client_id"])
    for token in (good["token"], forged_later):
        assert_unauthenticated(graphql(http, f"Bearer {token}"))
    # Nor can it get a new one.
    assert_invalid_client(http.post("/oauth/token", data=GRANT,
                                    auth=(good["client_id"], good["secret"])))
    # A mutation is refused too, and writes nothing.
    mutation = http.post("/graphql", json={"query": 'mutation { createContact(input: '
                                                    '{lastName: "Ghost"}) { id } }'},
                         headers={"Authorization": f"Bearer {good['token']}"})
    assert_unauthenticated(mutation)
    with appliance.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM contacts")).scalar_one() == 0


# -- 3. published keys and discovery ---------------------------------------------------------

def test_jwks_publishes_only_the_public_key_and_verifies_tokens(
        appliance: Appliance, http: TestClient, good: dict[str, Any]) -> None:
    response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks = response.json()
    assert len(jwks["keys"]) == 1
    (key,) = jwks["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
    assert key["kid"] == "token-signing-1" and key["use"] == "sig"
    assert "d" not in key
    assert set(key) <= {"kty", "crv", "x", "kid", "use", "alg"}
    private = good["key"]
    raw_private = private.private_bytes_raw()
    assert b64url(raw_private) not in response.text
    assert raw_private.hex() not in response.text
    expected_x = b64url(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert key["x"] == expected_x

    # A relying party verifies a token with nothing but the published key.
    token = good["token"]
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["Ed25519"])
    assert decoded.claims["sub"] == good["client_id"]
    head, payload, signature = token.split(".")
    public = Ed25519PublicKey.from_public_bytes(unb64url(key["x"]))
    public.verify(unb64url(signature), f"{head}.{payload}".encode())
    # ...and rejects a forged one.
    forged = ed25519(Ed25519PrivateKey.generate(), good["claims"])
    f_head, f_payload, f_signature = forged.split(".")
    with pytest.raises(InvalidSignature):
        public.verify(unb64url(f_signature), f"{f_head}.{f_payload}".encode())


def test_openid_configuration_names_the_endpoints(appliance: Appliance,
                                                  http: TestClient) -> None:
    response = http.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    config = response.json()
    issuer = appliance.settings.resolved_issuer
    assert config["issuer"] == issuer
    assert config["token_endpoint"] == f"{issuer}/oauth/token"
    assert config["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert config["grant_types_supported"] == ["client_credentials", "authorization_code"]
    # "none": public web clients of the authorization-code flow, bound by PKCE instead.
    assert set(config["token_endpoint_auth_methods_supported"]) == {"client_secret_basic",
                                                                    "client_secret_post", "none"}
    # The issuer it names is the one tokens carry.
    client_id, secret = new_client(appliance, "sales_rep", team="east")
    assert parts(issue_token(http, client_id, secret))[1]["iss"] == config["issuer"]


# -- 4. health -------------------------------------------------------------------------------

def test_health_and_readiness(http: TestClient) -> None:
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "keys": "ok"}}
    for response in (health, ready):
        assert response.headers["x-content-type-options"] == "nosniff"
