"""`enclave backup restore`: verify everything, then swap the backup in atomically.

1. Look at the target without touching it: a non-empty one needs `force`.
2. Verify the backup completely (structure, signature against the trust anchor, payload hash,
   then decrypt and check every table), and read the erasures to replay.
3. Build the new contents (SQLite: a file beside the target; PostgreSQL: one transaction), with
   the data keys wrapped again under the target's key-encryption key (made if the target has
   none: a fresh machine), replay erasures, append `backup.restore` to the restored audit log
   and check the log, then swap in (rename / commit). Any failure leaves the target as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.orm import Session

from backup import erasures as erasure_mod
from backup.errors import BackupError, Tampered, TargetNotEmpty
from backup.identity import Identities
from backup.keyfile import read_keys, rewrap_keys
from backup.log_archive import archive_audit_log
from backup.manifest import Manifest, TrustAnchor
from backup.progress import NO_PROGRESS, Progress
from backup.rows import RowDecoder, table_named
from backup.target import TargetState, inspect_target, postgres_build, sqlite_build
from backup.verify import (
    OpenedBackup,
    appliance_anchor,
    check_payload_hash,
    open_backup,
    read_contents,
)
from schema.context import unit_of_work
from schema.runtime import KEYS_VERSION_KEY, Appliance
from security import audit
from security.audit import AuditEntry
from security.authz import MANAGE, POLICY_VERSION_KEY
from security.config import Settings
from security.kek import create_kek, load_kek
from security.keys import KeyRing
from security.principal import Principal
from storage.counters import bump_counter
from storage.db import normalise_url
from storage.models import AuditHead, DataKey

_BATCH = 1000


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    signer: str
    target: str
    rows: int
    replayed: list[str]
    erasures_known: int
    created_kek: bool
    audit_entries: int
    audit_problem: str | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def restore_backup(path: Path, identities: Identities, settings: Settings, *,
                   principal: Principal, signer: str | None = None, force: bool = False,
                   erasures_from: list[Path] | None = None,
                   progress: Progress = NO_PROGRESS) -> RestoreResult:
    started = time.perf_counter()
    state = inspect_target(settings)
    if not state.empty and not force:
        raise TargetNotEmpty(f"the target {state.description} holds {state.rows} rows: restore "
                             "into an empty one, or replace it with --force")
    existing: Appliance | None = None
    try:
        if not state.empty:  # it must open as an appliance: its keys and erasures count
            existing = Appliance.open(settings)
            with unit_of_work(existing, principal) as ctx:
                ctx.guard.require("key", MANAGE)
        anchor = _anchor(signer, existing)
        opened = open_backup(path, anchor)
        check_payload_hash(opened, progress)
        read_contents(opened, identities, progress=progress, description="verifying")
        known = _target_erasures(existing)
        extra = [_erasures_from(p, anchor, identities, opened.manifest, progress)
                 for p in erasures_from or []]
        to_replay = erasure_mod.merge(known, *extra)
        replaced = _head(existing)
        if existing is not None:
            archive, archive_sha = archive_audit_log(existing, settings.data_dir)
            replaced = f"{replaced}; archived_log:{archive.name}:sha256:{archive_sha}"
        kek = load_kek(settings.kek_path, settings.key_passphrase, dev_mode=settings.dev_mode) \
            if settings.kek_path.exists() else None
    finally:
        if existing is not None:
            existing.close()
    created_kek = kek is None
    if kek is None:
        kek = create_kek(settings.kek_path, settings.key_passphrase, dev_mode=settings.dev_mode)
    try:
        loaded = _build(opened, identities, settings, state, kek, to_replay, principal,
                        replaced, progress)
    except BaseException:
        if created_kek:
            settings.kek_path.unlink(missing_ok=True)
        raise
    return RestoreResult(
        manifest=opened.manifest, signer=opened.signer, target=state.description,
        rows=opened.manifest.total_rows, replayed=loaded.replayed,
        erasures_known=len(to_replay), created_kek=created_kek,
        audit_entries=loaded.audit_entries, audit_problem=loaded.audit_problem,
        seconds=time.perf_counter() - started)


def _anchor(signer: str | None, existing: Appliance | None) -> TrustAnchor:
    if signer is not None:
        return TrustAnchor.of_fingerprint(signer)
    if existing is not None:
        return appliance_anchor(existing)
    raise BackupError("the target has no appliance to check the backup's signer against: give "
                      "--signer FINGERPRINT (printed by `enclave backup create` and `enclave "
                      "backup recipients list` on the appliance that made it)")


def _target_erasures(existing: Appliance | None) -> list[erasure_mod.ErasureRecord]:
    if existing is None:
        return []
    with existing.engine.connect() as connection:
        return erasure_mod.read_erasures(connection)


def _head(existing: Appliance | None) -> str | None:
    if existing is None:
        return None
    with existing.sessions() as session:
        head = session.get(AuditHead, 1)
        return f"{head.seq}:{head.hash}" if head else None


def _erasures_from(path: Path, anchor: TrustAnchor, identities: Identities, manifest: Manifest,
                   progress: Progress) -> list[erasure_mod.ErasureRecord]:
    """Erasures in a newer backup (verified like the one restored) or in an exported list."""
    with path.open("rb") as handle:
        is_tar = handle.read(512)[257:262] == b"ustar"
    if not is_tar:
        return erasure_mod.load_json(path)
    other = open_backup(path, anchor)
    if other.manifest.appliance_id != manifest.appliance_id:
        raise BackupError(f"{path.name} is a backup of another appliance "
                          f"({other.manifest.appliance_id})")
    check_payload_hash(other, progress)
    decoder = RowDecoder(table_named("erasures"))  # type: ignore[arg-type]
    found: list[erasure_mod.ErasureRecord] = []

    def lines(table: str, batch: list[bytes]) -> None:
        if table == "erasures":
            found.extend(erasure_mod.ErasureRecord(**decoder.decode(line)) for line in batch)

    read_contents(other, identities, on_lines=lines, progress=progress,
                  description=f"reading erasures from {path.name}")
    return found


@dataclass
class _Loaded:
    replayed: list[str]
    audit_entries: int
    audit_problem: str | None


class _Loader:
    """Receives keys.json and rows from the decryption pass and inserts them in batches."""

    def __init__(self, connection: Connection, kek: bytes, manifest: Manifest) -> None:
        self._connection = connection
        self._kek = kek
        self._manifest = manifest
        self._decoders: dict[str, RowDecoder] = {}
        self._pending: list[dict[str, Any]] = []
        self._table: str | None = None

    def keys(self, data: bytes) -> None:
        items = read_keys(data, expected_count=int(self._manifest.keys["count"]))
        self._connection.execute(insert(DataKey), rewrap_keys(items, self._kek))

    def lines(self, table: str, batch: list[bytes]) -> None:
        if table != self._table:
            self.flush()
            self._table = table
        decoder = self._decoders.get(table)
        if decoder is None:
            found = table_named(table)
            if found is None:
                raise Tampered(f"unknown table {table!r}")
            decoder = self._decoders[table] = RowDecoder(found)
        self._pending.extend(decoder.decode(line) for line in batch)
        if len(self._pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending and self._table is not None:
            self._connection.execute(self._decoders[self._table].table.insert(), self._pending)
            self._pending = []


def _build(opened: OpenedBackup, identities: Identities, settings: Settings, state: TargetState,
           kek: bytes, to_replay: list[erasure_mod.ErasureRecord], principal: Principal,
           replaced: str | None, progress: Progress) -> _Loaded:
    build: Callable[[], Any]
    if state.sqlite_path is not None:
        path = state.sqlite_path

        def build() -> Any:
            return sqlite_build(path)
    else:
        url = normalise_url(settings.resolved_database_url)

        def build() -> Any:
            return postgres_build(url)

    with build() as connection:
        loader = _Loader(connection, kek, opened.manifest)
        read_contents(opened, identities, on_keys=loader.keys, on_lines=loader.lines,
                      progress=progress, description="restoring")
        loader.flush()
        _check_counts(connection, opened.manifest)
        replayed = erasure_mod.replay(connection, to_replay)
        return _finish(connection, settings, kek, opened, principal, replayed, replaced)


def _check_counts(connection: Connection, manifest: Manifest) -> None:
    for entry in manifest.tables:
        table = table_named(entry.name)
        if table is None:
            raise Tampered(f"unknown table {entry.name!r}")
        found = connection.scalar(select(func.count()).select_from(table)) or 0
        if found != entry.rows:
            raise Tampered(f"table {entry.name}: {found} rows restored, the manifest says "
                           f"{entry.rows}")


def _finish(connection: Connection, settings: Settings, kek: bytes, opened: OpenedBackup,
            principal: Principal, replayed: list[str], replaced: str | None) -> _Loaded:
    session = Session(bind=connection)
    try:
        # Make every process that shares the database reload its keys and policy.
        for key in (KEYS_VERSION_KEY, POLICY_VERSION_KEY):
            bump_counter(session, key)
        keyring = KeyRing.load(session, kek)
        fields = [f"sha256:{opened.manifest.payload['sha256']}", f"signer:{opened.signer}",
                  f"created_at:{opened.manifest.created_at}",
                  f"rows:{opened.manifest.total_rows}", f"erasures_replayed:{len(replayed)}"]
        if replaced:
            fields.append(f"replaced_head:{replaced}")
        audit.append(session, [AuditEntry(
            actor=principal.actor, roles=principal.roles, action="backup.restore",
            object_type="backup", object_ids=[opened.layout.path.name, *replayed],
            fields=fields)], keyring=keyring, checkpoint_every=settings.audit_checkpoint_every)
        audit.checkpoint_now(session, keyring, checkpoint_every=settings.audit_checkpoint_every)
        session.flush()
        report = audit.verify(session, keyring)
    finally:
        session.close()
    return _Loaded(replayed, report.entries, None if report.ok else
                   f"entry {report.first_bad_seq}: {report.problem}")
