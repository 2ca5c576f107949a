"""Erasures that a restore must replay, so a person erased after a backup stays erased.

`schema.ops.contacts.delete_contact` records every erasure in the `erasures` table. A restore
replays the erasures known to the target it replaces and those in any `--erasures-from` file
(a newer backup, or the JSON that `enclave backup erasures export` writes): it deletes those
records (contacts, and the records about them that `eraseSubject` or retention erased with
them: leads, activities, cases, consent, memberships) and their subject keys from the restored
data and keeps the erasure rows.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, inspect, select

from backup.errors import BackupError
from schema.context import RequestContext
from schema.runtime import APPLIANCE_ID_KEY
from security.authz import MANAGE
from storage.models import MODELS, Erasure, Setting, SubjectKey

FORMAT = "enclave-erasures/1"
_ID = re.compile(r"^[0-9a-f-]{36}$")


@dataclass(frozen=True)
class ErasureRecord:
    subject_id: str
    erased_at: dt.datetime
    by: str

    def as_dict(self) -> dict[str, str]:
        return {"subject_id": self.subject_id, "erased_at": self.erased_at.isoformat(),
                "by": self.by}


def from_dict(item: Any, source: str) -> ErasureRecord:
    try:
        subject_id, by = str(item["subject_id"]), str(item["by"])
        erased_at = dt.datetime.fromisoformat(str(item["erased_at"]))
    except (KeyError, TypeError, ValueError):
        raise BackupError(f"{source} holds an erasure that is not "
                          "{subject_id, erased_at, by}") from None
    if not _ID.match(subject_id):
        raise BackupError(f"{source} names an erased subject that is not an id: {subject_id!r}")
    if erased_at.tzinfo is None:
        erased_at = erased_at.replace(tzinfo=dt.UTC)
    return ErasureRecord(subject_id, erased_at, by[:100])


def read_erasures(connection: Connection) -> list[ErasureRecord]:
    """Every erasure a database knows (none if it predates the erasures table)."""
    if not inspect(connection).has_table(Erasure.__tablename__):
        return []
    rows = connection.execute(select(Erasure.subject_id, Erasure.erased_at, Erasure.by)
                              .order_by(Erasure.erased_at, Erasure.subject_id))
    return [ErasureRecord(*row) for row in rows]


def export_document(appliance_id: str, erasures: Iterable[ErasureRecord]) -> dict[str, Any]:
    return {"format": FORMAT, "appliance_id": appliance_id,
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "erasures": [e.as_dict() for e in erasures]}


def load_json(path: Path) -> list[ErasureRecord]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"no such file: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise BackupError(f"{path} is neither a backup nor an erasure list (JSON)") from None
    items = document.get("erasures") if isinstance(document, dict) else document
    if isinstance(document, dict) and document.get("format") not in (None, FORMAT):
        raise BackupError(f"{path} is an erasure list of an unknown format")
    if not isinstance(items, list):
        raise BackupError(f"{path} holds no list of erasures")
    return [from_dict(item, str(path)) for item in items]


def merge(*sources: Iterable[ErasureRecord]) -> list[ErasureRecord]:
    """One record per subject, the earliest erasure winning."""
    found: dict[str, ErasureRecord] = {}
    for source in sources:
        for record in source:
            known = found.get(record.subject_id)
            if known is None or record.erased_at < known.erased_at:
                found[record.subject_id] = record
    return sorted(found.values(), key=lambda r: (r.erased_at, r.subject_id))


#: Children before parents, so that no foreign key points at a row already gone.
_ERASABLE = ("campaign_member", "consent", "activity", "case", "opportunity", "lead", "contact",
             "campaign", "account")


def replay(connection: Connection, erasures: list[ErasureRecord]) -> list[str]:
    """Erase again in restored data; returns the subjects whose data was still there."""
    if not erasures:
        return []
    ids = [e.subject_id for e in erasures]
    present: set[str] = set()
    for start in range(0, len(ids), 500):
        batch = ids[start:start + 500]
        present |= set(connection.scalars(
            select(SubjectKey.subject_id).where(SubjectKey.subject_id.in_(batch))))
        for object_type in _ERASABLE:
            model = MODELS[object_type]
            present |= set(connection.scalars(select(model.id).where(model.id.in_(batch))))
            connection.execute(delete(model).where(model.id.in_(batch)))
        connection.execute(delete(SubjectKey).where(SubjectKey.subject_id.in_(batch)))
    for start in range(0, len(erasures), 500):
        batch_records = erasures[start:start + 500]
        known = set(connection.scalars(select(Erasure.subject_id).where(
            Erasure.subject_id.in_([e.subject_id for e in batch_records]))))
        missing = [{"subject_id": e.subject_id, "erased_at": e.erased_at, "by": e.by}
                   for e in batch_records if e.subject_id not in known]
        if missing:
            connection.execute(insert(Erasure), missing)
    return sorted(present)


def export_erasures(ctx: RequestContext) -> dict[str, Any]:
    """Every erasure this appliance recorded, for `restore --erasures-from` elsewhere. Audited."""
    ctx.guard.require("key", MANAGE)
    appliance_id = ctx.session.scalar(select(Setting.value).where(Setting.key == APPLIANCE_ID_KEY))
    found = read_erasures(ctx.session.connection())
    ctx.audit("backup.erasures.export", object_type="backup", fields=[f"count:{len(found)}"])
    return export_document(appliance_id or "unknown", found)
