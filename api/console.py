"""The security officers' audit console: server-rendered pages under /console/.

    GET  /console/            the event stream, filtered and paged by query parameters
    GET  /console/person      "who saw this person": every read of one contact's fields
    GET  /console/anomalies   refusals, bursts of reads, reads outside working hours, bulk exports
    GET  /console/policy      the policy as a role x object x field table, and its history
    GET  /console/verify      the log's size and last signed checkpoint
    POST /console/verify      verify the whole log now (CSRF-protected form)
    POST /console/export      the selected entries as signed evidence (JSON lines, proofs)

Only a signed-in person (session cookie from /signin) holding `security_officer` or `auditor`
enters; anyone else gets 403, and nobody signed in is sent to /signin?next=... . Every page and
action is audited (`console.view`, `console.verify`, `console.export`, refusals as
`console.enter`), beside the entries the operations behind it write themselves.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.web import Page, form_or_refusal, message, respond, session_cookie, single_params
from schema.context import RequestContext, unit_of_work
from schema.ops import audit_log, audit_review, policies
from schema.ops import signin as signin_ops
from schema.runtime import Appliance
from security.audit import AuditEntry
from security.errors import BadUserInput, EnclaveError, Forbidden
from security.principal import Principal
from storage.models import AuditEvent

CONSOLE_ROLES = frozenset({"security_officer", "auditor"})
PAGE_SIZE = 50
FILTER_NAMES = ("actor", "role", "action", "object_type", "object_id", "field", "decision",
                "since", "until")
MAX_FILTER_CHARS = 200


@dataclass(frozen=True)
class Officer:
    principal: Principal
    email: str
    csrf: str


def _enter(appliance: Appliance, cookie: str | None, target: str,
           request_id: str) -> Officer | Page:
    """The officer behind the session cookie, or the page that turns them away."""
    with appliance.sessions() as db, db.begin():
        who = signin_ops.signed_in(appliance, db, cookie)
        if who is None or cookie is None:
            return Page(303, location="/signin?" + urlencode({"next": target}))
        principal = Principal(id=who.user.id, name=who.user.email, roles=who.roles,
                              team=who.user.team, kind="user", session_id=who.session_id)
        if not CONSOLE_ROLES & set(who.roles):
            appliance.append_audit(db, [AuditEntry(
                actor=principal.actor, roles=who.roles, action="console.enter",
                object_type="audit", fields=[f"path={target[:200]}"], decision="deny",
                reason="the console is for security_officer and auditor",
                request_id=request_id)])
            return message("Not for this account",
                           "The audit console is for security officers and auditors. This "
                           "refusal has been recorded.", status=403, link="/logout",
                           link_text="Sign out")
        return Officer(principal, who.user.email, signin_ops.csrf_token(cookie))


# -- filters ------------------------------------------------------------------------------------

def _when(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadUserInput(f"{name} must be a date and time like 2026-01-31T18:00",
                           field=name) from None
    try:
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError:
        raise BadUserInput(f"{name} is out of range", field=name) from None


def parse_filter(params: dict[str, str]) -> audit_log.AuditFilter:
    values: dict[str, Any] = {}
    for name in FILTER_NAMES:
        value = params.get(name, "").strip()
        if not value:
            continue
        if len(value) > MAX_FILTER_CHARS or '"' in value or any(ord(c) < 32 for c in value):
            raise BadUserInput(f"{name} is not a value any entry holds", field=name)
        if name == "decision" and value not in ("allow", "deny"):
            raise BadUserInput("decision is allow or deny", field=name)
        values[name] = _when(value, name) if name in ("since", "until") else value
    return audit_log.AuditFilter(**values)


def filter_params(f: audit_log.AuditFilter) -> dict[str, str]:
    """The filter as the form's fields (times as the datetime-local inputs want them)."""
    out: dict[str, str] = {}
    for item in fields(f):
        value = getattr(f, item.name)
        if isinstance(value, dt.datetime):
            out[item.name] = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")
        elif value is not None:
            out[item.name] = str(value)
    return out


def _event_view(row: AuditEvent) -> dict[str, Any]:
    ids = json.loads(row.object_ids)
    return {"seq": row.seq, "ts": row.ts, "when": row.ts[:19].replace("T", " "),
            "actor": row.actor, "roles": json.loads(row.roles), "action": row.action,
            "object_type": row.object_type or "", "object_ids": ids[:3],
            "more_ids": max(len(ids) - 3, 0), "fields": json.loads(row.fields),
            "decision": row.decision, "reason": row.reason or ""}


# -- pages --------------------------------------------------------------------------------------

def _audit(ctx: RequestContext, action: str, page: str, details: list[str] | None = None,
           **extra: Any) -> None:
    ctx.audit(action, object_type="audit", fields=[f"page={page}", *(details or [])], **extra)


def events_page(ctx: RequestContext, officer: Officer, params: dict[str, str]) -> Page:
    f = parse_filter(params)
    after = params.get("after") or None
    size = params.get("first", "")
    first = int(size) if size.isdigit() and len(size) < 4 else PAGE_SIZE
    result = audit_log.list_events(ctx, first=first, after=after, filter=f)
    chosen = filter_params(f)
    paging = {"first": str(first)} if first != PAGE_SIZE else {}
    _audit(ctx, "console.view", "events", [f"{k}={v}" for k, v in chosen.items()])
    next_link = None
    if result.has_next and result.items:
        next_link = "/console/?" + urlencode(
            {**chosen, **paging, "after": audit_log.encode_cursor(result.items[-1].seq)})
    return Page(200, "console/events.html", {
        "officer": officer, "nav": "events", "filter": chosen,
        "events": [_event_view(r) for r in result.items], "next_link": next_link,
        "first_link": "/console/?" + urlencode({**chosen, **paging}) if after else None,
        "export_fields": chosen})


def person_page(ctx: RequestContext, officer: Officer, params: dict[str, str]) -> Page:
    contact = params.get("contact", "").strip()
    if len(contact) > MAX_FILTER_CHARS or '"' in contact:
        raise BadUserInput("not a contact id", field="contact")
    seen = audit_review.who_saw(ctx, contact) if contact else None
    _audit(ctx, "console.view", "person", [f"contact={contact}"] if contact else [])
    return Page(200, "console/person.html", {
        "officer": officer, "nav": "person", "contact": contact, "seen": seen,
        "export_fields": {"action": "contact.read", "object_id": contact} if contact else None})


def anomalies_page(ctx: RequestContext, officer: Officer, params: dict[str, str]) -> Page:
    found = audit_review.anomalies(ctx)
    _audit(ctx, "console.view", "anomalies")
    s = ctx.appliance.settings
    return Page(200, "console/anomalies.html", {
        "officer": officer, "nav": "anomalies", "found": found,
        "refusals": [_event_view(r) for r in found.refusals],
        "off_hours": [_event_view(r) for r in found.off_hours],
        "bulk": [_event_view(r) for r in found.bulk],
        "thresholds": {"burst_reads": s.console_burst_reads,
                       "burst_minutes": s.console_burst_minutes,
                       "work_hours": s.console_work_hours, "bulk": s.console_bulk_records,
                       "days": s.console_window_days}})


def policy_page(ctx: RequestContext, officer: Officer, params: dict[str, str]) -> Page:
    rules = policies.list_rules(ctx)
    roles = sorted({r.role for r in rules})
    # object -> field -> role -> actions
    table: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for rule in rules:
        table[rule.object_type][rule.field][rule.role].append(rule.action)
    objects = [{"name": obj, "rows": [{"field": fld, "cells": [sorted(cells.get(r, []))
                                                               for r in roles]}
                                      for fld, cells in sorted(by_field.items())]}
               for obj, by_field in sorted(table.items())]
    history: list[AuditEvent] = []
    for action in ("policy.grant", "policy.revoke", "policy.defaults"):
        history += audit_log.list_events(
            ctx, first=100, filter=audit_log.AuditFilter(action=action)).items
    history.sort(key=lambda r: r.seq, reverse=True)
    _audit(ctx, "console.view", "policy", [f"rules={len(rules)}"])
    return Page(200, "console/policy.html", {
        "officer": officer, "nav": "policy", "roles": roles, "objects": objects,
        "history": [_event_view(r) for r in history]})


def verify_page(ctx: RequestContext, officer: Officer, params: dict[str, str], *,
                run: bool = False) -> Page:
    report = audit_log.verify(ctx) if run else None
    state = audit_review.state(ctx)
    if report is not None:
        _audit(ctx, "console.verify", "verify",
               [f"entries={report.entries}", f"ok={report.ok}",
                f"first_bad={report.first_bad_seq}"],
               decision="allow", reason=report.problem)
    else:
        _audit(ctx, "console.view", "verify")
    return Page(200, "console/verify.html", {"officer": officer, "nav": "verify",
                                             "state": state, "report": report})


# -- plumbing -----------------------------------------------------------------------------------

Handler = Callable[[RequestContext, Officer, dict[str, str]], Page]


def _run(appliance: Appliance, cookie: str | None, target: str, params: dict[str, str] | None,
         handler: Handler, request_id: str) -> Page:
    entered = _enter(appliance, cookie, target, request_id)
    if isinstance(entered, Page):
        return entered
    if params is None:
        return message("Request refused", "A parameter is repeated.", status=400)
    try:
        with unit_of_work(appliance, entered.principal, request_id) as ctx:
            return handler(ctx, entered, params)
    except BadUserInput as exc:
        return message("Request refused", exc.message, status=400, link="/console/",
                       link_text="Back to the console")
    except Forbidden:
        return message("Not permitted", "No policy lets this account do that; the refusal "
                       "has been recorded.", status=403)


def _csrf_refused(appliance: Appliance, officer: Officer, request_id: str, what: str) -> Page:
    with appliance.sessions() as db, db.begin():
        appliance.append_audit(db, [AuditEntry(
            actor=officer.principal.actor, roles=officer.principal.roles,
            action=f"console.{what}", object_type="audit", decision="deny",
            reason="CSRF token missing or wrong", request_id=request_id)])
    return message("Form refused", "The form could not be verified. Reload the page and try "
                   "again.", status=403)


def verify_post(appliance: Appliance, cookie: str | None, form: dict[str, str],
                request_id: str) -> Page:
    entered = _enter(appliance, cookie, "/console/verify", request_id)
    if isinstance(entered, Page):
        return entered
    if not signin_ops.csrf_ok(cookie, form.get("csrf")):
        return _csrf_refused(appliance, entered, request_id, "verify")
    return _run(appliance, cookie, "/console/verify", {},
                lambda ctx, officer, params: verify_page(ctx, officer, params, run=True),
                request_id)


def export_post(appliance: Appliance, cookie: str | None, form: dict[str, str],
                request_id: str) -> Page | tuple[str, str]:
    """The evidence file (name, JSON lines), or the page that refuses it."""
    entered = _enter(appliance, cookie, "/console/", request_id)
    if isinstance(entered, Page):
        return entered
    if not signin_ops.csrf_ok(cookie, form.get("csrf")):
        return _csrf_refused(appliance, entered, request_id, "export")
    try:
        f = parse_filter(form)
        with unit_of_work(appliance, entered.principal, request_id) as ctx:
            audit_review.sign_now(ctx)  # its own short unit: the export covers the newest
        out = io.StringIO()
        with unit_of_work(appliance, entered.principal, request_id) as ctx:
            summary = audit_log.export(ctx, out, filter=f)
            _audit(ctx, "console.export", "export",
                   [*(f"{k}={v}" for k, v in filter_params(f).items()),
                    f"events={summary.events}", f"tree_size={summary.tree_size}"])
    except BadUserInput as exc:
        return message("Request refused", exc.message, status=400)
    except Forbidden:
        return message("Not permitted", "No policy lets this account export the log.",
                       status=403)
    except EnclaveError as exc:
        return message("Export refused", exc.message if exc.public else
                       "The log could not be exported: verify it first.", status=409)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"enclave-evidence-{stamp}.jsonl", out.getvalue()


def routes(appliance: Appliance) -> list[Route]:
    settings = appliance.settings

    def page_route(handler: Handler) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            page = await run_in_threadpool(_run, appliance, session_cookie(request, settings),
                                           target, single_params(request.url.query), handler,
                                           uuid.uuid4().hex)
            return respond(page, settings)
        return endpoint

    async def verify_endpoint(request: Request) -> Response:
        if request.method == "GET":
            return await page_route(verify_page)(request)  # type: ignore[no-any-return]
        form = await form_or_refusal(request, settings)
        if isinstance(form, Response):
            return form
        page = await run_in_threadpool(verify_post, appliance,
                                       session_cookie(request, settings), form,
                                       uuid.uuid4().hex)
        return respond(page, settings)

    async def export_endpoint(request: Request) -> Response:
        form = await form_or_refusal(request, settings)
        if isinstance(form, Response):
            return form
        got = await run_in_threadpool(export_post, appliance, session_cookie(request, settings),
                                      form, uuid.uuid4().hex)
        if isinstance(got, Page):
            return respond(got, settings)
        name, body = got
        return Response(body, media_type="application/jsonl", headers={
            "content-disposition": f'attachment; filename="{name}"'})

    async def bare(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=308)

    return [
        Route("/console", bare, methods=["GET"]),
        Route("/console/", page_route(events_page), methods=["GET"]),
        Route("/console/person", page_route(person_page), methods=["GET"]),
        Route("/console/anomalies", page_route(anomalies_page), methods=["GET"]),
        Route("/console/policy", page_route(policy_page), methods=["GET"]),
        Route("/console/verify", verify_endpoint, methods=["GET", "POST"]),
        Route("/console/export", export_endpoint, methods=["POST"]),
    ]
