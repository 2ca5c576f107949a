"""The audit console over HTTP (TestClient), on SQLite and PostgreSQL: who may enter, what each
page shows, CSRF on its forms, the Content-Security-Policy, assets served from the package."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import operator
from console_support import people, seed_contact, sign_in
from signin_support import hidden
from sqlalchemy import text
from starlette.testclient import TestClient

from api.app import create_app
from schema.context import unit_of_work
from schema.ops import audit_log, audit_review, policies
from schema.runtime import Appliance
from security.authz import Rule
from security.config import Settings
from security.errors import ConfigurationError, Forbidden

STATIC = Path(__file__).resolve().parent.parent / "api" / "static"
PAGES = ("/console/", "/console/person", "/console/anomalies", "/console/policy",
         "/console/verify")


def audit_actions(appliance: Appliance, prefix: str) -> list[Any]:
    with appliance.engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT actor, action, decision, fields, reason FROM audit_events "
            "WHERE action LIKE :a ORDER BY seq"), {"a": prefix + "%"}))


def browser(appliance: Appliance) -> TestClient:
    return TestClient(create_app(appliance), base_url="http://127.0.0.1")


def test_only_officers_and_auditors_enter(appliance: Appliance, http: TestClient) -> None:
    who = people(appliance)
    # Nobody signed in: sent to sign in, and back here afterwards.
    for path in PAGES:
        answer = http.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/signin?next=%2Fconsole%2F")
    assert http.post("/console/verify", data={"csrf": "x"},
                     follow_redirects=False).status_code == 303
    for name in ("rep", "admin"):
        with browser(appliance) as client:
            sign_in(client, who[name])
            for path in PAGES:
                answer = client.get(path)
                assert answer.status_code == 403, path
                assert "security officers and auditors" in answer.text
            export = client.post("/console/export", data={"csrf": "x"})
            assert export.status_code == 403
    refused = [r for r in audit_actions(appliance, "console.enter") if r.decision == "deny"]
    assert len(refused) == 2 * (len(PAGES) + 1)
    for name in ("officer", "auditor"):
        with browser(appliance) as client:
            assert sign_in(client, who[name]).headers["location"] == "/console/"
            for path in PAGES:
                answer = client.get(path)
                assert answer.status_code == 200, (path, answer.text)
                assert who[name].email in answer.text
    views = audit_actions(appliance, "console.view")
    assert len(views) == 2 * len(PAGES)
    assert {json.loads(r.fields)[0] for r in views} == {
        "page=events", "page=person", "page=anomalies", "page=policy", "page=verify"}


def test_pages_show_events_reads_anomalies_policy(appliance: Appliance) -> None:
    contact = seed_contact(appliance, reads=3)
    who = people(appliance)
    with unit_of_work(appliance, operator("admin")) as ctx:
        policies.grant(ctx, Rule("support_agent", "contact", "title", "read"))
    with browser(appliance) as client:
        sign_in(client, who["officer"])
        page = client.get("/console/", params={"action": "contact.read"})
        assert page.status_code == 200
        assert page.text.count('<tr class="allow">') == 3
        assert "user.create" not in page.text
        page = client.get("/console/", params={"role": "sales_manager", "field": "phone"})
        assert page.text.count('<tr class="allow">') == 4  # the create and three reads
        assert client.get("/console/", params={"role": "sales_rep", "action": "contact.read"}
                          ).text.count('<tr class="allow">') == 0
        page = client.get("/console/", params={"decision": "maybe"})
        assert page.status_code == 400
        assert client.get("/console/", params={"since": "yesterday"}).status_code == 400
        assert client.get("/console/?actor=a&actor=b").status_code == 400
        # Paging (50 a page unless `first` says otherwise): the next link keeps the filters.
        page = client.get("/console/", params={"first": "2", "action": "contact.read"})
        assert page.text.count('<tr class="allow">') == 2
        nxt = re.search(r'href="([^"]*)" rel="next"', page.text)
        assert nxt is not None
        rest = client.get(nxt.group(1).replace("&amp;", "&"))
        assert rest.text.count('<tr class="allow">') == 1 and 'rel="next"' not in rest.text
        assert client.get("/console/", params={"first": "500"}).status_code == 400

        seen = client.get("/console/person", params={"contact": contact})
        assert seen.status_code == 200
        assert seen.text.count("operator:mgr-east") == 3
        assert "email, phone" in seen.text
        nobody = client.get("/console/person", params={"contact": "c-unknown"})
        assert "Nobody has read" in nobody.text

        anomalies = client.get("/console/anomalies")
        assert "Refusals" in anomalies.text and "signin" not in anomalies.text
        policy = client.get("/console/policy")
        assert "<th>security_officer</th>" in policy.text and "<h2>audit</h2>" in policy.text
        assert '<th scope="row">class:restricted</th>' in policy.text
        assert "Change history" in policy.text and "policy.grant" in policy.text
        assert "support_agent|contact|title|read" in policy.text
    with appliance.engine.connect() as connection:
        filters = connection.execute(text(
            "SELECT fields FROM audit_events WHERE action = 'console.view' "
            "AND fields LIKE '%role=sales_manager%'")).scalar_one()
    assert "field=phone" in filters
    assert audit_actions(appliance, "audit.who_saw")


def test_verify_form_needs_its_csrf_token_and_is_audited(appliance: Appliance) -> None:
    who = people(appliance)
    with browser(appliance) as client:
        sign_in(client, who["auditor"])
        page = client.get("/console/verify")
        assert page.status_code == 200 and "Entries in the log" in page.text
        csrf = hidden(page.text, "csrf")
        assert csrf
        for wrong in ({"other": "1"}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}):
            refused = client.post("/console/verify", data=wrong)
            assert refused.status_code == 403
            assert "The log verifies" not in refused.text
        done = client.post("/console/verify", data={"csrf": csrf})
        assert done.status_code == 200, done.text
        assert "The log verifies" in done.text
    assert [r.decision for r in audit_actions(appliance, "console.verify")] == \
        ["deny", "deny", "deny", "allow"]
    # Another browser's session has another token.
    with browser(appliance) as other:
        sign_in(other, who["officer"])
        assert other.post("/console/verify", data={"csrf": csrf}).status_code == 403


def test_export_downloads_signed_evidence(appliance: Appliance) -> None:
    contact = seed_contact(appliance, reads=2)
    who = people(appliance)
    with browser(appliance) as client:
        sign_in(client, who["officer"])
        page = client.get("/console/person", params={"contact": contact})
        csrf = hidden(page.text, "csrf")
        assert client.post("/console/export", data={"action": "contact.read",
                                                    "object_id": contact}).status_code == 403
        answer = client.post("/console/export", data={"csrf": csrf, "action": "contact.read",
                                                      "object_id": contact})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-disposition"].startswith(
            'attachment; filename="enclave-evidence-')
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert lines[0]["events"] == 2
        assert lines[0]["filters"] == {"action": "contact.read", "object_id": contact}
    exports = audit_actions(appliance, "console.export")
    assert [r.decision for r in exports] == ["deny", "allow"]
    assert "events=2" in exports[-1].fields


def test_pages_carry_a_strict_csp_and_assets_come_from_the_package(
        appliance: Appliance) -> None:
    who = people(appliance)
    with browser(appliance) as client:
        sign_in(client, who["officer"])
        for path in PAGES:
            page = client.get(path)
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert "<style" not in page.text and " style=" not in page.text
            for script in re.findall(r"<script[^>]*>", page.text):
                assert 'src="/static/' in script
            for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
                assert url.startswith("/"), url  # nothing from another host
        for asset in ("console.css", "console.js"):
            served = client.get(f"/static/{asset}")
            assert served.status_code == 200
            assert served.content == (STATIC / asset).read_bytes()
        assert "http" not in (STATIC / "console.css").read_text()


def test_console_thresholds_come_from_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env({"ENCLAVE_DATA_DIR": str(tmp_path), "ENCLAVE_CONSOLE_BURST_READS": "9",
                           "ENCLAVE_CONSOLE_WORK_HOURS": "8-18"})
    assert (s.console_burst_reads, s.console_work_hours) == (9, (8, 18))
    for bad in ({"ENCLAVE_CONSOLE_WORK_HOURS": "18-8"}, {"ENCLAVE_CONSOLE_BURST_READS": "x"},
                {"ENCLAVE_CONSOLE_WINDOW_DAYS": "0"}):
        with pytest.raises(ConfigurationError):
            Settings.from_env({"ENCLAVE_DATA_DIR": str(tmp_path), **bad})


def test_anomalies_find_bursts_off_hours_reads_and_bulk_exports(appliance: Appliance) -> None:
    contact = seed_contact(appliance, reads=3)
    hour = dt.datetime.now(dt.UTC).hour
    # Work hours that leave this hour and the next off, so the test may cross an hour boundary.
    outside = (hour + 2, 24) if hour <= 21 else (0, 22) if hour == 22 else (1, 23)
    appliance.settings = dataclasses.replace(
        appliance.settings, console_burst_reads=2, console_burst_minutes=5,
        console_work_hours=outside, console_bulk_records=5)
    with unit_of_work(appliance, operator("sales_manager", team="east", id="mgr-east")) as ctx:
        ctx.guard.refuse("contact", [contact], ["national_id"], "test refusal")
    with unit_of_work(appliance, operator("security_officer")) as ctx:
        audit_log.export(ctx, io.StringIO())
    with unit_of_work(appliance, operator("security_officer")) as ctx:
        found = audit_review.anomalies(ctx)
    assert [(b.actor, b.records) for b in found.bursts] == [("operator:mgr-east", 3)]
    # newest first; the export counts too
    assert [r.action for r in found.off_hours] == ["audit.export"] + ["contact.read"] * 3
    assert [r.action for r in found.bulk] == ["audit.export"]
    assert [r.reason for r in found.refusals] == ["test refusal"]
    with unit_of_work(appliance, operator("sales_rep", team="east")) as ctx, \
            pytest.raises(Forbidden):
        audit_review.anomalies(ctx)
    # Within working hours and under the thresholds, nothing stands out.
    appliance.settings = dataclasses.replace(appliance.settings, console_burst_reads=50,
                                             console_work_hours=(0, 24))
    with unit_of_work(appliance, operator("auditor")) as ctx:
        quiet = audit_review.anomalies(ctx)
    assert quiet.bursts == [] and quiet.off_hours == []
    assert [r.action for r in audit_actions(appliance, "audit.anomalies")] == \
        ["audit.anomalies"] * 2
