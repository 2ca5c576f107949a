"""Helpers for the sign-in tests: people, web clients, PKCE, and a browser that fills forms."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from conftest import operator
from starlette.testclient import TestClient

from schema.context import unit_of_work
from schema.ops import users, web_clients
from schema.runtime import Appliance
from security import totp

PASSWORD = "correct horse battery staple"
REDIRECT = "https://app.example.com/callback"


@dataclass
class Person:
    id: str
    email: str
    password: str
    totp_secret: str | None

    def code(self, offset: int = 0) -> str:
        assert self.totp_secret is not None
        return totp.code_at(self.totp_secret, totp.current_step() + offset)


def make_person(appliance: Appliance, email: str, *roles: str, team: str | None = None,
                password: str = PASSWORD, with_totp: bool = False) -> Person:
    with unit_of_work(appliance, operator("admin")) as ctx:
        made = users.create_user(ctx, email=email, roles=list(roles), team=team,
                                 password=password, with_totp=with_totp)
        return Person(made.user.id, made.user.email, password,
                      made.totp.secret if made.totp else None)


def make_web_client(appliance: Appliance, *, public: bool = False,
                    redirect_uri: str = REDIRECT, name: str = "Sales app") -> tuple[str, str | None]:
    with unit_of_work(appliance, operator("admin")) as ctx:
        issued = web_clients.create_web_client(ctx, name=name, redirect_uris=[redirect_uri],
                                               public=public)
        return issued.client.id, issued.secret


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hidden(page: str, name: str) -> str | None:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else None


def form_action(page: str) -> str:
    found = re.search(r'<form method="post" action="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Flow:
    """One authorization request: the client's side of the code flow."""

    client_id: str
    verifier: str
    challenge: str
    state: str
    nonce: str
    redirect_uri: str = REDIRECT
    scope: str = "openid email profile"

    @classmethod
    def new(cls, client_id: str, **overrides: Any) -> Flow:
        verifier, challenge = pkce()
        values: dict[str, Any] = {"client_id": client_id, "verifier": verifier,
                                  "challenge": challenge, "state": secrets.token_urlsafe(8),
                                  "nonce": secrets.token_urlsafe(8)}
        values.update(overrides)
        return cls(**values)

    def params(self, **extra: str | None) -> dict[str, str]:
        params = {"response_type": "code", "client_id": self.client_id,
                  "redirect_uri": self.redirect_uri, "scope": self.scope, "state": self.state,
                  "nonce": self.nonce, "code_challenge": self.challenge,
                  "code_challenge_method": "S256"}
        params.update(extra)  # type: ignore[arg-type]
        return {k: v for k, v in params.items() if v is not None}

    def url(self, **extra: str | None) -> str:
        return "/oauth/authorize?" + urlencode(self.params(**extra))


def sign_in(http: TestClient, flow: Flow, person: Person, *, totp_offset: int = 0) -> Any:
    """Open the authorization URL, fill in the forms; returns the last response. (A browser
    that is already signed in gets its code at once.)"""
    page = http.get(flow.url(), follow_redirects=False)
    if page.status_code == 302:
        return page
    assert page.status_code == 200, page.text
    answer = http.post(form_action(page.text), data={
        "csrf": hidden(page.text, "csrf"), "step": "password", "email": person.email,
        "password": person.password}, follow_redirects=False)
    if answer.status_code == 200 and 'name="step" value="totp"' in answer.text:
        answer = http.post(form_action(answer.text), data={
            "csrf": hidden(answer.text, "csrf"), "step": "totp",
            "code": person.code(totp_offset)}, follow_redirects=False)
    return answer


def code_from(answer: Any, flow: Flow) -> str:
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(flow.redirect_uri + "?"), location
    params = query_of(location)
    assert params["state"] == flow.state
    return params["code"]


def redeem(http: TestClient, flow: Flow, code: str, secret: str | None, *,
           verifier: str | None = None) -> Any:
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.verifier if verifier is None else verifier}
    if secret is None:
        data["client_id"] = flow.client_id
        return http.post("/oauth/token", data=data)
    return http.post("/oauth/token", data=data, auth=(flow.client_id, secret))
