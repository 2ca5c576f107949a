"""The per-request (or per-CLI-command) context: principal, session, guard, loaders.

Every operation runs inside `unit_of_work`. Reads and refusals the guard noted are written to the
audit log before the unit commits; if the operation fails, its changes roll back and its
refusals are still audited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.pending_audit import PendingAudit
from security.audit import AuditEntry
from security.authz import READ
from security.guard import Guard
from security.principal import Principal
from security.unguarded import UnguardedGuard
from storage.models import MODELS

if TYPE_CHECKING:
    from schema.runtime import Appliance


@dataclass(frozen=True)
class RecordEvent:
    #: created, updated or deleted
    event: str
    object_type: str
    record_id: str


#: Called with (context, events) before a unit of work commits (the webhooks register one).
EVENT_SINKS: list[Callable[[RequestContext, list[RecordEvent]], None]] = []


class RecordLoader:
    """Loads the records of one object type that many others refer to, in one query (no N+1);
    a record outside the caller's read scope loads as None."""

    def __init__(self, ctx: RequestContext, object_type: str = "account") -> None:
        # The context's session and guard, not the context, which holds this loader: a
        # cycle would leave the whole unit (its session, every record it loaded) to the
        # garbage collector instead of freeing it when the request ends.
        self._session = ctx.session
        self._guard = ctx.guard
        self._object_type = object_type
        self._model = MODELS[object_type]
        self._pending: set[str] = set()
        self._loaded: dict[str, Any] = {}
        self.queries = 0

    def prime(self, account_ids: Iterable[str | None]) -> None:
        self._pending.update(i for i in account_ids if i and i not in self._loaded)

    def forget(self) -> None:
        """Drop the records loaded: the unit of work has ended."""
        self._pending.clear()
        self._loaded.clear()

    def load(self, record_id: str) -> Any:
        if record_id not in self._loaded:
            ids = self._pending | {record_id}
            self._pending = set()
            self.queries += 1
            model = self._model
            found = {a.id: a for a in self._session.scalars(
                select(model).where(model.id.in_(ids)))}
            for i in ids:
                row = found.get(i)
                visible = row is not None and self._guard.in_scope(self._object_type, row, READ)
                self._loaded[i] = row if visible else None
            self._guard.preload(r for r in self._loaded.values() if r is not None)
        return self._loaded[record_id]


AccountLoader = RecordLoader


class RequestContext:
    def __init__(self, appliance: Appliance, session: Session, principal: Principal,
                 request_id: str | None = None,
                 versions: Mapping[str, str | None] | None = None) -> None:
        self.appliance = appliance
        self.session = session
        self.principal = principal
        self.request_id = request_id
        policy = appliance.refresh(session, versions)
        guard_class = UnguardedGuard if appliance.unguarded else Guard
        self.guard = guard_class(principal=principal, policy=policy, keyring=appliance.keyring,
                           session=session, request_id=request_id)
        self._loaders: dict[str, RecordLoader] = {}
        #: Set by a unit that only read (a compiled query): its read entries are appended by
        #: the appliance's group appender after the unit commits, and the unit returns only
        #: once they are durable (security.audit_group).
        self.defer_read_audit = False
        self.deferred_audit: list[AuditEntry] = []
        #: Entries recorded by `audit`, appended by `finish` in this unit's transaction (a
        #: savepoint rolled back takes its entries with it).
        self.pending_audit = PendingAudit(session)
        #: Record events of this unit of work (created/updated/deleted), for the webhooks.
        self.events: list[RecordEvent] = []
        self.accounts = self.loader("account")

    def end(self) -> None:
        """The unit of work has ended: drop the records and keys it holds, in case this
        context outlives it (see `Guard.forget`)."""
        for loader in self._loaders.values():
            loader.forget()
        self.guard.forget()

    def loader(self, object_type: str) -> RecordLoader:
        """The request's loader for records of `object_type` referred to by others."""
        found = self._loaders.get(object_type)
        if found is None:
            found = self._loaders[object_type] = RecordLoader(self, object_type)
        return found

    def emit(self, event: str, object_type: str, record_id: str) -> None:
        """Note a record event; `finish` hands the unit's events to the event sinks, in the
        same transaction as the change."""
        self.events.append(RecordEvent(event, object_type, record_id))

    def audit(self, action: str, *, object_type: str | None = None,
              object_ids: Iterable[str] = (), fields: Iterable[str] = (),
              decision: str = "allow", reason: str | None = None) -> None:
        """Record an entry of this unit of work. `finish` appends it, in the unit's
        transaction, so it commits with the change it records; appending there rather than
        now means the log's head row (which every writer of every worker waits on) is locked
        only from that append to the commit, not for the rest of the request."""
        self.pending_audit.entries.append(AuditEntry(
            actor=self.principal.actor, roles=self.principal.roles, action=action,
            object_type=object_type, object_ids=list(object_ids), fields=list(fields),
            decision=decision, reason=reason, request_id=self.request_id,
        ))

    def record(self, entries: Iterable[AuditEntry]) -> None:
        """Record entries built elsewhere (what a webhook's payload read, under its owning
        client's name), in order with the unit's own: `finish` appends them."""
        self.pending_audit.entries.extend(entries)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Run one mutation so that its failure undoes only its own writes (and its record
        events: what was undone is not announced to webhooks)."""
        events = len(self.events)
        try:
            with self.session.begin_nested():
                yield
        except BaseException:
            del self.events[events:]
            raise

    def finish(self) -> None:
        if self.events:
            for sink in EVENT_SINKS:
                sink(self, self.events)
            self.events = []
        entries = self.guard.audit_entries()
        recorded = self.pending_audit.take()
        if self.defer_read_audit and not recorded and not self.session.new \
                and not self.session.dirty and not self.session.deleted:
            self.deferred_audit = entries
            return
        # The unit's own entries first, in the order recorded, then what the guard noted.
        self.appliance.append_audit(self.session, [*recorded, *entries])


#: `session.info` key: (client id, active) as read by the unit's first statement (see
#: `unit_of_work`'s `prelude`), so the API's revocation check needs no query of its own.
CLIENT_ACTIVE = "enclave.prelude.client_active"
#: `session.info` key: whether any webhook was active when the unit's first statement ran
#: (False: the webhook sink has nothing to queue and does not look again; absent: it looks).
WEBHOOKS_ACTIVE = "enclave.prelude.webhooks_active"


@contextmanager
def unit_of_work(appliance: Appliance, principal: Principal, request_id: str | None = None,
                 *, prelude: Callable[[Session], Mapping[str, str | None]] | None = None,
                 ) -> Iterator[RequestContext]:
    """One transaction. `prelude`, when given, is the unit's first statement: it returns the
    settings rows `Appliance.refresh` reads (keys and policy versions), read along with
    whatever else the caller needs first, in one round trip."""
    session = appliance.sessions()
    try:
        session.begin()
        versions = prelude(session) if prelude is not None else None
        ctx = RequestContext(appliance, session, principal, request_id, versions)
        try:
            yield ctx
            ctx.finish()
            session.commit()
            if ctx.deferred_audit:  # durable before the unit returns, or the unit fails
                entries, ctx.deferred_audit = ctx.deferred_audit, []
                appliance.audit_group.append(entries)
        except BaseException:
            session.rollback()
            _audit_after_failure(appliance, session, ctx)
            raise
        finally:
            ctx.end()
    finally:
        session.close()


def _audit_after_failure(appliance: Appliance, session: Session, ctx: Any) -> None:
    entries = ctx.guard.audit_entries()
    if entries:
        with session.begin():
            appliance.append_audit(session, entries)
