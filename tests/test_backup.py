"""Backup and restore on real SQLite and PostgreSQL: round trips, erasures, streaming, atomicity.

The attacks on backup files are in test_backup_attacks.py, the command line in
test_backup_cli.py, the file format and retention rules in test_backup_format.py.
"""

from __future__ import annotations

import random
import threading
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from backup_support import (
    ADMIN,
    MANAGER,
    Officer,
    add_officer,
    erase,
    new_officer,
    read_contacts,
    seed,
    tables,
)
from conftest import new_client, operator
from sqlalchemy import func, insert, select, text

from api.demo_crm import fill_modules
from backup import (
    BackupError,
    TargetNotEmpty,
    appliance_anchor,
    create_backup,
    load_identities,
    restore_backup,
    verify_backup,
)
from backup import restore as restore_mod
from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from security import audit
from security.config import Settings
from security.errors import Forbidden
from security.kek import load_kek
from security.keys import PURPOSES
from storage.db import make_engine
from storage.ids import new_id
from storage.models import Account, AuditEvent, Contact, Erasure, SubjectKey


@pytest.fixture
def officer(tmp_path: Path, appliance: Appliance) -> Officer:
    found = new_officer(tmp_path / "offline")
    add_officer(appliance, found)
    return found


@pytest.fixture
def empty_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A fresh machine: a new data folder (no key-encryption key yet) and an empty database
    of the same kind (PostgreSQL: a database without even the tables)."""
    database_url = None
    if backend == "postgres":
        engine, created = request.getfixturevalue("pg_admin")
        name = f"enclave_restore_{uuid.uuid4().hex[:12]}"
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        database_url = engine.url.set(database=name).render_as_string(hide_password=False)
    return Settings(data_dir=tmp_path / "fresh-machine", database_url=database_url,
                    dev_mode=True, audit_checkpoint_every=8)


def _restore(path: Path, officer: Officer, target: Settings, **options: Any) -> Any:
    return restore_backup(path, load_identities(officer.identity_file), target,
                          principal=ADMIN, **options)


def _audit_actions(appliance: Appliance) -> list[str]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


class Writer(threading.Thread):
    """Creates contacts, each in its own transaction, until told to stop."""

    def __init__(self, appliance: Appliance) -> None:
        super().__init__(daemon=True)
        self.appliance = appliance
        self.made = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        from backup_support import contact_data
        i = 10_000
        try:
            while not self._halt.is_set():
                with unit_of_work(self.appliance, MANAGER) as ctx:
                    contact_ops.create_contact(ctx, contact_data(i))
                i += 1
                with self._changed:
                    self.made += 1
                    self._changed.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.made >= count or self.error is not None,
                                          timeout=30)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


class WritesDuringBackup:
    """A Progress that holds the backup (its snapshot open) until the writer commits more."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.during: int | None = None

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        if self.during is None:
            before = self.writer.made
            self.writer.wait_for(before + 3)
            self.during = self.writer.made - before

    def finish(self) -> None:
        pass


def _by_key(name: str, rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    from storage.models import Base
    width = len(Base.metadata.tables[name].primary_key.columns)
    return {row[:width]: row for row in rows}


def _settings_without_counters(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    # The audit log's own state (its compact Merkle tree, what was shipped) moves on with the
    # restore's audit entry and checkpoint.
    return {k: v for k, v in rows if k not in ("keys_version", "policy_version", "audit_tree",
                                                "audit_shipped")}


# -- round trips ------------------------------------------------------------------------------

def test_round_trip_onto_a_fresh_machine_while_a_writer_writes(
        appliance: Appliance, officer: Officer, empty_target: Settings, tmp_path: Path) -> None:
    ids = seed(appliance, 30)
    erase(appliance, ids[0])  # an erasure the backup carries
    client_id, secret = new_client(appliance, "sales_manager", team="east")
    writer = Writer(appliance)
    writer.start()
    progress = WritesDuringBackup(writer)
    try:
        writer.wait_for(2)
        result = create_backup(appliance, tmp_path / "backups", principal=ADMIN,
                               progress=progress)
    finally:
        writer.stop()
    assert writer.error is None
    assert progress.during is not None and progress.during >= 3  # written while it ran
    manifest = result.manifest
    source = tables(appliance.engine)
    before = read_contacts(appliance, client_id, secret)

    restored_result = _restore(result.path, officer, empty_target,
                               signer=manifest.signer_fingerprint)
    assert restored_result.created_kek and restored_result.audit_problem is None
    assert load_kek(empty_target.kek_path, None, dev_mode=True) != appliance.kek

    restored = Appliance.open(empty_target)
    try:
        after = tables(restored.engine)
        # A consistent snapshot: every contact has its subject key and nothing else does, and
        # it holds the writer's earlier contacts but not the ones written after it was taken.
        contacts = {row[0] for row in after["contacts"]}
        assert contacts == {row[0] for row in after["subject_keys"]}
        assert len(contacts) == manifest.table("contacts").rows  # type: ignore[union-attr]
        assert 29 + 2 <= len(contacts) < len(source["contacts"])
        # Identical data, table by table.
        for name in ("accounts", "contacts", "subject_keys", "api_clients", "policy_rules",
                     "erasures"):
            restored_rows, source_rows = _by_key(name, after[name]), _by_key(name, source[name])
            assert restored_rows, name
            assert all(source_rows[key] == row for key, row in restored_rows.items()), name
            if name != "contacts" and name != "subject_keys":
                assert restored_rows == source_rows, name
        for name in ("audit_events", "audit_checkpoints"):
            count = manifest.table(name).rows  # type: ignore[union-attr]
            assert after[name][:count] == source[name][:count], name
        assert _settings_without_counters(after["settings"]) == \
            _settings_without_counters(source["settings"])
        # The data keys are the same keys, wrapped under the new machine's own KEK.
        for purpose in PURPOSES:
            for version in appliance.keyring.versions(purpose):
                assert restored.keyring.key(purpose, version) == \
                    appliance.keyring.key(purpose, version)
        assert {r[2] for r in after["data_keys"]}.isdisjoint({r[2] for r in source["data_keys"]})
        # The restored appliance serves the same contacts, to the same client, over GraphQL.
        read_back = read_contacts(restored, client_id, secret)
        assert set(read_back) == contacts
        assert read_back == {contact_id: before[contact_id] for contact_id in contacts}
        with restored.sessions() as session:
            report = audit.verify(session, restored.keyring)
        assert report.ok, report
        events = manifest.table("audit_events").rows  # type: ignore[union-attr]
        assert _audit_actions(restored)[events] == "backup.restore"  # the first entry after
        assert "backup.create" in _audit_actions(appliance)
    finally:
        restored.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_backup_restores_into_postgresql_and_back(
        appliance: Appliance, officer: Officer, tmp_path: Path, pg_admin: Any) -> None:
    contact_ids = seed(appliance, 12)
    with appliance.sessions() as session:
        account_ids = list(session.scalars(select(Account.id)))
    # Every CRM module too: decimals, dates, JSON and sealed values of each kind of record.
    fill_modules(appliance, operator("sales_manager", "support_agent", "marketing", team="east"),
                 contact_ids, account_ids, random.Random(3))
    first = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    engine, created = pg_admin
    name = f"enclave_cross_{uuid.uuid4().hex[:12]}"
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    created.append(name)
    on_postgres = Settings(data_dir=tmp_path / "pg-machine", dev_mode=True,
                           database_url=engine.url.set(database=name).render_as_string(False))
    signer = first.manifest.signer_fingerprint
    _restore(first.path, officer, on_postgres, signer=signer)
    postgres = Appliance.open(on_postgres)
    try:
        second = create_backup(postgres, tmp_path / "backups-pg", principal=ADMIN)
        middle = tables(postgres.engine)
    finally:
        postgres.close()
    assert second.manifest.database == "postgresql"
    back_on_sqlite = Settings(data_dir=tmp_path / "sqlite-again", dev_mode=True)
    _restore(second.path, officer, back_on_sqlite, signer=signer)
    again = make_engine(back_on_sqlite.resolved_database_url)
    try:
        final, source = tables(again), tables(appliance.engine)
    finally:
        again.dispose()
    crm = ("leads", "opportunities", "opportunity_stage_changes", "activities", "cases",
           "campaigns", "campaign_members", "consents", "pipeline_stages", "sla_policies")
    assert all(source[table] for table in crm)
    for table in ("accounts", "contacts", "subject_keys", "api_clients", "policy_rules", *crm):
        assert final[table] == middle[table] == source[table], table
    events = first.manifest.table("audit_events").rows  # type: ignore[union-attr]
    assert final["audit_events"][:events] == source["audit_events"][:events]


# -- erasures ---------------------------------------------------------------------------------

def test_a_person_erased_after_the_backup_stays_erased(appliance: Appliance, officer: Officer,
                                                       tmp_path: Path) -> None:
    ids = seed(appliance, 5)
    result = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    erase(appliance, ids[1])
    appliance.close()  # the service is stopped for a restore over it
    restored = _restore(result.path, officer, appliance.settings, force=True)
    assert restored.replayed == [ids[1]]
    reopened = Appliance.open(appliance.settings)
    try:
        with reopened.sessions() as session:
            assert session.get(Contact, ids[1]) is None
            assert session.scalars(select(SubjectKey).where(
                SubjectKey.subject_id == ids[1])).all() == []
            erasure = session.get(Erasure, ids[1])
            assert erasure is not None and erasure.by == MANAGER.actor
            assert set(session.scalars(select(Contact.id))) == set(ids) - {ids[1]}
            assert audit.verify(session, reopened.keyring).ok
        with unit_of_work(reopened, MANAGER) as ctx:
            assert contact_ops.get_contact(ctx, ids[2]).id == ids[2]
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_erasures_from_a_newer_backup_or_an_exported_list(
        appliance: Appliance, officer: Officer, tmp_path: Path) -> None:
    from backup.erasures import export_erasures
    ids = seed(appliance, 4)
    old = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    erase(appliance, ids[0])
    newer = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    erase(appliance, ids[3])
    with unit_of_work(appliance, ADMIN) as ctx:
        exported = export_erasures(ctx)
    listing = tmp_path / "erasures.json"
    import json
    listing.write_text(json.dumps(exported))
    signer = old.manifest.signer_fingerprint
    for name, sources, gone in (("from-backup", [newer.path], {ids[0]}),
                                ("from-list", [listing], {ids[0], ids[3]})):
        target = Settings(data_dir=tmp_path / name, dev_mode=True)
        result = _restore(old.path, officer, target, signer=signer, erasures_from=sources)
        assert set(result.replayed) == gone
        engine = make_engine(target.resolved_database_url)
        try:
            with engine.connect() as connection:
                assert set(connection.scalars(select(Contact.id))) == set(ids) - gone
                assert set(connection.scalars(select(SubjectKey.subject_id))) == set(ids) - gone
                assert set(connection.scalars(select(Erasure.subject_id))) == gone
        finally:
            engine.dispose()


# -- creating ---------------------------------------------------------------------------------

def test_create_refuses_without_a_recipient_and_for_a_role_without_keys(
        appliance: Appliance, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no backup recipient"):
        create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    add_officer(appliance, new_officer(tmp_path))
    with pytest.raises(Forbidden):
        create_backup(appliance, tmp_path / "backups", principal=MANAGER)
    assert not (tmp_path / "backups").exists()


def test_an_interrupted_backup_never_looks_finished(appliance: Appliance, officer: Officer,
                                                     tmp_path: Path) -> None:
    seed(appliance, 3)
    directory = tmp_path / "backups"
    seen: list[list[str]] = []

    class PowerCut:
        def start(self, description: str, total: int | None) -> None:
            pass

        def advance(self, amount: int) -> None:
            seen.append(sorted(p.name for p in directory.iterdir()))
            raise RuntimeError("power cut")

        def finish(self) -> None:
            pass

    with pytest.raises(RuntimeError, match="power cut"):
        create_backup(appliance, directory, principal=ADMIN, progress=PowerCut())
    assert len(seen[0]) == 1 and seen[0][0].endswith(".tar.partial")  # never the final name
    assert list(directory.iterdir()) == []
    with appliance.sessions() as session:
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert last is not None and (last.action, last.decision) == ("backup.create", "error")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_memory_does_not_grow_with_the_database(appliance: Appliance, officer: Officer,
                                                tmp_path: Path) -> None:
    def peak_for(rows: int) -> int:
        with appliance.engine.begin() as connection:
            have = connection.scalar(select(func.count()).select_from(Account)) or 0
            connection.execute(insert(Account), [
                {"id": new_id(), "name": f"Account {i} " + "x" * 150, "owner": "o", "team": "east"}
                for i in range(rows - have)])
        tracemalloc.start()
        try:
            create_backup(appliance, tmp_path / f"b{rows}", principal=ADMIN, chunk_size=32 * 1024)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_for(2_000), peak_for(8_000)
    assert large < small * 1.5, (small, large)  # four times the rows, not four times the memory


# -- verifying and restoring ----------------------------------------------------------------

def test_verify_checks_every_table_with_the_identity(appliance: Appliance, officer: Officer,
                                                     tmp_path: Path) -> None:
    seed(appliance, 4)
    result = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    anchor = appliance_anchor(appliance)
    shallow = verify_backup(result.path, anchor)
    deep = verify_backup(result.path, anchor, load_identities(officer.identity_file))
    assert (shallow.decrypted, deep.decrypted) == (False, True)
    assert deep.signer == result.manifest.signer_fingerprint


def test_a_non_empty_target_needs_force_and_a_failed_restore_changes_nothing(
        appliance: Appliance, officer: Officer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seed(appliance, 5)
    result = create_backup(appliance, tmp_path / "backups", principal=ADMIN)
    seed(appliance, 2, start=100)
    with pytest.raises(Forbidden):  # refused and, like every refusal, audited
        restore_backup(result.path, load_identities(officer.identity_file), appliance.settings,
                       principal=operator("sales_manager", team="east"), force=True)
    appliance.close()
    before = tables(appliance.engine)
    appliance.engine.dispose()
    with pytest.raises(TargetNotEmpty):
        _restore(result.path, officer, appliance.settings)

    def power_cut(*args: Any) -> None:  # every row is in, the swap has not happened
        raise RuntimeError("power cut")

    monkeypatch.setattr(restore_mod, "_check_counts", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        _restore(result.path, officer, appliance.settings, force=True)
    assert tables(appliance.engine) == before
    appliance.engine.dispose()
    leftovers = [p.name for p in appliance.settings.data_dir.iterdir() if "restore" in p.name]
    assert leftovers == []


def test_recipients_are_validated_and_audited(appliance: Appliance, tmp_path: Path) -> None:
    from backup.recipients import add_recipient, list_recipients, remove_recipient
    from security.errors import Conflict
    officer = new_officer(tmp_path)
    with unit_of_work(appliance, ADMIN) as ctx:
        for bad in ("age1notakey", "ssh-ed25519 AAAA", ""):
            with pytest.raises(BackupError):
                add_recipient(ctx, bad)
        add_recipient(ctx, officer.recipient, label="officer")
        with pytest.raises(Conflict):
            add_recipient(ctx, officer.recipient)
        assert [r.recipient for r in list_recipients(ctx)] == [officer.recipient]
        remove_recipient(ctx, officer.recipient)
        assert list_recipients(ctx) == []
    with pytest.raises(Forbidden), unit_of_work(appliance, MANAGER) as ctx:
        add_recipient(ctx, officer.recipient)
    actions = _audit_actions(appliance)
    assert actions.count("backup.recipient.add") == 1
    assert actions.count("backup.recipient.remove") == 1




