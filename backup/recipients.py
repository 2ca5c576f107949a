"""Who can decrypt backups: age recipients kept in the settings table; changes are audited.

Managing them needs the `key` manage permission (admin): whoever holds a recipient's identity
can read every personal field of every backup made while it was listed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from backup.identity import validate_recipient
from schema.context import RequestContext
from security.authz import MANAGE
from security.errors import BadUserInput, Conflict, NotFound
from storage.models import Setting

RECIPIENTS_KEY = "backup_recipients"
OBJECT = "key"


@dataclass(frozen=True)
class Recipient:
    recipient: str
    label: str | None
    added_at: str
    added_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "label": self.label, "added_at": self.added_at,
                "added_by": self.added_by}


def recipients(session: Session) -> list[Recipient]:
    setting = session.get(Setting, RECIPIENTS_KEY)
    if setting is None:
        return []
    return [Recipient(**item) for item in json.loads(setting.value)]


def _store(session: Session, items: list[Recipient]) -> None:
    value = json.dumps([r.as_dict() for r in items])
    setting = session.get(Setting, RECIPIENTS_KEY, with_for_update=True)
    if setting is None:
        session.add(Setting(key=RECIPIENTS_KEY, value=value))
    else:
        setting.value = value
    session.flush()


def list_recipients(ctx: RequestContext) -> list[Recipient]:
    ctx.guard.require(OBJECT, MANAGE)
    return recipients(ctx.session)


def add_recipient(ctx: RequestContext, recipient: str, *, label: str | None = None) -> Recipient:
    ctx.guard.require(OBJECT, MANAGE)
    value = validate_recipient(recipient)
    if label is not None and (len(label) > 100 or any(ord(c) < 32 for c in label)):
        raise BadUserInput("label must be at most 100 printable characters", field="label")
    current = recipients(ctx.session)
    if any(r.recipient == value for r in current):
        raise Conflict(f"{value} is already a backup recipient")
    added = Recipient(value, label, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      ctx.principal.actor)
    _store(ctx.session, [*current, added])
    ctx.audit("backup.recipient.add", object_type="backup", object_ids=[value],
              fields=[f"label:{label}"] if label else [])
    return added


def remove_recipient(ctx: RequestContext, recipient: str) -> None:
    ctx.guard.require(OBJECT, MANAGE)
    current = recipients(ctx.session)
    kept = [r for r in current if r.recipient != recipient.strip()]
    if len(kept) == len(current):
        raise NotFound(f"{recipient.strip()} is not a backup recipient")
    _store(ctx.session, kept)
    ctx.audit("backup.recipient.remove", object_type="backup", object_ids=[recipient.strip()])
