"""The per-request (or per-CLI-command) context: principal, session, guard, loaders.

Every operation runs inside `unit_of_work`. Reads and refusals the guard noted are written to the
audit log before the unit commits; if the operation fails, its changes roll back and its
refusals are still audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from security.audit import AuditEntry
from security.authz import READ
from security.guard import Guard
from security.principal import Principal
from security.unguarded import UnguardedGuard
from storage.models import Account

if TYPE_CHECKING:
    from schema.runtime import Appliance


class AccountLoader:
    """Loads the accounts behind many contacts in one query (no N+1)."""

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._pending: set[str] = set()
        self._loaded: dict[str, Account | None] = {}
        self.queries = 0

    def prime(self, account_ids: Iterable[str | None]) -> None:
        self._pending.update(i for i in account_ids if i and i not in self._loaded)

    def load(self, account_id: str) -> Account | None:
        if account_id not in self._loaded:
            ids = self._pending | {account_id}
            self._pending = set()
            self.queries += 1
            found = {a.id: a for a in self._ctx.session.scalars(
                select(Account).where(Account.id.in_(ids)))}
            for i in ids:
                row = found.get(i)
                visible = row is not None and self._ctx.guard.in_scope("account", row, READ)
                self._loaded[i] = row if visible else None
        return self._loaded[account_id]


class RequestContext:
    def __init__(self, appliance: Appliance, session: Session, principal: Principal,
                 request_id: str | None = None) -> None:
        self.appliance = appliance
        self.session = session
        self.principal = principal
        self.request_id = request_id
        policy = appliance.refresh(session)
        guard_class = UnguardedGuard if appliance.unguarded else Guard
        self.guard = guard_class(principal=principal, policy=policy, keyring=appliance.keyring,
                           session=session, request_id=request_id)
        self.accounts = AccountLoader(self)

    def audit(self, action: str, *, object_type: str | None = None,
              object_ids: Iterable[str] = (), fields: Iterable[str] = (),
              decision: str = "allow", reason: str | None = None) -> None:
        """Append an entry now, in this unit of work: it commits with the change it records."""
        self.appliance.append_audit(self.session, [AuditEntry(
            actor=self.principal.actor, roles=self.principal.roles, action=action,
            object_type=object_type, object_ids=list(object_ids), fields=list(fields),
            decision=decision, reason=reason, request_id=self.request_id,
        )])

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Run one mutation so that its failure undoes only its own writes."""
        with self.session.begin_nested():
            yield

    def finish(self) -> None:
        self.appliance.append_audit(self.session, self.guard.audit_entries())


@contextmanager
def unit_of_work(appliance: Appliance, principal: Principal,
                 request_id: str | None = None) -> Iterator[RequestContext]:
    session = appliance.sessions()
    try:
        session.begin()
        ctx = RequestContext(appliance, session, principal, request_id)
        try:
            yield ctx
            ctx.finish()
            session.commit()
        except BaseException:
            session.rollback()
            _audit_after_failure(appliance, session, ctx)
            raise
    finally:
        session.close()


def _audit_after_failure(appliance: Appliance, session: Session, ctx: Any) -> None:
    entries = ctx.guard.audit_entries()
    if entries:
        with session.begin():
            appliance.append_audit(session, entries)
