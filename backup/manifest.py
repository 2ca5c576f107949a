"""MANIFEST.json: what a backup holds, signed by the appliance that made it.

The signature (MANIFEST.sig, 64 raw bytes) is Ed25519 over the exact bytes of MANIFEST.json,
made with the appliance's `audit_signing` key, the same key that signs its audit checkpoints.
A manifest is trusted only against a key the checker already trusts: the appliance's own keys,
or a fingerprint given with `--signer`. The public key written inside the manifest is never
trusted by itself, so a forger who re-signs with a key of their own is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backup.errors import BackupError, BadSignature, Tampered, VersionTooNew

FORMAT = "enclave-backup"
FORMAT_VERSION = 1


def fingerprint(public_key: Ed25519PublicKey | bytes) -> str:
    """SHA-256 of the raw 32-byte public key, in hex: what operators compare and pass."""
    raw = public_key if isinstance(public_key, bytes) else \
        public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def normalise_fingerprint(text: str) -> str:
    cleaned = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise BackupError("--signer takes the 64-hex-digit fingerprint that `enclave backup "
                          "recipients list` prints")
    return cleaned


@dataclass(frozen=True)
class TableEntry:
    name: str
    rows: int
    sha256: str
    members: int


@dataclass(frozen=True)
class Manifest:
    schema_revision: str
    appliance_id: str
    created_at: str
    database: str
    signer: dict[str, Any]
    recipients: list[str]
    payload: dict[str, Any]
    keys: dict[str, Any]
    tables: list[TableEntry]
    producer: str = "enclave"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    erasures: int = 0
    notes: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        document = asdict(self)
        ordered = {k: document[k] for k in (
            "format", "format_version", "producer", "created_at", "appliance_id",
            "schema_revision", "database", "signer", "recipients", "payload", "keys",
            "tables", "erasures", "notes")}
        return (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @property
    def signer_fingerprint(self) -> str:
        return str(self.signer["fingerprint"])

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def table(self, name: str) -> TableEntry | None:
        return next((t for t in self.tables if t.name == name), None)


def signer_block(private_key: Ed25519PrivateKey, key_version: int) -> dict[str, Any]:
    public = private_key.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "algorithm": "ed25519", "key": "audit_signing", "key_version": key_version,
        "public_key": base64.b64encode(raw).decode(), "fingerprint": fingerprint(raw),
        "public_key_pem": public.public_bytes(Encoding.PEM,
                                              PublicFormat.SubjectPublicKeyInfo).decode(),
    }


def sign(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    return private_key.sign(manifest_bytes)


def check_format(manifest_bytes: bytes) -> None:
    """Refuse a newer format before anything else: its layout may not be this one's."""
    try:
        document = json.loads(manifest_bytes)
    except ValueError:
        return  # the signature check names this
    if isinstance(document, dict):
        version = document.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise VersionTooNew(f"backup format {version} is newer than this Enclave reads "
                                f"({FORMAT_VERSION}); restore it with a newer Enclave")


def _embedded_key(manifest_bytes: bytes) -> bytes | None:
    try:
        raw = base64.b64decode(json.loads(manifest_bytes)["signer"]["public_key"], validate=True)
    except (ValueError, KeyError, TypeError):
        return None
    return raw if len(raw) == 32 else None


def _verifies(raw_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class TrustAnchor:
    """The signers a check trusts: an appliance's own keys, or one fingerprint (`--signer`)."""

    keys: tuple[bytes, ...] = ()
    fingerprint: str | None = None
    source: str = "this appliance"

    @classmethod
    def of_keys(cls, keys: Iterable[Ed25519PublicKey], source: str) -> TrustAnchor:
        return cls(keys=tuple(k.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in keys),
                   source=source)

    @classmethod
    def of_fingerprint(cls, text: str) -> TrustAnchor:
        value = normalise_fingerprint(text)
        return cls(fingerprint=value, source=f"--signer {value}")

    @property
    def fingerprints(self) -> list[str]:
        return [self.fingerprint] if self.fingerprint else [fingerprint(k) for k in self.keys]


def check_signature(manifest_bytes: bytes, signature: bytes, anchor: TrustAnchor) -> str:
    """Return the fingerprint of the trusted signer, or raise `BadSignature` saying why."""
    embedded = _embedded_key(manifest_bytes)
    if anchor.fingerprint is not None:
        trusted = [embedded] if embedded is not None and \
            fingerprint(embedded) == anchor.fingerprint else []
    else:
        trusted = list(anchor.keys)
    for key in trusted:
        if _verifies(key, signature, manifest_bytes):
            if embedded != key:
                raise BadSignature("MANIFEST.json names another signer than the key that "
                                   "signed it")
            return fingerprint(key)
    if embedded is not None and _verifies(embedded, signature, manifest_bytes):
        raise BadSignature(f"signed by another appliance (signer {fingerprint(embedded)}), not "
                           f"by {anchor.source} ({', '.join(anchor.fingerprints)})")
    raise BadSignature("MANIFEST.json does not match its signature: the manifest or the "
                       "signature was altered")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise Tampered(f"MANIFEST.json is malformed: {what}")


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and \
        all(c in "0123456789abcdef" for c in value)


def parse(manifest_bytes: bytes) -> Manifest:
    """The manifest's content, checked for shape. Call only after `check_signature`."""
    try:
        document = json.loads(manifest_bytes)
    except ValueError:
        raise Tampered("MANIFEST.json is not JSON") from None
    _require(isinstance(document, dict), "not an object")
    _require(document.get("format") == FORMAT, "not an Enclave backup manifest")
    _require(document.get("format_version") == FORMAT_VERSION, "unknown format version")
    try:
        tables = [TableEntry(name=str(t["name"]), rows=int(t["rows"]), sha256=str(t["sha256"]),
                             members=int(t["members"])) for t in document["tables"]]
        payload, keys = dict(document["payload"]), dict(document["keys"])
        manifest = Manifest(
            schema_revision=str(document["schema_revision"]),
            appliance_id=str(document["appliance_id"]), created_at=str(document["created_at"]),
            database=str(document["database"]), signer=dict(document["signer"]),
            recipients=[str(r) for r in document["recipients"]], payload=payload, keys=keys,
            tables=tables, producer=str(document.get("producer", "")),
            erasures=int(document.get("erasures", 0)),
            notes=[str(n) for n in document.get("notes", [])],
        )
    except (KeyError, TypeError, ValueError):
        raise Tampered("MANIFEST.json is malformed: a field is missing or of the wrong "
                       "kind") from None
    _require(isinstance(payload.get("size"), int) and payload["size"] >= 0, "payload size")
    _require(_hex64(payload.get("sha256")), "payload sha256")
    _require(_hex64(keys.get("sha256")) and isinstance(keys.get("count"), int), "keys")
    _require(all(_hex64(t.sha256) and t.rows >= 0 and t.members >= 1 for t in tables),
             "tables")
    _require(len({t.name for t in tables}) == len(tables), "a table appears twice")
    _require(bool(manifest.recipients), "no recipients")
    return manifest
