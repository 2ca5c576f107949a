"""People's sign-in over real HTTP: passwords, TOTP, lock-out, CSRF, cookies, sessions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import operator
from signin_support import (
    PASSWORD,
    Flow,
    code_from,
    form_action,
    hidden,
    make_person,
    make_web_client,
    redeem,
    sign_in,
)
from sqlalchemy import text
from starlette.testclient import TestClient

from api.app import create_app
from schema.context import unit_of_work
from schema.ops import keys as key_ops
from schema.ops import users
from schema.ops.signin import FAILED, TOTP_FAILED
from schema.runtime import Appliance
from security import totp
from security.errors import BadUserInput, Conflict, Forbidden
from security.keys import FIELD

ME = {"query": "{ me { id roles team } }"}


def audit_rows(appliance: Appliance, action_like: str) -> list[Any]:
    with appliance.engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT actor, action, decision, reason, fields, object_ids FROM audit_events "
            "WHERE action LIKE :a ORDER BY seq"), {"a": action_like}))


def db_value(appliance: Appliance, sql: str, **params: Any) -> Any:
    with appliance.engine.connect() as connection:
        return connection.execute(text(sql), params).scalar_one()


def db_exec(appliance: Appliance, sql: str, **params: Any) -> None:
    with appliance.engine.begin() as connection:
        connection.execute(text(sql), params)


def password_form(http: TestClient, url: str, email: str, password: str) -> Any:
    page = http.get(url)
    assert page.status_code == 200, page.text
    return http.post(form_action(page.text), data={"csrf": hidden(page.text, "csrf"),
                                                  "step": "password", "email": email,
                                                  "password": password},
                     follow_redirects=False)


# -- accounts -----------------------------------------------------------------------------------

def test_passwords_are_argon2id_at_least_owasp_and_accounts_are_admin_only(
        appliance: Appliance) -> None:
    person = make_person(appliance, "  Jane.Rep@Example.COM ", "sales_rep", team="east")
    assert person.email == "jane.rep@example.com"
    stored = db_value(appliance, "SELECT password_hash FROM users WHERE id = :id", id=person.id)
    assert stored.startswith("$argon2id$v=19$")
    params = dict(p.split("=") for p in stored.split("$")[3].split(","))
    assert int(params["m"]) >= 19 * 1024 and int(params["t"]) >= 2
    assert PASSWORD not in stored
    # No TOTP for a role that does not need it; always for admin, security_officer and
    # privacy_officer.
    assert person.totp_secret is None
    for role in ("admin", "security_officer", "privacy_officer"):
        assert make_person(appliance, f"{role}@example.com", role).totp_secret
    # The TOTP secret is sealed (ciphertext bound to its row), never stored in the clear.
    officer = make_person(appliance, "officer2@example.com", "security_officer")
    sealed = db_value(appliance, "SELECT totp_secret FROM users WHERE id = :id", id=officer.id)
    assert officer.totp_secret is not None
    assert officer.totp_secret.encode() not in bytes(sealed)

    with pytest.raises(Conflict):
        make_person(appliance, "JANE.REP@example.com", "sales_rep")
    with pytest.raises(BadUserInput):
        make_person(appliance, "short@example.com", "sales_rep", password="too short")
    with pytest.raises(BadUserInput):
        make_person(appliance, "nobody@example.com", "overlord")
    for role in ("security_officer", "auditor", "sales_manager"):
        with pytest.raises(Forbidden), unit_of_work(appliance, operator(role)) as ctx:
            users.create_user(ctx, email="x@example.com", roles=["admin"], password=PASSWORD)
    assert [r.decision for r in audit_rows(appliance, "user.create")].count("allow") == 5


# -- TOTP ---------------------------------------------------------------------------------------

def test_totp_accepts_one_step_either_side_and_never_the_same_code_twice() -> None:
    secret = totp.new_secret()
    now = 1_800_000_015.0
    step = totp.current_step(now)
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, totp.code_at(secret, step + offset),
                                  last_step=None, now=now) == step + offset
    for offset in (-3, -2, 2, 3):
        assert totp.matching_step(secret, totp.code_at(secret, step + offset),
                                  last_step=None, now=now) is None
    code = totp.code_at(secret, step)
    assert totp.matching_step(secret, code, last_step=step, now=now) is None  # replay
    # Nor an older code once a newer one was accepted.
    assert totp.matching_step(secret, totp.code_at(secret, step - 1), last_step=step,
                              now=now) is None
    for junk in ("", "12345", "1234567", "abcdef", code[:5] + "x"):
        assert totp.matching_step(secret, junk, last_step=None, now=now) is None
    # RFC 6238 appendix B vector (SHA-1, T=59 s -> 94287082, 8 digits; we use the last 6).
    rfc_secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890"
    assert totp.code_at(rfc_secret, 59 // 30) == "287082"


def test_totp_over_http_window_and_replay(appliance: Appliance, http: TestClient,
                                         steady_totp_clock: float) -> None:
    officer = make_person(appliance, "officer@example.com", "security_officer")
    client_id, secret = make_web_client(appliance)

    # Two steps off: refused, and the person stays at the TOTP step.
    flow = Flow.new(client_id)
    refused = sign_in(http, flow, officer, totp_offset=2)
    assert refused.status_code == 200 and TOTP_FAILED in refused.text
    assert "location" not in refused.headers
    # One step behind: accepted.
    answer = http.post(form_action(refused.text), data={
        "csrf": hidden(refused.text, "csrf"), "step": "totp", "code": officer.code(-1)},
        follow_redirects=False)
    code = code_from(answer, flow)
    assert redeem(http, flow, code, secret).status_code == 200

    # The same code again, in a fresh browser: refused as a replay.
    http.cookies.clear()
    again = sign_in(http, Flow.new(client_id), officer, totp_offset=-1)
    assert again.status_code == 200 and TOTP_FAILED in again.text
    reasons = [r.reason for r in audit_rows(appliance, "signin.totp") if r.decision == "deny"]
    assert reasons == ["wrong TOTP code", "TOTP code already used"]


def test_admin_and_security_officer_cannot_finish_sign_in_without_totp(
        appliance: Appliance, http: TestClient) -> None:
    client_id, secret = make_web_client(appliance)
    for role in ("admin", "security_officer"):
        http.cookies.clear()
        person = make_person(appliance, f"{role}@example.com", role)
        flow = Flow.new(client_id)
        first = password_form(http, flow.url(), person.email, person.password)
        assert first.status_code == 200 and 'value="totp"' in first.text
        # Going back to the authorization URL does not skip the second factor...
        back = http.get(flow.url(), follow_redirects=False)
        assert back.status_code == 200 and 'value="totp"' in back.text
        # ...nor does sending the password form again, or an empty code.
        for data in ({"step": "password", "email": person.email, "password": PASSWORD},
                     {"step": "totp", "code": ""}):
            replay = http.post(form_action(first.text), follow_redirects=False,
                               data={"csrf": hidden(first.text, "csrf"), **data})
            assert "location" not in replay.headers, replay.text
        # The first-party sign-in does not skip it either.
        assert "location" not in http.get("/signin?next=/console/",
                                          follow_redirects=False).headers
        assert db_value(appliance, "SELECT count(*) FROM authorization_codes") == 0

    # An admin whose TOTP secret is missing cannot sign in at all.
    http.cookies.clear()
    admin = make_person(appliance, "admin2@example.com", "admin")
    db_exec(appliance, "UPDATE users SET totp_secret = NULL WHERE id = :id", id=admin.id)
    refused = password_form(http, Flow.new(client_id).url(), admin.email, admin.password)
    assert refused.status_code == 401 and "second factor" in refused.text
    assert db_value(appliance, "SELECT count(*) FROM authorization_codes") == 0


# -- lock-out -----------------------------------------------------------------------------------

def test_lock_out_after_repeated_failures_with_back_off_all_audited(
        appliance: Appliance, http: TestClient) -> None:
    person = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    url = "/signin?next=/"
    limit = appliance.settings.signin_max_failures
    unknown = password_form(http, url, "nobody@example.com", "whatever it may be")
    for attempt in range(1, limit + 1):
        wrong = password_form(http, url, person.email, f"wrong password {attempt}")
        # One answer for a wrong password, an unknown account and a locked one.
        assert wrong.status_code == unknown.status_code == 401
        assert FAILED in wrong.text and FAILED in unknown.text
    locked_until = db_value(appliance, "SELECT locked_until FROM users WHERE id = :id",
                            id=person.id)
    assert locked_until is not None

    # Locked: even the right password is refused, with the same answer.
    right = password_form(http, url, person.email, person.password)
    assert right.status_code == 401 and FAILED in right.text
    denied = audit_rows(appliance, "signin.%")
    assert [(r.action, r.reason) for r in denied if r.action == "signin.lock"] == [
        ("signin.lock", f"{limit} consecutive failures; locked for "
                        f"{appliance.settings.signin_lockout_seconds} s")]
    reasons = [r.reason for r in denied if r.action == "signin.password"]
    assert reasons[0] == "unknown account"
    assert reasons[1:limit + 1] == ["wrong password"] * limit
    assert reasons[-1].startswith("account locked until")

    # When the lock runs out, one more failure locks again for twice as long.
    db_exec(appliance, "UPDATE users SET locked_until = :t WHERE id = :id",
            t=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), id=person.id)
    password_form(http, url, person.email, "still the wrong password")
    lock = audit_rows(appliance, "signin.lock")[-1]
    assert lock.reason.endswith(f"locked for {2 * appliance.settings.signin_lockout_seconds} s")

    # After the lock, the right password signs in and resets the count.
    db_exec(appliance, "UPDATE users SET locked_until = :t WHERE id = :id",
            t=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), id=person.id)
    ok = password_form(http, url, person.email, person.password)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    assert db_value(appliance, "SELECT failed_count FROM users WHERE id = :id", id=person.id) == 0
    assert audit_rows(appliance, "signin")[-1].decision == "allow"


def test_wrong_totp_codes_count_towards_the_lock_out(appliance: Appliance,
                                                     http: TestClient) -> None:
    admin = make_person(appliance, "admin@example.com", "admin")
    first = password_form(http, "/signin?next=/", admin.email, admin.password)
    page = first
    for _ in range(appliance.settings.signin_max_failures):
        assert 'value="totp"' in page.text
        page = http.post(form_action(page.text), data={
            "csrf": hidden(page.text, "csrf"), "step": "totp", "code": "000000"},
            follow_redirects=False)
    # Locked: back to the password page, and a valid code no longer helps.
    assert page.status_code == 401 and 'value="password"' in page.text
    assert audit_rows(appliance, "signin.lock")


# -- CSRF ---------------------------------------------------------------------------------------

def _forms(appliance: Appliance, http: TestClient) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(name, action, fields) of every form the sign-in pages show, each with a valid token."""
    client_id, _ = make_web_client(appliance)
    officer = make_person(appliance, "officer@example.com", "security_officer")
    flow = Flow.new(client_id)
    page = http.get(flow.url())
    yield "password", form_action(page.text), {"csrf": hidden(page.text, "csrf") or "",
                                               "step": "password", "email": officer.email,
                                               "password": officer.password}
    yield "cancel", form_action(page.text), {"csrf": hidden(page.text, "csrf") or "",
                                             "step": "cancel"}
    first = http.get("/signin?next=/")
    yield "first-party", form_action(first.text), {"csrf": hidden(first.text, "csrf") or "",
                                                   "step": "password",
                                                   "email": officer.email,
                                                   "password": officer.password}
    totp_page = http.post(form_action(page.text), data={
        "csrf": hidden(page.text, "csrf"), "step": "password", "email": officer.email,
        "password": officer.password}, follow_redirects=False)
    assert 'value="totp"' in totp_page.text
    yield "totp", form_action(totp_page.text), {"csrf": hidden(totp_page.text, "csrf") or "",
                                                "step": "totp", "code": officer.code()}


def test_every_form_refuses_a_missing_or_wrong_csrf_token(appliance: Appliance,
                                                         http: TestClient) -> None:
    checked = []
    for name, action, fields in _forms(appliance, http):
        good = fields["csrf"]
        assert good and len(good) >= 40, name
        for bad in (None, "", good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
                    "x" * len(good)):
            data = {k: v for k, v in fields.items() if k != "csrf"}
            if bad is not None:
                data["csrf"] = bad
            answer = http.post(action, data=data, follow_redirects=False)
            assert answer.status_code == 403, (name, bad, answer.text)
            assert "location" not in answer.headers
        checked.append(name)
    assert checked == ["password", "cancel", "first-party", "totp"]
    # Nobody was signed in or sent anywhere, and every refusal was audited.
    assert db_value(appliance, "SELECT count(*) FROM authorization_codes") == 0
    assert len(audit_rows(appliance, "signin.csrf")) == 4 * len(checked)

    # A token from another browser's session does not fit this one.
    other = TestClient(http.app, base_url="http://127.0.0.1")
    foreign = hidden(other.get("/signin?next=/").text, "csrf")
    page = http.get("/signin?next=/")
    answer = http.post(form_action(page.text), data={
        "csrf": foreign, "step": "password", "email": "a@example.com", "password": "x" * 12})
    assert answer.status_code == 403

    # Sign-out is a form too.
    http.cookies.clear()
    person = make_person(appliance, "rep@example.com", "sales_rep")
    password_form(http, "/signin?next=/", person.email, person.password)
    confirm = http.get("/logout")
    assert confirm.status_code == 200 and hidden(confirm.text, "csrf")
    for data in ({"nothing": ""}, {"csrf": "forged"}):
        assert http.post("/logout", data=data).status_code == 403
    assert http.post("/logout", data={"csrf": hidden(confirm.text, "csrf")}).status_code == 200


# -- cookies, sessions, pages -------------------------------------------------------------------

def _cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    name_value, *attributes = [part.strip() for part in header.split(";")]
    return name_value.split("=", 1)[0], {
        a.split("=", 1)[0].lower(): (a.split("=", 1)[1] if "=" in a else "") for a in attributes}


def test_session_cookie_attributes_and_rotation(appliance: Appliance, http: TestClient) -> None:
    # Development mode on loopback over plain http: not Secure (browsers would drop it).
    page = http.get("/signin?next=/")
    name, attributes = _cookie_attributes(page.headers["set-cookie"])
    assert name == "enclave-session"
    assert "httponly" in attributes and attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/" and "domain" not in attributes
    assert "secure" not in attributes and "max-age" not in attributes

    # Anywhere else: Secure and __Host- prefixed, even in development mode.
    exposed = Appliance.open(dataclasses.replace(appliance.settings, host="0.0.0.0"))
    try:
        with TestClient(create_app(exposed), base_url="https://enclave.example") as browser:
            person = make_person(exposed, "rep@example.com", "sales_rep", team="east")
            page = browser.get("/signin?next=/")
            name, attributes = _cookie_attributes(page.headers["set-cookie"])
            assert name == "__Host-enclave-session"
            assert {"secure", "httponly"} <= set(attributes)
            assert attributes["samesite"].lower() == "strict" and attributes["path"] == "/"
            assert "domain" not in attributes
            anonymous = browser.cookies["__Host-enclave-session"]
            # The session id changes when the person signs in (no fixation).
            done = browser.post(form_action(page.text), follow_redirects=False, data={
                "csrf": hidden(page.text, "csrf"), "step": "password",
                "email": person.email, "password": person.password})
            assert done.status_code == 303
            name, attributes = _cookie_attributes(done.headers["set-cookie"])
            assert name == "__Host-enclave-session" and "secure" in attributes
            assert browser.cookies["__Host-enclave-session"] != anonymous
    finally:
        exposed.close()

    # Only hashes of session ids are stored.
    with appliance.engine.connect() as connection:
        stored = [r[0] for r in connection.execute(text("SELECT token_hash FROM user_sessions"))]
    assert stored and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in stored)
    assert http.cookies["enclave-session"] not in stored


def test_pages_have_a_strict_csp_and_ship_their_own_assets(http: TestClient) -> None:
    page = http.get("/signin?next=/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script" not in page.text and "style=" not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    for url in re.findall(r'(?:href|src)="([^"]+)"', page.text):
        assert url.startswith("/"), url  # nothing from outside the appliance
        assert http.get(url).status_code == 200, url
    assert "/static/signin.css" in page.text


def test_first_party_sign_in_goes_only_to_local_paths(appliance: Appliance,
                                                      http: TestClient) -> None:
    person = make_person(appliance, "rep@example.com", "sales_rep")
    for given, expected in (("/console/", "/console/"), ("//evil.example/x", "/"),
                            ("https://evil.example/", "/"), ("/\\evil.example", "/")):
        http.cookies.clear()
        done = password_form(http, f"/signin?next={given}", person.email, person.password)
        assert done.status_code == 303 and done.headers["location"] == expected, given
    # Already signed in: straight on.
    again = http.get("/signin?next=/console/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/console/"


def test_sign_out_and_disable_end_the_session_and_its_tokens(appliance: Appliance,
                                                             http: TestClient) -> None:
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, secret = make_web_client(appliance)

    def token() -> str:
        flow = Flow.new(client_id)
        answer = redeem(http, flow, code_from(sign_in(http, flow, rep), flow), secret)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    first = token()
    bearer = {"Authorization": f"Bearer {first}"}
    assert http.post("/graphql", json=ME, headers=bearer).status_code == 200
    confirm = http.get("/logout")
    out = http.post("/logout", data={"csrf": hidden(confirm.text, "csrf")})
    assert out.status_code == 200
    assert 'enclave-session=""' in out.headers["set-cookie"] or \
        "max-age=0" in out.headers["set-cookie"].lower()
    assert http.post("/graphql", json=ME, headers=bearer).status_code == 401
    assert http.get("/oauth/userinfo", headers=bearer).status_code == 401
    assert [r.action for r in audit_rows(appliance, "signout")] == ["signout"]

    http.cookies.clear()
    second = {"Authorization": f"Bearer {token()}"}
    assert http.post("/graphql", json=ME, headers=second).status_code == 200
    with unit_of_work(appliance, operator("admin")) as ctx:
        users.disable_user(ctx, rep.email)
    assert http.post("/graphql", json=ME, headers=second).status_code == 401
    http.cookies.clear()
    assert sign_in(http, Flow.new(client_id), rep).status_code == 401


def test_key_rotation_moves_totp_secrets_too(appliance: Appliance, http: TestClient) -> None:
    officer = make_person(appliance, "officer@example.com", "security_officer")
    with unit_of_work(appliance, operator("admin")) as ctx:
        version = key_ops.rotate_field_key(ctx)
    with unit_of_work(appliance, operator("admin")) as ctx:
        batch = key_ops.reencrypt_batch(ctx)
    assert batch.remaining == 0 and batch.retired_versions == (version - 1,)
    assert db_value(appliance, "SELECT version FROM subject_keys WHERE subject_id = :id",
                    id=officer.id) == version
    assert appliance.keyring.current_version(FIELD) == version
    done = password_form(http, "/signin?next=/", officer.email, officer.password)
    finished = http.post(form_action(done.text), follow_redirects=False, data={
        "csrf": hidden(done.text, "csrf"), "step": "totp", "code": officer.code()})
    assert finished.status_code == 303, finished.text
