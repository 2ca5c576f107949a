"""The backup file's pieces without a database: tar streaming, signatures, identities, pruning."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from backup_support import ADMIN, add_officer, new_officer, seed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import backup
from backup.errors import EXIT_CODES, BackupError, BadSignature, Tampered, Truncated, VersionTooNew
from backup.identity import load_identities, validate_recipient
from backup.manifest import TrustAnchor, check_format, check_signature, fingerprint, signer_block
from backup.retention import BackupInfo, list_backups, plan_prune
from backup.tarstream import TarParser, tar_end, tar_member
from schema.runtime import Appliance


def test_public_surface_is_pinned() -> None:
    assert set(backup.__all__) == {
        "EXIT_CODES", "NO_PROGRESS", "BackupError", "BackupInfo", "BadSignature", "CreateResult",
        "Identities", "Manifest", "Progress", "PrunePlan", "RestoreResult", "Tampered",
        "TargetNotEmpty", "Truncated", "TrustAnchor", "VerifyResult", "VersionTooNew",
        "WrongIdentity", "appliance_anchor", "apply_prune", "create_backup", "fingerprint",
        "list_backups", "load_identities", "plan_prune", "restore_backup", "validate_recipient",
        "verify_backup"}
    assert all(hasattr(backup, name) for name in backup.__all__)


def test_every_refusal_has_a_distinct_exit_code() -> None:
    assert EXIT_CODES == {"BackupError": 1, "BadSignature": 10, "WrongIdentity": 11,
                          "Truncated": 12, "Tampered": 13, "TargetNotEmpty": 14,
                          "VersionTooNew": 15}


# -- the streamed tar -------------------------------------------------------------------------

def _parse(data: bytes, pieces: int = 1) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    current: list[bytes] = []
    name: list[str] = []

    parser = TarParser(on_start=lambda n, size: (name.append(n), current.clear()),
                       on_data=current.append,
                       on_end=lambda: found.append((name[-1], b"".join(current))))
    rng = random.Random(pieces)
    cuts = sorted(rng.sample(range(1, len(data)), pieces - 1)) if pieces > 1 else []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        parser.feed(data[start:end])
    parser.close()
    return found


def test_tar_stream_round_trips_in_any_pieces_and_standard_tar_reads_it() -> None:
    members = [("keys.json", b"{}"), ("tables/a/000001.jsonl", b""),
               ("tables/b/000001.jsonl", b"x" * 1000), ("tables/b/000002.jsonl", b"y" * 512)]
    body = b"".join(tar_member(n, d, 1_700_000_000) for n, d in members)
    data = body + tar_end(len(body))
    assert len(data) % 10240 == 0
    for pieces in (1, 2, 7, 300):
        assert _parse(data, pieces) == members
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == [n for n, _ in members]


def test_tar_stream_refuses_what_it_never_writes() -> None:
    body = tar_member("keys.json", b"{}", 0)
    with pytest.raises(Truncated):
        _parse(body)  # no end-of-archive marker
    with pytest.raises(Tampered):
        _parse(body + tar_end(len(body)) + b"\x01" * 512)
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    link = info.tobuf(format=tarfile.GNU_FORMAT)
    with pytest.raises(Tampered):
        _parse(link + tar_end(len(link)))
    damaged = bytearray(body)
    damaged[10] ^= 1  # the header checksum no longer matches
    with pytest.raises(Tampered):
        _parse(bytes(damaged) + tar_end(len(damaged)))


# -- the signature --------------------------------------------------------------------------

def _signed(key: Ed25519PrivateKey, **extra: object) -> tuple[bytes, bytes]:
    manifest = json.dumps({"format": "enclave-backup", "format_version": 1,
                           "signer": signer_block(key, 1), **extra}).encode()
    return manifest, key.sign(manifest)


def test_only_a_trusted_signer_is_accepted() -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    anchor = TrustAnchor.of_keys([ours.public_key()], source="this appliance")
    manifest, signature = _signed(ours)
    assert check_signature(manifest, signature, anchor) == fingerprint(ours.public_key())
    by_fingerprint = TrustAnchor.of_fingerprint(fingerprint(ours.public_key()).upper())
    assert check_signature(manifest, signature, by_fingerprint)

    forged, forged_signature = _signed(theirs)  # self-consistent: names the key that signed
    for trusted in (anchor, by_fingerprint):
        with pytest.raises(BadSignature, match="another appliance"):
            check_signature(forged, forged_signature, trusted)
    altered = manifest.replace(b'"format_version": 1', b'"format_version": 1 ')
    with pytest.raises(BadSignature, match="altered"):
        check_signature(altered, signature, anchor)
    with pytest.raises(BadSignature):
        check_signature(manifest, theirs.sign(manifest), anchor)  # names ours, signed by theirs
    with pytest.raises(BackupError, match="64-hex"):
        TrustAnchor.of_fingerprint("abc")


def test_a_newer_format_is_named_before_the_signature() -> None:
    manifest, _ = _signed(Ed25519PrivateKey.generate(), format_version=99)
    with pytest.raises(VersionTooNew, match="99"):
        check_format(manifest.replace(b'"format_version": 1, ', b""))
    check_format(b"not json")  # left for the signature check to refuse


# -- identities and recipients ----------------------------------------------------------------

def test_identity_files_and_recipients_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no identity file"):
        load_identities(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing here\n")
    with pytest.raises(BackupError, match="holds no age identity"):
        load_identities(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_text("AGE-SECRET-KEY-1NOPE\n")
    with pytest.raises(BackupError, match="line 1"):
        load_identities(tmp_path / "bad.txt")
    for bad in ("", "age1", "age1qqqq", "ssh-ed25519 AAAAC3Nza"):
        with pytest.raises(BackupError):
            validate_recipient(bad)
    identities = load_identities(_officer_file(tmp_path))
    assert len(identities.identities) == 1 and "AGE-SECRET" not in repr(identities)


def _officer_file(tmp_path: Path) -> Path:
    from pyrage import x25519
    identity = x25519.Identity.generate()
    path = tmp_path / "officer.txt"
    path.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    return path


# -- retention ------------------------------------------------------------------------------

def _info(when: str, status: str = "complete") -> BackupInfo:
    created = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
    return BackupInfo(Path(f"/b/{when}.tar"), created, 1, "a", status)


def test_prune_keeps_the_newest_per_day_week_and_month() -> None:
    backups = [_info(t) for t in (
        "2026-11-22T03:00", "2026-11-22T01:00", "2026-11-21T03:00", "2026-11-20T03:00",
        "2026-11-14T03:00", "2026-11-07T03:00", "2026-10-31T03:00", "2026-09-30T03:00",
        "2026-08-15T03:00")] + [_info("2026-11-23T00:00", "incomplete")]
    plan = plan_prune(backups, keep_daily=2, keep_weekly=3, keep_monthly=3)
    kept = {p.name.removesuffix(".tar"): why for p, why in plan.keep.items()}
    assert kept == {
        "2026-11-22T03:00": ["newest", "daily", "weekly", "monthly"],
        "2026-11-21T03:00": ["daily"],
        "2026-11-14T03:00": ["weekly"],   # week 46 (20th is in week 47 with the 22nd)
        "2026-11-07T03:00": ["weekly"],
        "2026-10-31T03:00": ["monthly"],
        "2026-09-30T03:00": ["monthly"],
    }
    assert sorted(b.path.name for b in plan.remove) == [
        "2026-08-15T03:00.tar", "2026-11-20T03:00.tar", "2026-11-22T01:00.tar"]
    assert [b.status for b in plan.untouched] == ["incomplete"]
    only_newest = plan_prune(backups, keep_daily=1)
    assert list(only_newest.keep) == [backups[0].path]
    with pytest.raises(BackupError, match="at least one"):
        plan_prune(backups)


def test_prune_never_keeps_a_damaged_backup_in_place_of_a_good_one() -> None:
    """A damaged newest backup (bit rot, a bad disk) does not count: the good one before it
    stays, and the damaged one is left in place, not removed, for someone to look at."""
    backups = [_info(t) for t in ("2026-11-22T03:00", "2026-11-22T01:00", "2026-11-21T03:00")]
    checked: list[str] = []

    def damaged(backup: BackupInfo) -> str | None:
        checked.append(backup.path.name)
        return "payload.age does not match" if backup is backups[0] else None

    plan = plan_prune(backups, keep_daily=1, damaged=damaged)
    assert list(plan.keep) == [backups[1].path]           # the newest sound one of that day
    assert [b.path for b in plan.remove] == [backups[2].path]
    assert [(b.path, b.status) for b in plan.untouched] == [
        (backups[0].path, "damaged: payload.age does not match")]
    assert checked == ["2026-11-22T03:00.tar", "2026-11-22T01:00.tar"]  # only would-be keepers


def test_payload_problem_finds_a_flipped_payload_byte(appliance: Appliance,
                                                     tmp_path: Path) -> None:
    from backup.archive import read_layout
    from backup.retention import payload_problem
    add_officer(appliance, new_officer(tmp_path / "offline"))
    seed(appliance, 3)
    made = backup.create_backup(appliance, tmp_path / "backups", principal=ADMIN).path
    (info,) = list_backups(made.parent)
    assert payload_problem(info) is None
    layout = read_layout(made)
    data = bytearray(made.read_bytes())
    data[layout.payload_offset + layout.payload_size // 2] ^= 0x01
    made.write_bytes(bytes(data))
    (damaged,) = list_backups(made.parent)
    assert damaged.complete  # list reads the structure only ...
    assert payload_problem(damaged) == "payload.age does not match the manifest's SHA-256"


def test_list_shows_unfinished_and_unreadable_files(tmp_path: Path) -> None:
    name = "enclave-backup-01a200ac-7f6e-71ef-bb54-5163807aa76e-20261122T003354.894Z.tar"
    (tmp_path / (name + ".partial")).write_bytes(b"\0" * 100)
    (tmp_path / name).write_bytes(b"garbage" * 100)
    (tmp_path / "notes.txt").write_text("not a backup")
    found = {b.path.name: b.status for b in list_backups(tmp_path)}
    assert found[name + ".partial"] == "incomplete"
    assert found[name].startswith("unreadable")
    assert "notes.txt" not in found
