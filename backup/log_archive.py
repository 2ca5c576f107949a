"""Keep the audit log a restore replaces.

Restoring over a running appliance swaps in the backup's audit log, which ends when the backup
was taken. The replaced log is evidence a regulator may ask for, so before the swap it is written
out whole (entries and signed checkpoints, as JSON lines, mode 0600) into the data folder's
`audit-archive/`, and the restore's own audit entry names that file and its SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from sqlalchemy import Table

from backup.rows import dump_rows
from schema.runtime import Appliance
from storage.models import AuditCheckpoint, AuditEvent


def archive_audit_log(appliance: Appliance, data_dir: Path) -> tuple[Path, str]:
    folder = data_dir / "audit-archive"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"replaced-{stamp}.jsonl"
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle, appliance.engine.connect() as connection:
        for table in (AuditEvent.__table__, AuditCheckpoint.__table__):
            assert isinstance(table, Table)  # for the type checker: models map plain tables
            prefix = b'{"table":"' + table.name.encode() + b'","row":'
            for row in dump_rows(connection, table):
                line = prefix + row.rstrip(b"\n") + b"}\n"
                handle.write(line)
                digest.update(line)
        handle.flush()
        os.fsync(handle.fileno())
    return path, digest.hexdigest()
