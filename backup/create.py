"""`enclave backup create`: snapshot, serialise, compress, encrypt, sign, and only then name.

The file is written as `<name>.partial` and renamed when complete (after fsync), so an
interrupted backup never looks finished. Each backup, and each failed attempt, is audited.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from backup import manifest as manifest_mod
from backup.archive import ArchiveWriter
from backup.errors import BackupError
from backup.keyfile import export_keys
from backup.manifest import Manifest
from backup.payload import DEFAULT_CHUNK, PayloadBuilder, encrypt_stream
from backup.progress import NO_PROGRESS, Progress
from backup.recipients import recipients
from backup.rows import backup_tables
from backup.snapshot import snapshot
from schema.context import unit_of_work
from schema.runtime import APPLIANCE_ID_KEY, Appliance
from security import audit
from security.authz import MANAGE
from security.keys import AUDIT_SIGNING
from security.principal import Principal
from storage import migrate
from storage.models import Setting

PREFIX = "enclave-backup-"


@dataclass(frozen=True)
class CreateResult:
    path: Path
    manifest: Manifest
    size: int
    seconds: float


def backup_name(appliance_id: str, created: dt.datetime) -> str:
    stamp = created.strftime("%Y%m%dT%H%M%S") + f".{created.microsecond // 1000:03d}Z"
    return f"{PREFIX}{appliance_id}-{stamp}.tar"


def create_backup(appliance: Appliance, directory: Path, *, principal: Principal,
                  progress: Progress = NO_PROGRESS, chunk_size: int = DEFAULT_CHUNK) -> CreateResult:
    with unit_of_work(appliance, principal) as ctx:
        ctx.guard.require("key", MANAGE)  # a backup carries every data key
        to = [r.recipient for r in recipients(ctx.session)]
        if not to:
            raise BackupError("no backup recipient is configured: add the security officer's "
                              "offline recovery key with `enclave backup recipients add age1...`")
        # Sign the audit log's current end, so the copy in the backup is signed throughout.
        audit.checkpoint_now(ctx.session, appliance.keyring,
                             checkpoint_every=appliance.settings.audit_checkpoint_every)
    started = time.perf_counter()
    try:
        result = _write(appliance, directory, to, progress, chunk_size)
    except BaseException as exc:
        with unit_of_work(appliance, principal) as ctx:
            ctx.audit("backup.create", object_type="backup", decision="error",
                      reason=(getattr(exc, "message", None) or type(exc).__name__)[:500])
        raise
    seconds = time.perf_counter() - started
    with unit_of_work(appliance, principal) as ctx:
        ctx.audit("backup.create", object_type="backup", object_ids=[result.path.name],
                  fields=[f"sha256:{result.manifest.payload['sha256']}",
                          f"rows:{result.manifest.total_rows}",
                          *[f"recipient:{r}" for r in to]])
    return CreateResult(result.path, result.manifest, result.size, seconds)


def _write(appliance: Appliance, directory: Path, to: list[str], progress: Progress,
           chunk_size: int) -> CreateResult:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = dt.datetime.now(dt.UTC)
    signing_version = appliance.keyring.current_version(AUDIT_SIGNING)
    signing_key = appliance.keyring.signing_key(AUDIT_SIGNING, signing_version)
    tables = backup_tables()
    with snapshot(appliance.engine) as connection:
        appliance_id = connection.scalar(
            select(Setting.value).where(Setting.key == APPLIANCE_ID_KEY)) or "unknown"
        path = directory / backup_name(appliance_id, created)
        if path.exists():
            raise BackupError(f"{path} already exists")
        revision = migrate.current_revision(connection) or "none"
        keys_json, key_count = export_keys(connection, appliance.kek)
        total = sum(connection.scalar(select(func.count()).select_from(t)) or 0 for t in tables)
        writer = ArchiveWriter(path, mtime=int(created.timestamp()))
        try:
            progress.start("backing up", total)
            builder = PayloadBuilder(connection, tables, keys_json, mtime=int(created.timestamp()),
                                     chunk_size=chunk_size, progress=progress)
            encrypt_stream(builder.stream(), writer.payload(), to)
            size, sha256 = writer.end_payload()
            progress.finish()
            erasures = next((t.rows for t in builder.tables if t.name == "erasures"), 0)
            manifest = Manifest(
                schema_revision=revision, appliance_id=appliance_id,
                created_at=created.isoformat(timespec="milliseconds"),
                database=appliance.engine.dialect.name,
                signer=manifest_mod.signer_block(signing_key, signing_version),
                recipients=to,
                payload={"name": "payload.age", "size": size, "sha256": sha256,
                         "layers": ["tar", "zstd", "age"]},
                keys={"name": "keys.json", "count": key_count, "sha256": builder.keys_sha256},
                tables=builder.tables, erasures=erasures,
            )
            manifest_bytes = manifest.to_bytes()
            writer.add("MANIFEST.json", manifest_bytes)
            writer.add("MANIFEST.sig", manifest_mod.sign(manifest_bytes, signing_key))
            final = writer.commit()
        except BaseException:
            writer.abort()
            raise
    return CreateResult(final, manifest, final.stat().st_size, 0.0)
