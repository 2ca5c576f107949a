"""Reading, verifying and exporting the audit log (security officers; also from the CLI).

Every operation here needs the `audit` read permission and is itself audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TextIO, TypeVar

from sqlalchemy import Select, func, select

from schema.context import RequestContext
from schema.ops import validation
from security import audit, audit_evidence, audit_ship, checkpoint_note
from security.authz import READ
from security.errors import BadUserInput
from storage.models import AuditEvent

OBJECT = "audit"
_Select = TypeVar("_Select", bound=Select)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    #: One of the roles the actor held (entries store them as a JSON list).
    role: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    #: One of the fields (or other details) an entry names.
    field: str | None = None
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
    statement = _filtered(statement, f)
    rows = list(ctx.session.scalars(statement.order_by(AuditEvent.seq).limit(size + 1)))
    # Who looked at the log is evidence too.
    ctx.audit("audit.read", object_type=OBJECT, fields=_described(f))
    return AuditPage(rows[:size], len(rows) > size)


def _described(f: AuditFilter) -> list[str]:
    return [f"{name}={value}" for name, value in vars(f).items() if value is not None]


def _filtered(statement: _Select, f: AuditFilter) -> _Select:
    for column, value in ((AuditEvent.actor, f.actor), (AuditEvent.action, f.action),
                          (AuditEvent.object_type, f.object_type),
                          (AuditEvent.decision, f.decision)):
        if value is not None:
            statement = statement.where(column == value)
    if f.object_id is not None:
        # ids are stored as a JSON list; a quoted match cannot hit a longer id by accident
        statement = statement.where(AuditEvent.object_ids.contains(f'"{f.object_id}"'))
    # Roles and fields are JSON lists too; a quoted match names one whole element.
    if f.role is not None:
        statement = statement.where(AuditEvent.roles.contains(f'"{f.role}"', autoescape=True))
    if f.field is not None:
        statement = statement.where(AuditEvent.fields.contains(f'"{f.field}"', autoescape=True))
    if f.since is not None:
        statement = statement.where(AuditEvent.ts >= f.since.astimezone(dt.UTC).isoformat())
    if f.until is not None:
        statement = statement.where(AuditEvent.ts < f.until.astimezone(dt.UTC).isoformat())
    return statement


def verify(ctx: RequestContext) -> audit.VerifyReport:
    ctx.guard.require(OBJECT, READ)
    return audit.verify(ctx.session, ctx.appliance.keyring)


def export(ctx: RequestContext, out: TextIO, *,
           filter: AuditFilter | None = None) -> audit_evidence.ExportSummary:
    """Write evidence for the selected entries (JSON lines, see `security.verify_standalone`).

    Entries are proven against the latest signed checkpoint; sign the log's end first, in its
    own short transaction (`audit.checkpoint_now`, as `enclave audit export` does), so that
    the newest entries are included. Selected entries beyond it are counted as `unsigned`."""
    ctx.guard.require(OBJECT, READ)
    f = filter or AuditFilter()
    latest = audit_evidence.latest_checkpoint(ctx.session)
    size = latest.seq if latest is not None else 0
    statement = _filtered(select(*audit.CANONICAL_COLUMNS), f)
    selected = list(ctx.session.execute(
        statement.where(AuditEvent.seq <= size).order_by(AuditEvent.seq)))
    unsigned = ctx.session.scalar(_filtered(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.seq > size), f)) or 0
    summary = audit_evidence.write_export(
        ctx.session, ctx.appliance.keyring, out, selected=selected,
        filters={name: value.isoformat() if isinstance(value, dt.datetime) else str(value)
                 for name, value in vars(f).items() if value is not None},
        exported_by=ctx.principal.actor, unsigned=unsigned)
    ctx.audit("audit.export", object_type=OBJECT,
              fields=[*_described(f), f"events={summary.events}",
                      f"tree_size={summary.tree_size}"])
    return summary


def compare_shipped(ctx: RequestContext, shipped: str) -> audit_ship.ShippedReport:
    """Compare the log with checkpoints shipped to a syslog/SIEM (its export, as text)."""
    ctx.guard.require(OBJECT, READ)
    report = audit_ship.compare_shipped(ctx.session, ctx.appliance.keyring, shipped)
    ctx.audit("audit.compare_shipped", object_type=OBJECT,
              fields=[f"verdict={report.verdict}", f"shipped={report.shipped}",
                      f"checked={report.checked}"])
    return report


def public_keys(ctx: RequestContext) -> list[checkpoint_note.PublicKey]:
    """The keys an offline verifier needs (public: no permission asked)."""
    return checkpoint_note.public_keys(ctx.appliance.keyring,
                                       checkpoint_note.appliance_origin(ctx.session))
