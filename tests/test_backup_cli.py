"""`enclave backup ...` as operators and scripts run it, and the backup read with standard tools."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from backup_support import flip, new_officer, resign
from sqlalchemy import select
from test_cli import assert_one_line_error, enclave, ok

from backup.archive import read_layout
from schema.runtime import Appliance
from security.config import Settings
from security.keys import AUDIT_SIGNING
from storage.models import AuditEvent


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """A development appliance with contacts, a recovery key and one backup (--json), shared
    by the tests of this module (they leave its data folder and backup folder as they were)."""
    tmp_path = tmp_path_factory.mktemp("backup-cli")
    data_dir = tmp_path / "var"
    ok(data_dir, "init", "--dev")
    officer = new_officer(tmp_path / "offline")
    refused = enclave(data_dir, "backup", "create")
    assert_one_line_error(refused, expect_in="no backup recipient", code=1)
    ok(data_dir, "backup", "recipients", "add", officer.recipient, "--label", "officer")
    ok(data_dir, "demo", "--contacts", "20")
    created = json.loads(ok(data_dir, "backup", "create", "--json").stdout)
    return data_dir, officer.identity_file, created


def _contacts(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "enclave.db") as connection:
        return int(connection.execute("SELECT count(*) FROM contacts").fetchone()[0])


def test_create_verify_list_restore_prune(made: tuple[Path, Path, dict[str, object]],
                                          tmp_path: Path) -> None:
    data_dir, identity, created = made
    path = Path(str(created["path"]))
    assert created["ok"] is True and path.parent == data_dir / "backups"
    assert path.name.startswith("enclave-backup-") and path.suffix == ".tar"
    tables = created["tables"]
    # The demo's 20 contacts, and one more per lead it converted.
    assert isinstance(tables, dict) and tables["contacts"] == _contacts(data_dir) >= 20
    assert tables["leads"] > 0 and tables["opportunities"] > 0 and tables["cases"] > 0
    listed = json.loads(ok(data_dir, "backup", "recipients", "list", "--json").stdout)
    assert listed["signer"] == created["signer"]

    shallow = json.loads(ok(data_dir, "backup", "verify", str(path), "--json").stdout)
    deep = json.loads(ok(data_dir, "backup", "verify", str(path), "--identity", str(identity),
                         "--json").stdout)
    assert (shallow["decrypted"], deep["decrypted"]) == (False, True)
    text = ok(data_dir, "backup", "verify", str(path), "--identity", str(identity))
    assert "backup OK" in text.stdout

    listing = json.loads(ok(data_dir, "backup", "list", "--json").stdout)
    assert [(b["name"], b["status"]) for b in listing] == [(path.name, "complete")]

    # A fresh machine: new data folder, new key-encryption key, the signer given by hand.
    fresh = tmp_path / "fresh"
    restored = json.loads(ok(fresh, "backup", "restore", str(path), "--identity", str(identity),
                             "--signer", str(created["signer"]), "--dev", "--json").stdout)
    assert restored["ok"] and restored["new_key_encryption_key"] is True
    assert restored["rows"] == created["rows"]
    assert "intact" in ok(fresh, "audit", "verify").stdout
    assert json.loads(ok(fresh, "backup", "recipients", "list", "--json").stdout)["signer"] \
        == created["signer"]
    again = enclave(fresh, "backup", "restore", str(path), "--identity", str(identity))
    assert_one_line_error(again, expect_in="target not empty", code=14)
    entries_before = _audit_lines(fresh)
    replaced = ok(fresh, "backup", "restore", str(path), "--identity", str(identity), "--force")
    assert "restored" in replaced.stdout
    # The replaced appliance's audit log is kept whole, and the restore entry names it.
    archives = list((fresh / "audit-archive").glob("replaced-*.jsonl"))
    assert len(archives) == 1 and archives[0].stat().st_mode & 0o777 == 0o600
    archived = [json.loads(line) for line in archives[0].read_text().splitlines()]
    assert [a["row"]["hash"] for a in archived if a["table"] == "audit_events"] == entries_before
    assert any(a["table"] == "audit_checkpoints" for a in archived)
    assert archives[0].name in json.dumps(_last_restore_entry(fresh))

    exported = ok(data_dir, "backup", "erasures", "export")
    assert json.loads(exported.stdout)["format"] == "enclave-erasures/1"
    pruned = json.loads(ok(data_dir, "backup", "prune", "--keep-daily", "1", "--dry-run",
                           "--json").stdout)
    assert pruned["remove"] == [] and [k["name"] for k in pruned["keep"]] == [path.name]
    no_policy = enclave(data_dir, "backup", "prune")
    assert_one_line_error(no_policy, expect_in="--keep-daily", code=1)


def test_each_refusal_has_its_own_exit_code(made: tuple[Path, Path, dict[str, object]],
                                            tmp_path: Path) -> None:
    data_dir, identity, created = made
    path = Path(str(created["path"]))
    layout = read_layout(path)
    appliance = Appliance.open(Settings(data_dir=data_dir, dev_mode=True))
    try:
        newer = resign(path, tmp_path / "newer.tar", appliance.keyring.signing_key(AUDIT_SIGNING),
                       embed_key=False, change={"format_version": 99})
    finally:
        appliance.close()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(path.read_bytes()[:layout.payload_offset + 1000])
    appended = tmp_path / "appended.tar"
    appended.write_bytes(path.read_bytes() + b"\0extra")
    stranger = new_officer(tmp_path / "stranger").identity_file
    cases = [
        (flip(path, tmp_path / "manifest.tar", path.read_bytes().find(b'"sha256": "') + 20),
         identity, 10, "bad signature"),
        (path, stranger, 11, "wrong identity"),
        (truncated, identity, 12, "truncated"),
        (flip(path, tmp_path / "payload.tar", layout.payload_offset + 100), identity, 13,
         "tampered"),
        (appended, identity, 13, "tampered"),
        (newer, identity, 15, "version too new"),
    ]
    for file, key, code, label in cases:
        run = enclave(data_dir, "backup", "verify", str(file), "--identity", str(key))
        line = assert_one_line_error(run, expect_in=f"backup refused ({label})", code=code)
        assert "Traceback" not in line
    scripted = enclave(data_dir, "backup", "verify", str(appended), "--json")
    assert scripted.returncode == 13
    assert json.loads(scripted.stdout) == {"ok": False, "error": "tampered",
                                           "code": "BACKUP_TAMPERED", "exit_code": 13,
                                           "message": json.loads(scripted.stdout)["message"]}


def test_the_standard_age_tool_decrypts_a_backup(made: tuple[Path, Path, dict[str, object]]
                                                 ) -> None:
    _, identity, created = made
    for tool in ("age", "zstd", "tar"):
        assert shutil.which(tool), f"{tool} is not installed (.ci/run installs it)"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         'tar -xOf "$1" payload.age | age -d -i "$2" | zstd -dc | tar -t', "recover",
         str(created["path"]), str(identity)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    members = done.stdout.split()
    assert members[0] == "keys.json"
    assert "tables/contacts/000001.jsonl" in members
    contacts = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         'tar -xOf "$1" payload.age | age -d -i "$2" | zstd -dc | tar -xO tables/contacts',
         "recover", str(created["path"]), str(identity)],
        capture_output=True, text=True, timeout=60, check=False)
    assert contacts.returncode == 0, contacts.stderr
    rows = [json.loads(line) for line in contacts.stdout.splitlines()]
    assert len(rows) == _contacts(Path(str(created["path"])).parent.parent) >= 20
    assert all(row["email"] for row in rows)  # sealed: base64 ciphertext


def _audit_lines(data_dir: Path) -> list[str]:
    appliance = Appliance.open(Settings(data_dir=data_dir, dev_mode=True))
    try:
        with appliance.sessions() as session:
            return list(session.scalars(select(AuditEvent.hash).order_by(AuditEvent.seq)))
    finally:
        appliance.close()


def _last_restore_entry(data_dir: Path) -> dict[str, object]:
    appliance = Appliance.open(Settings(data_dir=data_dir, dev_mode=True))
    try:
        with appliance.sessions() as session:
            row = session.scalars(select(AuditEvent).where(AuditEvent.action == "backup.restore")
                                  .order_by(AuditEvent.seq.desc())).first()
            assert row is not None
            return {"fields": row.fields, "object_ids": row.object_ids}
    finally:
        appliance.close()
