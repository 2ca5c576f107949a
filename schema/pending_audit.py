"""The audit entries a unit of work has recorded and not yet appended, kept in step with its
savepoints.

A unit of work appends its own entries as it finishes, just before it commits (see
`RequestContext.audit`), so an entry recorded inside a savepoint that is later rolled back
must go with the change it records. Savepoints are opened by `RequestContext.savepoint`, by
operations themselves (`Session.begin_nested`: a CSV import's per-row and all-or-nothing
savepoints) and rolled back by exceptions or explicitly; the session's own transaction events
see all of them, so that is where the entries are dropped.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from security.audit import AuditEntry

#: `Session.info` key of the unit of work's `PendingAudit`.
_KEY = "enclave.pending_audit"


class PendingAudit:
    """Entries recorded in a session's transaction, in order, less those of savepoints
    rolled back since."""

    def __init__(self, session: Session) -> None:
        self.entries: list[AuditEntry] = []
        #: Open savepoints, innermost last, with how many entries there were when each opened.
        self._open: list[tuple[SessionTransaction, int]] = []
        #: The savepoint that ended last: SQLAlchemy tells a rollback only after the end.
        #: Held weakly: the session holds this object (`info`), the savepoint holds the
        #: session, and a cycle would leave the whole unit to the garbage collector.
        self._ended: tuple[weakref.ref[SessionTransaction], int] | None = None
        session.info[_KEY] = self

    def take(self) -> list[AuditEntry]:
        """Every entry recorded, in order; none is kept."""
        entries, self.entries = self.entries, []
        return entries

    def _opened(self, transaction: SessionTransaction) -> None:
        self._open.append((transaction, len(self.entries)))

    def _closed(self, transaction: SessionTransaction) -> None:
        while self._open:
            opened = self._open.pop()
            if opened[0] is transaction:
                self._ended = (weakref.ref(transaction), opened[1])
                return

    def _rolled_back(self, transaction: SessionTransaction) -> None:
        if self._ended is not None and self._ended[0]() is transaction:
            del self.entries[self._ended[1]:]
        # Otherwise SQLAlchemy told the events in another order than it does (end, then
        # rollback): the entries stay, and the log says more than happened rather than less.
        self._ended = None


def _pending(session: Session) -> PendingAudit | None:
    found: Any = session.info.get(_KEY)
    return found if isinstance(found, PendingAudit) else None


@event.listens_for(Session, "after_transaction_create")
def _transaction_created(session: Session, transaction: SessionTransaction) -> None:
    pending = _pending(session)
    if pending is not None and transaction.nested:
        pending._opened(transaction)


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    pending = _pending(session)
    if pending is not None and transaction.nested:
        pending._closed(transaction)


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = _pending(session)
    if pending is not None and previous_transaction.nested:
        pending._rolled_back(previous_transaction)
