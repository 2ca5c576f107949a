"""Reading and verifying the audit log (security officers; verification also from the CLI)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from schema.context import RequestContext
from schema.ops import validation
from security import audit
from security.authz import READ
from security.errors import BadUserInput
from storage.models import AuditEvent

OBJECT = "audit"


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    decision: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEvent]
    has_next: bool


def encode_cursor(seq: int) -> str:
    return validation.encode_cursor(str(seq))


def list_events(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
                filter: AuditFilter | None = None) -> AuditPage:
    ctx.guard.require(OBJECT, READ)
    size = validation.page_size(first)
    statement = select(AuditEvent)
    after_value = validation.decode_cursor(after)
    if after_value is not None:
        if not after_value.isdigit():
            raise BadUserInput("after is not a cursor this API gave out", field="after")
        statement = statement.where(AuditEvent.seq > int(after_value))
    f = filter or AuditFilter()
    for column, value in ((AuditEvent.actor, f.actor), (AuditEvent.action, f.action),
                          (AuditEvent.object_type, f.object_type),
                          (AuditEvent.decision, f.decision)):
        if value is not None:
            statement = statement.where(column == value)
    if f.object_id is not None:
        # ids are stored as a JSON list; a quoted match cannot hit a longer id by accident
        statement = statement.where(AuditEvent.object_ids.contains(f'"{f.object_id}"'))
    if f.since is not None:
        statement = statement.where(AuditEvent.ts >= f.since.astimezone(dt.UTC).isoformat())
    if f.until is not None:
        statement = statement.where(AuditEvent.ts < f.until.astimezone(dt.UTC).isoformat())
    rows = list(ctx.session.scalars(statement.order_by(AuditEvent.seq).limit(size + 1)))
    # Who looked at the log is evidence too.
    ctx.audit("audit.read", object_type=OBJECT,
              fields=[f"{name}={value}" for name, value in vars(f).items() if value is not None])
    return AuditPage(rows[:size], len(rows) > size)


def verify(ctx: RequestContext) -> audit.VerifyReport:
    ctx.guard.require(OBJECT, READ)
    return audit.verify(ctx.session, ctx.appliance.keyring)
