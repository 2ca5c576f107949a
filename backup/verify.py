"""`enclave backup verify`: is this file a whole, untampered backup by a signer we trust?

Without an identity: the archive's structure, the manifest's format, its signature against the
trust anchor, and the size and SHA-256 of payload.age. With an identity: also decrypt,
decompress and check keys.json and every table's row count and hash, restoring nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backup.archive import Layout, PayloadReader, payload_sha256, read_layout
from backup.errors import Tampered, Truncated, VersionTooNew
from backup.identity import Identities
from backup.keyfile import read_keys
from backup.manifest import Manifest, TrustAnchor, check_format, check_signature, parse
from backup.payload import decrypt_stream
from backup.progress import NO_PROGRESS, Progress
from backup.rows import backup_tables, table_named
from schema.runtime import Appliance
from security.keys import AUDIT_SIGNING
from storage import migrate


def appliance_anchor(appliance: Appliance) -> TrustAnchor:
    keyring = appliance.keyring
    return TrustAnchor.of_keys((keyring.signing_key(AUDIT_SIGNING, v).public_key()
                                for v in keyring.versions(AUDIT_SIGNING)),
                               source="this appliance")


@dataclass(frozen=True)
class OpenedBackup:
    layout: Layout
    manifest: Manifest
    signer: str


def open_backup(path: Path, anchor: TrustAnchor) -> OpenedBackup:
    """Structure, format and signature; the manifest is trusted only after this."""
    layout = read_layout(path)
    check_format(layout.manifest)
    signer = check_signature(layout.manifest, layout.signature, anchor)
    manifest = parse(layout.manifest)
    if manifest.schema_revision not in migrate.known_revisions():
        raise VersionTooNew(f"the backup's schema revision {manifest.schema_revision} is "
                            "newer than this Enclave knows; restore it with a newer Enclave")
    order = {t.name: i for i, t in enumerate(backup_tables())}
    positions = []
    for entry in manifest.tables:
        if table_named(entry.name) is None:
            raise Tampered(f"the manifest lists an unknown table {entry.name!r}")
        positions.append(order[entry.name])
    if positions != sorted(positions):
        raise Tampered("the manifest lists the tables out of their dependency order")
    size = int(manifest.payload["size"])
    if layout.payload_size < size:
        raise Truncated(f"payload.age is {layout.payload_size} bytes, the manifest says {size}: "
                        "the file was cut short")
    if layout.payload_size > size:
        raise Tampered(f"payload.age is {layout.payload_size} bytes, the manifest says {size}: "
                       "bytes were added")
    return OpenedBackup(layout, manifest, signer)


def check_payload_hash(opened: OpenedBackup, progress: Progress = NO_PROGRESS) -> None:
    if payload_sha256(opened.layout, progress) != opened.manifest.payload["sha256"]:
        raise Tampered("payload.age does not match the manifest's SHA-256: it was altered")


def read_contents(opened: OpenedBackup, identities: Identities, *,
                  on_keys: Callable[[bytes], None] | None = None,
                  on_lines: Callable[[str, list[bytes]], None] | None = None,
                  progress: Progress = NO_PROGRESS, description: str = "decrypting") -> None:
    """Decrypt and check everything, handing keys.json and the rows to the callbacks."""
    manifest = opened.manifest

    def keys(data: bytes) -> None:
        read_keys(data, expected_count=int(manifest.keys["count"]))
        if on_keys is not None:
            on_keys(data)

    reader = _Counting(opened.layout, progress)
    try:
        progress.start(description, opened.layout.payload_size)
        decrypt_stream(reader, manifest, identities, on_keys=keys, on_lines=on_lines)
        progress.finish()
    finally:
        reader.close()
    if reader.sha256.hexdigest() != manifest.payload["sha256"]:  # the file changed under us
        raise Tampered("payload.age changed while it was read")


class _Counting(PayloadReader):
    def __init__(self, layout: Layout, progress: Progress) -> None:
        super().__init__(layout)
        self._progress = progress

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = super().readinto(buffer)
        self._progress.advance(count)
        return count


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    manifest: Manifest
    signer: str
    decrypted: bool


def verify_backup(path: Path, anchor: TrustAnchor, identities: Identities | None = None, *,
                  progress: Progress = NO_PROGRESS) -> VerifyResult:
    opened = open_backup(path, anchor)
    check_payload_hash(opened, progress)
    if identities is not None:
        read_contents(opened, identities, progress=progress)
    return VerifyResult(path, opened.manifest, opened.signer, identities is not None)
