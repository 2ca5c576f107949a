"""What the audit console shows beyond the raw stream: who saw a person, refusals and
anomalies, the log's state. Each needs the `audit` read permission and is itself audited.

Anomalies are found over the last `console_window_days` of the log (Settings, from
ENCLAVE_CONSOLE_* variables): bursts (one actor reading more than `console_burst_reads`
records within `console_burst_minutes`), reads outside `console_work_hours` (UTC), and bulk
exports (an export action, or one read naming at least `console_bulk_records` records).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from schema.context import RequestContext
from security import audit
from security.authz import READ
from storage.models import AuditCheckpoint, AuditEvent

OBJECT = "audit"
#: At most this many entries are scanned or listed on one page.
SCAN_LIMIT = 20_000
LIST_LIMIT = 500


@dataclass(frozen=True)
class Seen:
    seq: int
    ts: str
    actor: str
    roles: list[str]
    fields: list[str]
    #: How many records the same entry names (a list read names them all).
    records: int
    request_id: str | None


@dataclass(frozen=True)
class Burst:
    actor: str
    start: str
    end: str
    records: int


@dataclass
class Anomalies:
    since: str
    refusals: list[AuditEvent] = field(default_factory=list)
    bursts: list[Burst] = field(default_factory=list)
    off_hours: list[AuditEvent] = field(default_factory=list)
    bulk: list[AuditEvent] = field(default_factory=list)
    scanned: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class LogState:
    size: int
    checkpoint_seq: int | None
    checkpoint_ts: str | None
    checkpoint_root: str | None
    checkpoint_key_version: int | None


def _ids(row: AuditEvent) -> list[str]:
    return list(json.loads(row.object_ids))


def who_saw(ctx: RequestContext, contact_id: str) -> list[Seen]:
    """Every allowed read of one contact's fields, newest first (at most LIST_LIMIT)."""
    ctx.guard.require(OBJECT, READ)
    rows = ctx.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "contact.read",
                                 AuditEvent.object_ids.contains(f'"{contact_id}"',
                                                                autoescape=True))
        .order_by(AuditEvent.seq.desc()).limit(LIST_LIMIT))
    seen = [Seen(r.seq, r.ts, r.actor, json.loads(r.roles), json.loads(r.fields),
                 len(_ids(r)), r.request_id) for r in rows]
    ctx.audit("audit.who_saw", object_type=OBJECT, object_ids=[contact_id],
              fields=[f"reads={len(seen)}"])
    return seen


def anomalies(ctx: RequestContext, *, now: dt.datetime | None = None) -> Anomalies:
    ctx.guard.require(OBJECT, READ)
    settings = ctx.appliance.settings
    now = now or dt.datetime.now(dt.UTC)
    since = (now - dt.timedelta(days=settings.console_window_days)).isoformat()
    found = Anomalies(since=since)
    found.refusals = list(ctx.session.scalars(
        select(AuditEvent).where(AuditEvent.decision == "deny", AuditEvent.ts >= since)
        .order_by(AuditEvent.seq.desc()).limit(LIST_LIMIT)))
    reads = list(ctx.session.scalars(
        select(AuditEvent).where(AuditEvent.ts >= since, AuditEvent.decision == "allow",
                                 or_(AuditEvent.action.like("%.read"),
                                     AuditEvent.action.like("%.export")))
        .order_by(AuditEvent.seq).limit(SCAN_LIMIT + 1)))
    found.truncated = len(reads) > SCAN_LIMIT
    reads = reads[:SCAN_LIMIT]
    found.scanned = len(reads)
    window = dt.timedelta(minutes=settings.console_burst_minutes)
    start_hour, end_hour = settings.console_work_hours
    recent: dict[str, deque[tuple[dt.datetime, int, str]]] = defaultdict(deque)
    in_burst: dict[str, Burst] = {}
    for row in reads:
        if row.action.endswith(".export") or (
                row.action.endswith(".read") and len(_ids(row)) >= settings.console_bulk_records):
            found.bulk.append(row)
        if row.action == "audit.read":
            continue  # officers reading the log are not reading people's data
        when = dt.datetime.fromisoformat(row.ts)
        if not start_hour <= when.hour < end_hour:
            found.off_hours.append(row)
        queue = recent[row.actor]
        queue.append((when, len(_ids(row)), row.ts))
        while queue and queue[0][0] <= when - window:
            queue.popleft()
        total = sum(n for _, n, _ in queue)
        if total > settings.console_burst_reads:
            burst = in_burst.get(row.actor)
            if burst is not None and burst.end >= queue[0][2]:  # the same burst goes on
                in_burst[row.actor] = Burst(row.actor, burst.start, row.ts,
                                            max(burst.records, total))
            else:
                if burst is not None:
                    found.bursts.append(burst)
                in_burst[row.actor] = Burst(row.actor, queue[0][2], row.ts, total)
    found.bursts.extend(in_burst.values())
    found.bursts.sort(key=lambda b: b.start, reverse=True)
    found.off_hours.reverse()
    found.bulk.reverse()
    del found.off_hours[LIST_LIMIT:]
    del found.bulk[LIST_LIMIT:]
    ctx.audit("audit.anomalies", object_type=OBJECT,
              fields=[f"since={since}", f"scanned={found.scanned}",
                      f"bursts={len(found.bursts)}", f"off_hours={len(found.off_hours)}",
                      f"bulk={len(found.bulk)}", f"refusals={len(found.refusals)}"])
    return found


def state(ctx: RequestContext) -> LogState:
    """The log's size and its latest signed checkpoint (no verification)."""
    ctx.guard.require(OBJECT, READ)
    size = audit.count(ctx.session)
    latest = ctx.session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc())
                                .limit(1))
    if latest is None:
        return LogState(size, None, None, None, None)
    return LogState(size, latest.seq, latest.ts, latest.hash, latest.key_version)


def sign_now(ctx: RequestContext) -> int | None:
    """Sign the log's current end (before an export, so that it covers the newest entries);
    the sequence number signed, or None if it already was. Run it in its own short unit."""
    ctx.guard.require(OBJECT, READ)
    signed = audit.checkpoint_now(ctx.session, ctx.appliance.keyring,
                                  checkpoint_every=ctx.appliance.settings.audit_checkpoint_every)
    return signed.seq if signed is not None else None
