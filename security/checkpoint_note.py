"""Audit checkpoints as signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

    enclave/0190c0de-.../audit
    1234
    q5T0cZ4n0Cm2zXcCN5bAk2o5t0Fh9b3Zq6mQ1nD0XQk=
    time 2025-06-02T09:14:03.512345+00:00
    next 1298

    — enclave/0190c0de-.../audit Zx3k1Ab...(base64 of key ID || Ed25519 signature)

Origin, tree size and RFC 9162 root are the standard checkpoint; two extension lines carry the
signing time and the signed promise that the next checkpoint exists by entry `next` (so deleting
later checkpoints to hide a rewritten tail breaks a promise). The key name is the origin, and
the key ID is SHA-256(name || 0x0A || 0x01 || public key)[:4], so any signed-note verifier
(Go's golang.org/x/mod/sumdb/note, `enclave-verify`) checks them with the verifier key
"<name>+<key ID hex>+<base64(0x01 || public key)>" that `enclave audit public-key` prints.

The `audit_checkpoints` row keeps the parts: seq = tree size, hash = root (hex), ts, next_due,
and signature = the whole signature line, whose key name gives the origin back.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from security.keys import AUDIT_SIGNING, KeyRing
from storage.models import Setting

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ED25519 = 0x01
#: The settings row `schema.runtime` writes at initialisation (a test keeps the two equal).
APPLIANCE_ID_SETTING = "appliance_id"


def origin(appliance_id: str) -> str:
    return f"enclave/{appliance_id}/audit"


def appliance_origin(session: Session) -> str:
    appliance_id = session.scalar(select(Setting.value).where(
        Setting.key == APPLIANCE_ID_SETTING))
    return origin(appliance_id or "unknown")


def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The signed-note verifier key: name, key ID (hex) and the typed key (base64)."""
    encoded = base64.b64encode(bytes([ED25519]) + public_key).decode()
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def body(origin_: str, size: int, root: bytes, ts: str, next_due: int) -> str:
    return (f"{origin_}\n{size}\n{base64.b64encode(root).decode()}\n"
            f"time {ts}\nnext {next_due}\n")


def sign(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """The signature line for `text` by `key` under `name`."""
    blob = key_id(name, raw_public_key(key)) + key.sign(text.encode())
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode()}"


def note(text: str, signature_line: str) -> str:
    return f"{text}\n{signature_line}\n"


def signature_name(signature_line: str) -> str | None:
    """The key name of a stored signature line; None for a row of the old format."""
    if not signature_line.startswith(SIGNATURE_PREFIX):
        return None
    return signature_line[len(SIGNATURE_PREFIX):].split(" ", 1)[0]


def row_note(row: Any) -> str:
    """The signed note an `audit_checkpoints` row (seq, hash, ts, next_due, signature) holds."""
    name = signature_name(row.signature)
    if name is None:
        raise ValueError(f"checkpoint {row.seq} predates signed notes")
    return note(body(name, row.seq, bytes.fromhex(row.hash), row.ts, row.next_due),
                row.signature)


def verify_row(row: Any, public_key: Ed25519PublicKey) -> bool:
    """Does the row's signature line sign its note with `public_key`?"""
    name = signature_name(row.signature)
    if name is None:
        return False
    try:
        blob = base64.b64decode(row.signature.rsplit(" ", 1)[1], validate=True)
        text = body(name, row.seq, bytes.fromhex(row.hash), row.ts, row.next_due)
        if blob[:4] != key_id(name, raw_public_key(public_key)):
            return False
        public_key.verify(blob[4:], text.encode())
    except (InvalidSignature, ValueError, IndexError):
        return False
    return True


@dataclass(frozen=True)
class PublicKey:
    """What an offline verifier needs to trust this appliance's audit log."""

    version: int
    name: str
    key_id: str
    ed25519: str  # raw key, base64
    verifier_key: str

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "key_id": self.key_id,
                "ed25519": self.ed25519, "verifier_key": self.verifier_key}


def public_keys(keyring: KeyRing, origin_: str) -> list[PublicKey]:
    """Every audit signing key version, newest first."""
    found = []
    for version in sorted(keyring.versions(AUDIT_SIGNING), reverse=True):
        raw = raw_public_key(keyring.signing_key(AUDIT_SIGNING, version))
        found.append(PublicKey(version, origin_, key_id(origin_, raw).hex(),
                               base64.b64encode(raw).decode(), verifier_key(origin_, raw)))
    return found
