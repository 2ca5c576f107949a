"""Helpers for the console tests: people, a contact someone read, and signing in at /signin."""

from __future__ import annotations

from typing import Any

from conftest import operator
from signin_support import Person, form_action, hidden, make_person

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance

TEAM = "east"


def seed_contact(appliance: Appliance, *, reads: int = 2) -> str:
    """A contact created by a sales manager and read `reads` times (email and phone)."""
    manager = operator("sales_manager", team=TEAM, id="mgr-east")
    with unit_of_work(appliance, manager) as ctx:
        contact = contact_ops.create_contact(ctx, {
            "last_name": "Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"})
        contact_id = contact.id
    for _ in range(reads):
        with unit_of_work(appliance, manager) as ctx:
            row = contact_ops.get_contact(ctx, contact_id)
            ctx.guard.reveal("contact", row, "email")
            ctx.guard.reveal("contact", row, "phone")
    return contact_id


def people(appliance: Appliance) -> dict[str, Person]:
    return {
        "officer": make_person(appliance, "olga@example.com", "security_officer"),
        "auditor": make_person(appliance, "aud@example.com", "auditor"),
        "rep": make_person(appliance, "rep@example.com", "sales_rep", team=TEAM),
        "admin": make_person(appliance, "adm@example.com", "admin"),
    }


def sign_in(http: Any, person: Person, target: str = "/console/") -> Any:
    """Sign in at /signin?next=target with password (and TOTP when enrolled); the last answer."""
    page = http.get("/signin", params={"next": target})
    assert page.status_code == 200, page.text
    answer = http.post(form_action(page.text), data={
        "csrf": hidden(page.text, "csrf"), "step": "password", "email": person.email,
        "password": person.password}, follow_redirects=False)
    if answer.status_code == 200 and 'name="step" value="totp"' in answer.text:
        answer = http.post(form_action(answer.text), data={
            "csrf": hidden(answer.text, "csrf"), "step": "totp", "code": person.code()},
            follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer
