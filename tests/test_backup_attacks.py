"""Attacks on backup files: each is refused with its own error, and the target is untouched.

Every attack runs on SQLite and PostgreSQL against two targets: the live appliance (restored
over with --force, so only the attack can stop it) and a fresh machine (nothing may appear).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backup_support import (
    ADMIN,
    Officer,
    add_officer,
    altered_payload,
    flip,
    new_officer,
    parts,
    resign,
    seed,
    tables,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backup import (
    BackupError,
    BadSignature,
    Tampered,
    Truncated,
    VersionTooNew,
    WrongIdentity,
    appliance_anchor,
    create_backup,
    load_identities,
    restore_backup,
    verify_backup,
)
from backup.archive import read_layout
from schema.runtime import Appliance
from security.config import Settings
from security.keys import AUDIT_SIGNING


@pytest.fixture
def made(appliance: Appliance, tmp_path: Path) -> tuple[Path, Officer]:
    officer = new_officer(tmp_path / "offline")
    add_officer(appliance, officer)
    seed(appliance, 6)
    return create_backup(appliance, tmp_path / "backups", principal=ADMIN).path, officer


def _offset_in(path: Path, needle: bytes, *, after: int = 0) -> int:
    data = path.read_bytes()
    found = data.find(needle)
    assert found >= 0
    return found + after


def _payload_flip(path: Path, out: Path, **_: Any) -> Path:
    layout = read_layout(path)
    return flip(path, out, layout.payload_offset + layout.payload_size // 2)


def _manifest_flip(path: Path, out: Path, **_: Any) -> Path:
    return flip(path, out, _offset_in(path, b'"sha256": "', after=20))


def _signature_flip(path: Path, out: Path, **_: Any) -> Path:
    return flip(path, out, _offset_in(path, read_layout(path).signature, after=7))


def _truncated(path: Path, out: Path, **_: Any) -> Path:
    out.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return out


def _end_cut(path: Path, out: Path, **_: Any) -> Path:
    out.write_bytes(path.read_bytes()[:-700])  # inside the end-of-archive marker
    return out


def _appended(path: Path, out: Path, **_: Any) -> Path:
    out.write_bytes(path.read_bytes() + b"one more thing")
    return out


def _foreign(path: Path, out: Path, **_: Any) -> Path:
    """Another appliance's key signs, and the manifest names that key: self-consistent."""
    return resign(path, out, Ed25519PrivateKey.generate(), embed_key=True)


def _forged_signature(path: Path, out: Path, **_: Any) -> Path:
    """Another key signs, but the manifest still names this appliance's key."""
    return resign(path, out, Ed25519PrivateKey.generate(), embed_key=False)


def _newer_format(path: Path, out: Path, *, appliance: Appliance, **_: Any) -> Path:
    """Signed by this very appliance, but in a format from the future."""
    key = appliance.keyring.signing_key(AUDIT_SIGNING)
    return resign(path, out, key, embed_key=False, change={"format_version": 99})


def _altered_row(path: Path, out: Path, *, appliance: Appliance, officer: Officer,
                 **_: Any) -> Path:
    """A payload re-encrypted with one changed row, under a manifest the appliance signed: only
    the table hash inside tells, so only decrypting finds it."""
    key = appliance.keyring.signing_key(AUDIT_SIGNING)
    return resign(path, out, key, embed_key=False,
                  payload=altered_payload(path, officer, table="contacts"))


ATTACKS: dict[str, tuple[Callable[..., Path], type[BackupError], bool]] = {
    # name: (make the file, expected refusal, refused even without the identity)
    "flipped byte in payload.age": (_payload_flip, Tampered, True),
    "flipped byte in MANIFEST.json": (_manifest_flip, BadSignature, True),
    "flipped byte in MANIFEST.sig": (_signature_flip, BadSignature, True),
    "truncated to half": (_truncated, Truncated, True),
    "end-of-archive cut off": (_end_cut, Truncated, True),
    "bytes appended": (_appended, Tampered, True),
    "signed by another appliance": (_foreign, BadSignature, True),
    "signature forged for this appliance's key": (_forged_signature, BadSignature, True),
    "format version 99": (_newer_format, VersionTooNew, True),
    "row altered and re-encrypted": (_altered_row, Tampered, False),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused_with_its_own_error_and_the_target_untouched(
        attack: str, appliance: Appliance, made: tuple[Path, Officer], tmp_path: Path) -> None:
    path, officer = made
    make, expected, without_identity = ATTACKS[attack]
    bad = make(path, tmp_path / "attacked.tar", appliance=appliance, officer=officer)
    identities = load_identities(officer.identity_file)
    anchor = appliance_anchor(appliance)

    if without_identity:
        with pytest.raises(expected) as caught:
            verify_backup(bad, anchor)
        assert "\n" not in caught.value.message
    else:
        verify_backup(bad, anchor)  # structure, signature and payload hash all hold
    with pytest.raises(expected):
        verify_backup(bad, anchor, identities)

    # Over the live appliance, with --force: refused before anything changes.
    before = tables(appliance.engine)
    with pytest.raises(expected):
        restore_backup(bad, identities, appliance.settings, principal=ADMIN, force=True)
    assert tables(appliance.engine) == before

    # Onto a fresh machine that trusts this appliance's fingerprint: nothing appears.
    fresh = Settings(data_dir=tmp_path / "fresh", dev_mode=True)
    signer = parts(path)[1]["signer"]["fingerprint"]
    with pytest.raises(expected):
        restore_backup(bad, identities, fresh, principal=ADMIN, signer=signer)
    assert not fresh.data_dir.exists()


def test_wrong_identity_is_refused_and_the_target_untouched(
        appliance: Appliance, made: tuple[Path, Officer], tmp_path: Path) -> None:
    path, _ = made
    stranger = load_identities(new_officer(tmp_path / "stranger").identity_file)
    anchor = appliance_anchor(appliance)
    verify_backup(path, anchor)  # the file itself is fine
    with pytest.raises(WrongIdentity, match="encrypted to"):
        verify_backup(path, anchor, stranger)
    before = tables(appliance.engine)
    with pytest.raises(WrongIdentity):
        restore_backup(path, stranger, appliance.settings, principal=ADMIN, force=True)
    assert tables(appliance.engine) == before


def test_a_fresh_target_needs_a_trusted_signer(
        appliance: Appliance, made: tuple[Path, Officer], tmp_path: Path) -> None:
    path, officer = made
    identities = load_identities(officer.identity_file)
    fresh = Settings(data_dir=tmp_path / "fresh", dev_mode=True)
    with pytest.raises(BackupError, match="--signer"):
        restore_backup(path, identities, fresh, principal=ADMIN)
    other = Ed25519PrivateKey.generate().public_key()
    from backup.manifest import fingerprint
    with pytest.raises(BadSignature, match="another appliance"):
        restore_backup(path, identities, fresh, principal=ADMIN, signer=fingerprint(other))
    assert not fresh.data_dir.exists()


def test_a_flipped_byte_anywhere_in_the_file_is_refused(appliance: Appliance,
                                                        made: tuple[Path, Officer],
                                                        tmp_path: Path) -> None:
    """Headers, payload, manifest, signature, every member's tar padding and the end marker:
    no byte of a backup may change unnoticed, even without the recovery identity."""
    path, _ = made
    anchor = appliance_anchor(appliance)
    size = path.stat().st_size
    layout = read_layout(path)
    payload_end = layout.payload_offset + layout.payload_size
    # The payload's tar padding (none in one file out of 512), first and last bytes.
    padding = [payload_end + i for i in range(-layout.payload_size % 512)]
    offsets = sorted({*range(0, size, 97), *padding[:3], *padding[-3:], size - 1})
    accepted = []
    for offset in offsets:
        bad = flip(path, tmp_path / "flipped.tar", offset)
        try:
            verify_backup(bad, anchor)
        except BackupError:
            continue
        accepted.append(offset)
    assert accepted == [], f"flipped bytes at {accepted} of {size} went unnoticed"
