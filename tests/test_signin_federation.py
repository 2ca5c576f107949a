"""Federation: Enclave signs people in through the organisation's own OpenID Connect provider.

The provider here is a second Enclave appliance, served by uvicorn on a free loopback port, so
every step crosses real HTTP: discovery, the authorization request (PKCE S256), the provider's
sign-in page, the token exchange and ID-token verification against the provider's JWKS.
"""

from __future__ import annotations

import html
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
import uvicorn
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
)
from sqlalchemy import text
from starlette.testclient import TestClient

from api.app import create_app
from api.federation import CALLBACK_PATH
from schema.context import unit_of_work
from schema.ops import users
from schema.runtime import Appliance, initialise
from security.config import Secret, Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Appliance]:
    """The organisation's provider: another appliance, really listening on loopback."""
    port = _free_port()
    settings = Settings(data_dir=tmp_path / "idp", dev_mode=True, port=port)
    initialise(settings)
    idp = Appliance.open(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(idp), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the provider did not start"
        time.sleep(0.02)
    yield idp
    server.should_exit = True
    thread.join(timeout=10)
    idp.close()


def _relying_party(tmp_path: Path, idp: Appliance, role_claim: str | None = None) -> Appliance:
    rp_settings = Settings(data_dir=tmp_path / "rp", dev_mode=True)
    client_id, secret = make_web_client(idp, name="Enclave RP",
                                        redirect_uri=rp_settings.resolved_issuer + CALLBACK_PATH)
    assert secret is not None
    settings = Settings(data_dir=tmp_path / "rp", dev_mode=True,
                        oidc_issuer=idp.settings.resolved_issuer, oidc_client_id=client_id,
                        oidc_client_secret=Secret(secret), oidc_role_claim=role_claim)
    initialise(settings)
    return Appliance.open(settings)


def _federated_sign_in(rp: TestClient, browser: httpx.Client, url: str, email: str) -> Any:
    """Press "Sign in with your organisation" on the RP's page, sign in at the provider, come
    back. Returns the RP's last answer."""
    page = rp.get(url)
    assert "Sign in with your organisation" in page.text
    start = [a for a in _actions(page.text) if a.startswith("/oauth/federated/start")][0]
    to_provider = rp.post(start, data={"csrf": hidden(page.text, "csrf")},
                          follow_redirects=False)
    assert to_provider.status_code == 303, to_provider.text
    authorize = to_provider.headers["location"]
    login = browser.get(authorize)
    assert login.status_code == 200, login.text
    back = browser.post(str(login.url.copy_with(query=None)) + form_action(login.text)[
        len("/oauth/authorize"):], data={"csrf": hidden(login.text, "csrf"),
                                         "step": "password", "email": email,
                                         "password": PASSWORD})
    assert back.status_code == 302, back.text
    callback = back.headers["location"]
    parts = urlsplit(callback)
    assert parts.path == CALLBACK_PATH
    hop = rp.get(f"{parts.path}?{parts.query}")
    # The callback page moves on to /finish from our own origin (SameSite=Strict cookies).
    assert hop.status_code == 200 and 'http-equiv="refresh"' in hop.text
    assert "default-src 'self'" in hop.headers["content-security-policy"]
    return rp.get(f"/oauth/federated/finish?{parts.query}", follow_redirects=False)


def _actions(page: str) -> list[str]:
    return [html.unescape(a) for a in re.findall(r'action="([^"]*)"', page)]


def test_sign_in_through_the_organisations_provider(tmp_path: Path,
                                                    provider: Appliance) -> None:
    rp = _relying_party(tmp_path, provider)
    try:
        # The same person at the provider and (by email) at Enclave; a stranger only there.
        make_person(provider, "rep@example.com", "sales_rep", team="east")
        make_person(provider, "stranger@example.com", "sales_rep")
        local = make_person(rp, "REP@example.com", "sales_rep", team="east",
                            password="a different local password")
        app_id, app_secret = make_web_client(rp)
        with TestClient(create_app(rp), base_url="http://127.0.0.1") as browser_rp, \
                httpx.Client(follow_redirects=False, timeout=10) as browser_idp:
            flow = Flow.new(app_id)
            done = _federated_sign_in(browser_rp, browser_idp, flow.url(), "rep@example.com")
            # Signed in at Enclave: back to the original authorization request...
            assert done.status_code == 303, done.text
            assert done.headers["location"] == flow.url()
            # ...which now answers the application with a code for the local person.
            code = code_from(browser_rp.get(done.headers["location"], follow_redirects=False),
                             flow)
            token = redeem(browser_rp, flow, code, app_secret)
            assert token.status_code == 200, token.text
            me = browser_rp.post("/graphql", json={"query": "{ me { id roles team } }"},
                                 headers={"Authorization": f"Bearer "
                                                          f"{token.json()['access_token']}"})
            assert me.json()["data"]["me"] == {"id": local.id, "roles": ["sales_rep"],
                                               "team": "east"}

            # Someone the provider knows but Enclave does not: refused, and audited.
            browser_rp.cookies.clear()
            browser_idp.cookies.clear()
            refused = _federated_sign_in(browser_rp, browser_idp, Flow.new(app_id).url(),
                                         "stranger@example.com")
            assert refused.status_code == 401 and "Sign-in failed" in refused.text

            # A state that did not start in this browser is refused before any exchange.
            forged = browser_rp.get("/oauth/federated/finish?code=abc&state=forged")
            assert forged.status_code == 400
        with rp.engine.connect() as connection:
            rows = list(connection.execute(text(
                "SELECT actor, decision, reason, fields FROM audit_events "
                "WHERE action IN ('signin', 'signin.federated') ORDER BY seq")))
        assert rows[0].actor == f"user:{local.id}" and rows[0].decision == "allow"
        assert '"amr:fed"' in rows[0].fields
        assert rows[1].decision == "deny" and "no local account" in rows[1].reason
    finally:
        rp.close()


def test_a_role_claim_narrows_and_totp_is_still_required(tmp_path: Path,
                                                         provider: Appliance) -> None:
    rp = _relying_party(tmp_path, provider, role_claim="roles")
    try:
        # At the provider the person is only a sales_rep; locally an admin and sales_manager.
        make_person(provider, "lead@example.com", "sales_rep")
        local = make_person(rp, "lead@example.com", "admin", "sales_manager", team="east")
        with TestClient(create_app(rp), base_url="http://127.0.0.1") as browser_rp, \
                httpx.Client(follow_redirects=False, timeout=10) as browser_idp:
            # The provider's roles claim (scope profile) names no role the account has.
            answer = _federated_sign_in(browser_rp, browser_idp, "/signin?next=/console/",
                                        "lead@example.com")
            assert answer.status_code == 401
        with rp.engine.connect() as connection:
            reason = connection.execute(text(
                "SELECT reason FROM audit_events WHERE action = 'signin.federated' "
                "ORDER BY seq DESC")).scalars().first()
        assert reason == "the provider's role claim grants none of the account's roles"

        # Give the person sales_manager at the provider: narrowed to it, and TOTP still asked
        # (the local account is an admin).
        with unit_of_work(provider, operator("admin")) as ctx:
            users.disable_user(ctx, "lead@example.com")
        make_person(provider, "lead2@example.com", "sales_manager")
        with unit_of_work(rp, operator("admin")) as ctx:
            users.disable_user(ctx, "lead@example.com")
        second = make_person(rp, "lead2@example.com", "admin", "sales_manager", team="east")
        with TestClient(create_app(rp), base_url="http://127.0.0.1") as browser_rp, \
                httpx.Client(follow_redirects=False, timeout=10) as browser_idp:
            totp_page = _federated_sign_in(browser_rp, browser_idp, "/signin?next=/console/",
                                           "lead2@example.com")
            assert totp_page.status_code == 200 and 'value="totp"' in totp_page.text
            done = browser_rp.post(form_action(totp_page.text), follow_redirects=False, data={
                "csrf": hidden(totp_page.text, "csrf"), "step": "totp",
                "code": second.code()})
            assert done.status_code == 303 and done.headers["location"] == "/console/"
        with rp.engine.connect() as connection:
            signed = connection.execute(text(
                "SELECT roles, fields FROM audit_events WHERE action = 'signin' "
                "ORDER BY seq DESC")).first()
        assert signed is not None
        assert signed.roles == '["sales_manager"]' and '"amr:otp"' in signed.fields
        assert local.id != second.id
    finally:
        rp.close()
