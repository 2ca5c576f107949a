"""The authorization-code flow over real HTTP: PKCE (S256 only), single-use short-lived codes,
redirect URIs, ID tokens, and a person's access token on /graphql."""

from __future__ import annotations

import datetime as dt
from typing import Any

from conftest import operator
from joserfc import jwt
from joserfc.jwk import KeySet
from signin_support import (
    REDIRECT,
    Flow,
    code_from,
    form_action,
    hidden,
    make_person,
    make_web_client,
    query_of,
    redeem,
    sign_in,
)
from sqlalchemy import text
from starlette.testclient import TestClient

from schema.context import unit_of_work
from schema.ops import users
from schema.runtime import Appliance

CONTACTS = "{ contacts { edges { node { id lastName email nationalId } } } }"


def db_exec(appliance: Appliance, sql: str, **params: Any) -> None:
    with appliance.engine.begin() as connection:
        connection.execute(text(sql), params)


def refused_with(response: Any, error: str) -> None:
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == error, response.text
    assert "access_token" not in response.json()


def test_a_sales_reps_token_reads_contacts_under_the_sales_rep_policy(
        appliance: Appliance, http: TestClient, caller: Any) -> None:
    manager = caller("sales_manager", team="east")
    made = manager.gql('mutation { createContact(input: {lastName: "Doe", email: '
                       '"jane@example.com", nationalId: "AB-123"}) { id } }')
    assert "errors" not in made, made
    caller("sales_manager", team="west").gql('mutation { createContact(input: '
                                             '{lastName: "Elsewhere"}) { id } }')
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, secret = make_web_client(appliance)
    flow = Flow.new(client_id)
    answer = redeem(http, flow, code_from(sign_in(http, flow, rep), flow), secret)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] <= 900
    assert body["scope"] == "openid email profile" and "refresh_token" not in body
    bearer = {"Authorization": f"Bearer {body['access_token']}"}

    me = http.post("/graphql", json={"query": "{ me { id roles team } }"}, headers=bearer)
    assert me.json()["data"]["me"] == {"id": rep.id, "roles": ["sales_rep"], "team": "east"}
    read = http.post("/graphql", json={"query": CONTACTS}, headers=bearer).json()
    nodes = [e["node"] for e in read["data"]["contacts"]["edges"]]
    assert [(n["lastName"], n["email"], n["nationalId"]) for n in nodes] == \
        [("Doe", "jane@example.com", None)]  # team east only; national id never for a rep
    assert {e["extensions"]["code"] for e in read["errors"]} == {"FORBIDDEN"}
    # The read is audited under the person's own name.
    with appliance.engine.connect() as connection:
        actors = {r[0] for r in connection.execute(text(
            "SELECT actor FROM audit_events WHERE action = 'contact.read'"))}
    assert f"user:{rep.id}" in actors

    info = http.get("/oauth/userinfo", headers=bearer)
    assert info.status_code == 200
    assert info.json() == {"sub": rep.id, "email": "rep@example.com", "email_verified": True,
                           "roles": ["sales_rep"], "team": "east"}

    # Disabled: the same token is refused at once.
    with unit_of_work(appliance, operator("admin")) as ctx:
        users.disable_user(ctx, rep.email)
    refused = http.post("/graphql", json={"query": CONTACTS}, headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert http.get("/oauth/userinfo", headers=bearer).status_code == 401


def test_pkce_is_required_and_s256_only(appliance: Appliance, http: TestClient) -> None:
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, secret = make_web_client(appliance)
    flow = Flow.new(client_id)
    for extra in ({"code_challenge_method": "plain", "code_challenge": flow.verifier},
                  {"code_challenge_method": "plain"},
                  {"code_challenge": None, "code_challenge_method": None},
                  {"code_challenge_method": None},
                  {"code_challenge": "too-short"}):
        answer = http.get(flow.url(**extra), follow_redirects=False)
        assert answer.status_code == 302, (extra, answer.text)
        params = query_of(answer.headers["location"])
        assert params["error"] == "invalid_request" and params["state"] == flow.state, extra
        assert "code" not in params

    # A wrong verifier, or none, is refused, and spends the code.
    for verifier in ("x" * 43 + "wrong", ""):
        http.cookies.clear()
        attempt = Flow.new(client_id)
        code = code_from(sign_in(http, attempt, rep), attempt)
        if verifier:
            refused_with(redeem(http, attempt, code, secret, verifier=verifier), "invalid_grant")
        else:
            data = {"grant_type": "authorization_code", "code": code,
                    "redirect_uri": attempt.redirect_uri}
            refused_with(http.post("/oauth/token", data=data, auth=(client_id, secret or "")),
                         "invalid_request")
        refused_with(redeem(http, attempt, code, secret), "invalid_grant")

    # A public client: no secret, PKCE alone binds the code to it.
    public_id, none = make_web_client(appliance, public=True, name="SPA")
    assert none is None
    http.cookies.clear()
    spa = Flow.new(public_id)
    code = code_from(sign_in(http, spa, rep), spa)
    refused_with(redeem(http, spa, code, None, verifier=Flow.new(public_id).verifier),
                 "invalid_grant")
    spa = Flow.new(public_id)
    code = code_from(sign_in(http, spa, rep), spa)
    assert redeem(http, spa, code, None).status_code == 200
    # A confidential client cannot pose as a public one.
    confidential = Flow.new(client_id)
    code = code_from(sign_in(http, confidential, rep), confidential)
    refused_with(redeem(http, confidential, code, None), "invalid_client")


def test_codes_are_single_use_short_lived_and_bound(appliance: Appliance,
                                                    http: TestClient) -> None:
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, secret = make_web_client(appliance)
    other_id, other_secret = make_web_client(appliance, name="Other app")
    flow = Flow.new(client_id)
    code = code_from(sign_in(http, flow, rep), flow)
    with appliance.engine.connect() as connection:
        stored, created, expires = connection.execute(text(
            "SELECT code_hash, created_at, expires_at FROM authorization_codes")).one()
    assert code not in stored and len(stored) == 64
    lifetime = (dt.datetime.fromisoformat(str(expires)) -
                dt.datetime.fromisoformat(str(created))).total_seconds()
    assert 0 < lifetime <= 60

    # Another client cannot redeem it; nor can it with another redirect URI.
    refused_with(http.post("/oauth/token", auth=(other_id, other_secret or ""), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier}), "invalid_grant")
    first = redeem(http, flow, code, secret)
    assert first.status_code == 200, first.text
    bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
    assert http.post("/graphql", json={"query": "{ me { id } }"}, headers=bearer).status_code \
        == 200
    # Used twice: refused, and the session it came from ends with its tokens.
    refused_with(redeem(http, flow, code, secret), "invalid_grant")
    assert http.post("/graphql", json={"query": "{ me { id } }"}, headers=bearer).status_code \
        == 401
    with appliance.engine.connect() as connection:
        reasons = [r[0] for r in connection.execute(text(
            "SELECT reason FROM audit_events WHERE action = 'token.issue' "
            "AND decision = 'deny' ORDER BY seq"))]
    assert reasons[-1] == "invalid_grant: authorization code used twice; its session was ended"

    # Expired.
    http.cookies.clear()
    late = Flow.new(client_id)
    code = code_from(sign_in(http, late, rep), late)
    db_exec(appliance, "UPDATE authorization_codes SET expires_at = :t WHERE used_at IS NULL",
            t=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    refused_with(redeem(http, late, code, secret), "invalid_grant")
    # Garbage.
    refused_with(redeem(http, late, "not-a-code", secret), "invalid_grant")


def test_redirect_uris_and_clients_are_checked_before_anything_else(
        appliance: Appliance, http: TestClient) -> None:
    client_id, _ = make_web_client(appliance)
    flow = Flow.new(client_id)
    service_id, _ = new_service_client(appliance)
    for params in (flow.url(redirect_uri="https://evil.example/callback"),
                   flow.url(redirect_uri=REDIRECT + "/more"),
                   flow.url(redirect_uri=None),
                   Flow.new("w-0190a4b2-7c3d-7e4f-8a1b-2c3d4e5f6a7b").url(),
                   flow.url(client_id=None)):
        answer = http.get(params, follow_redirects=False)
        # Never redirected to an unregistered place: an error page instead.
        assert answer.status_code == 400 and "location" not in answer.headers, params
    # A client-credentials client cannot start a sign-in.
    answer = http.get(Flow.new(service_id).url(), follow_redirects=False)
    assert answer.status_code in (302, 400)
    assert "code=" not in answer.headers.get("location", "")
    assert http.get(flow.url() + "&state=again").status_code == 400  # repeated parameter
    assert http.get(flow.url(response_type="token"), follow_redirects=False).headers[
        "location"].startswith(REDIRECT + "?error=unsupported_response_type")


def new_service_client(appliance: Appliance) -> tuple[str, str]:
    from conftest import new_client
    return new_client(appliance, "sales_rep", team="east")


def test_id_tokens_are_ed25519_signed_and_carry_nonce_and_amr(
        appliance: Appliance, http: TestClient, steady_totp_clock: float) -> None:
    officer = make_person(appliance, "officer@example.com", "security_officer")
    client_id, secret = make_web_client(appliance)
    flow = Flow.new(client_id)
    body = redeem(http, flow, code_from(sign_in(http, flow, officer), flow), secret).json()
    keys = KeySet.import_key_set(http.get("/.well-known/jwks.json").json())
    decoded = jwt.decode(body["id_token"], keys, algorithms=["Ed25519"])
    assert decoded.header["alg"] == "Ed25519" and decoded.header["kid"] == "token-signing-1"
    claims = decoded.claims
    assert claims["iss"] == appliance.settings.resolved_issuer
    assert claims["aud"] == client_id and claims["sub"] == officer.id
    assert claims["nonce"] == flow.nonce and claims["amr"] == ["pwd", "otp"]
    assert claims["email"] == "officer@example.com" and claims["roles"] == ["security_officer"]
    assert 0 < claims["exp"] - claims["iat"] <= 600 and claims["auth_time"] <= claims["iat"]
    # Without scope openid: an access token, no ID token.
    http.cookies.clear()
    plain = Flow.new(client_id, scope="")
    answer = sign_in(http, plain, officer, totp_offset=1)
    body = redeem(http, plain, code_from(answer, plain), secret).json()
    assert "access_token" in body and "id_token" not in body


def test_discovery_describes_the_code_flow(appliance: Appliance, http: TestClient) -> None:
    config = http.get("/.well-known/openid-configuration").json()
    issuer = appliance.settings.resolved_issuer
    assert config["authorization_endpoint"] == f"{issuer}/oauth/authorize"
    assert config["userinfo_endpoint"] == f"{issuer}/oauth/userinfo"
    assert config["response_types_supported"] == ["code"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["id_token_signing_alg_values_supported"] == ["Ed25519"]
    assert "authorization_code" in config["grant_types_supported"]


def test_signed_in_browser_gets_a_code_at_once_and_cancel_denies(
        appliance: Appliance, http: TestClient) -> None:
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, _ = make_web_client(appliance)
    # prompt=none without a session: login_required, back to the client.
    silent = Flow.new(client_id)
    answer = http.get(silent.url(prompt="none"), follow_redirects=False)
    assert query_of(answer.headers["location"])["error"] == "login_required"
    first = Flow.new(client_id)
    code_from(sign_in(http, first, rep), first)
    # First-party client: no consent screen; a signed-in browser gets its code at once.
    second = Flow.new(client_id)
    code_from(http.get(second.url(), follow_redirects=False), second)
    code_from(http.get(silent.url(prompt="none"), follow_redirects=False), silent)
    # prompt=login asks again.
    assert http.get(Flow.new(client_id).url(prompt="login")).status_code == 200
    # A nonce is used once (OpenID Connect replay protection).
    replayed = http.get(second.url(), follow_redirects=False)
    assert query_of(replayed.headers["location"])["error"] == "invalid_request"
    # Cancel: access_denied to the client.
    http.cookies.clear()
    third = Flow.new(client_id)
    page = http.get(third.url())
    cancelled = http.post(form_action(page.text), follow_redirects=False,
                          data={"csrf": hidden(page.text, "csrf"), "step": "cancel"})
    denied = query_of(cancelled.headers["location"])
    assert denied["error"] == "access_denied" and denied["state"] == third.state
    assert "code" not in denied
