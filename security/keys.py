"""Versioned data keys under the KEK, and per-data-subject keys under the field data key.

Purposes:
  field          wraps each data subject's own key; rotated by `enclave keys rotate`
  blind_index    HMAC key for exact-match search
  audit_signing  Ed25519 key that signs audit checkpoints
  token_signing  Ed25519 key that signs access tokens
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from security.blindindex import blind_index
from security.errors import ConfigurationError
from security.fieldcrypt import (
    FieldDecryptionError,
    PreparedKey,
    new_key,
    prepare_key,
    unwrap_key,
    wrap_key,
)
from storage.models import DataKey, SubjectKey

FIELD = "field"
BLIND_INDEX = "blind_index"
AUDIT_SIGNING = "audit_signing"
TOKEN_SIGNING = "token_signing"
PURPOSES = (FIELD, BLIND_INDEX, AUDIT_SIGNING, TOKEN_SIGNING)
#: How long an opened subject key is kept for reuse, and for how many subjects at most
#: (per process).
OPENED_SUBJECT_KEY_SECONDS = 60.0
OPENED_SUBJECT_KEYS_MAX = 50_000


#: An opened subject key's lookup: (subject, version, wrapped key as stored).
_OpenedKey = tuple[str, int, bytes]


def _data_key_label(purpose: str, version: int) -> bytes:
    return f"data-key\x00{purpose}\x00{version}".encode()


def _subject_key_label(subject_id: str, version: int) -> bytes:
    return f"subject-key\x00{subject_id}\x00{version}".encode()


def wrap_data_key(kek: bytes, purpose: str, version: int, key: bytes) -> bytes:
    """Wrap a data key under a key-encryption key, bound to its purpose and version.

    Public for restore: a backup carries data keys unwrapped (inside its age encryption), and a
    restore re-wraps them under the target's own key-encryption key."""
    return wrap_key(kek, key, label=_data_key_label(purpose, version))


def unwrap_data_key(kek: bytes, purpose: str, version: int, wrapped: bytes) -> bytes:
    """Open a wrapped data key; raises `FieldDecryptionError` if it does not open."""
    return unwrap_key(kek, wrapped, label=_data_key_label(purpose, version))


def _new_key_material(purpose: str) -> bytes:
    if purpose in (AUDIT_SIGNING, TOKEN_SIGNING):
        return Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
    return new_key()


class KeyRing:
    """The unwrapped data keys, loaded once and reloaded when a version is added."""

    def __init__(self, kek: bytes, keys: dict[tuple[str, int], bytes], retired: set[tuple[str, int]]):
        self._kek = kek
        self._keys = keys
        self._retired = retired
        self._prepared_field_keys: dict[int, PreparedKey] = {}
        # Subject keys opened recently, by (subject, version, wrapped key as stored): a page of
        # 50 records would otherwise unwrap 50 keys on every request. The wrapped key is part of
        # the lookup, so a key is only ever reused for a row the database still holds (an
        # erased subject's rows are gone, and no request can name the key again); entries
        # expire after OPENED_SUBJECT_KEY_SECONDS, so an erasure made by another process leaves
        # the plain key in this one's memory for at most that long (this process forgets it
        # at once). A new key ring (keys rotated) starts empty. Every opened key is dropped at
        # the end of each period of that length (so none is kept longer), which keeps the
        # lookup of a page's keys a plain dictionary lookup per row.
        self._opened: dict[_OpenedKey, tuple[bytes, PreparedKey]] = {}
        self._prepared: dict[_OpenedKey, PreparedKey] = {}
        self._opened_of: dict[str, list[_OpenedKey]] = {}
        self._opened_until = 0.0

    @classmethod
    def load(cls, session: Session, kek: bytes) -> KeyRing:
        keys: dict[tuple[str, int], bytes] = {}
        retired: set[tuple[str, int]] = set()
        for row in session.scalars(select(DataKey)):
            try:
                keys[(row.purpose, row.version)] = unwrap_data_key(
                    kek, row.purpose, row.version, row.wrapped)
            except Exception:
                raise ConfigurationError(
                    f"data key {row.purpose} v{row.version} does not open with this "
                    "key-encryption key (wrong key file or passphrase?)"
                ) from None
            if row.retired_at is not None:
                retired.add((row.purpose, row.version))
        missing = [p for p in PURPOSES if not any(k[0] == p for k in keys)]
        if missing:
            raise ConfigurationError(f"data keys missing: {', '.join(missing)}; run `enclave init`")
        return cls(kek, keys, retired)

    @property
    def fingerprint(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._keys))

    def current_version(self, purpose: str) -> int:
        return max(v for (p, v) in self._keys if p == purpose)

    def versions(self, purpose: str) -> list[int]:
        return sorted(v for (p, v) in self._keys if p == purpose)

    def key(self, purpose: str, version: int | None = None) -> bytes | None:
        if version is None:
            version = self.current_version(purpose)
        return self._keys.get((purpose, version))

    def signing_key(self, purpose: str, version: int | None = None) -> Ed25519PrivateKey:
        raw = self.key(purpose, version)
        if raw is None:
            raise ConfigurationError(f"no {purpose} key v{version}")
        return Ed25519PrivateKey.from_private_bytes(raw)

    def search_index(self, kind: str, value: str) -> str:
        """The blind index of a search value (what an indexed sealed field is matched by)."""
        return blind_index(self.key(BLIND_INDEX) or b"", kind, value)

    # -- subject keys ---------------------------------------------------------------------

    def unwrap_subject_key(self, subject_id: str, version: int, wrapped: bytes) -> bytes:
        return self.open_subject_key(subject_id, version, wrapped)[0]

    def open_subject_key(self, subject_id: str, version: int,
                         wrapped: bytes) -> tuple[bytes, PreparedKey]:
        """The subject's key, and the same prepared for AES-GCM (both reused a while)."""
        lookup = (subject_id, version, bytes(wrapped))
        self._expire_opened()
        found = self._opened.get(lookup)
        if found is not None:
            return found
        key = self._unwrap_subject_key(subject_id, version, lookup[2])
        prepared = prepare_key(key)
        if len(self._opened) >= OPENED_SUBJECT_KEYS_MAX:
            self._drop_opened()
        self._opened[lookup] = (key, prepared)
        self._prepared[lookup] = prepared
        self._opened_of.setdefault(subject_id, []).append(lookup)
        return key, prepared

    def prepared_subject_keys(self, subjects: Iterable[tuple[str, int, bytes]],
                              ) -> list[PreparedKey]:
        """`open_subject_key`'s prepared keys for many (subject, version, wrapped key) at once
        (a page of rows), with the same reuse: looked up by C loops when all are opened."""
        self._expire_opened()
        lookups = list(subjects)
        found: list[PreparedKey | None] = list(map(self._prepared.get, lookups))
        if None not in found:
            return cast(list[PreparedKey], found)
        return [key if key is not None else self.open_subject_key(*lookup)[1]
                for key, lookup in zip(found, lookups, strict=True)]

    def _expire_opened(self) -> None:
        now = time.monotonic()
        if now >= self._opened_until:
            self._drop_opened()
            self._opened_until = now + OPENED_SUBJECT_KEY_SECONDS

    def _drop_opened(self) -> None:
        self._opened.clear()
        self._prepared.clear()
        self._opened_of.clear()

    def forget_subject(self, subject_id: str) -> None:
        """Drop the opened keys of a subject (its keys are being destroyed)."""
        for lookup in self._opened_of.pop(subject_id, ()):
            self._opened.pop(lookup, None)
            self._prepared.pop(lookup, None)

    def holds_opened_key(self, subject_id: str) -> bool:
        """Whether this process still keeps an opened key of the subject in memory."""
        return subject_id in self._opened_of

    def _unwrap_subject_key(self, subject_id: str, version: int, wrapped: bytes) -> bytes:
        prepared = self._prepared_field_keys.get(version)
        if prepared is None:
            field_key = self.key(FIELD, version)
            if field_key is None:
                raise ConfigurationError(f"field key v{version} is gone")
            prepared = self._prepared_field_keys[version] = prepare_key(field_key)
        return unwrap_key(prepared, wrapped, label=_subject_key_label(subject_id, version))

    def load_subject_keys(self, session: Session, subject_ids: Iterable[str], *,
                          skip_unopened: bool = False) -> dict[tuple[str, int], bytes]:
        """The subjects' keys by (subject, version). A wrapped key that does not open (moved
        from another subject, altered) raises `FieldDecryptionError`, or with `skip_unopened`
        is left out, so that what it sealed fails to open field by field."""
        ids = list(set(subject_ids))
        found: dict[tuple[str, int], bytes] = {}
        for start in range(0, len(ids), 500):
            rows = session.execute(
                select(SubjectKey.subject_id, SubjectKey.version, SubjectKey.wrapped)
                .where(SubjectKey.subject_id.in_(ids[start:start + 500]))
            )
            for subject_id, version, wrapped in rows:
                try:
                    found[(subject_id, version)] = self.unwrap_subject_key(
                        subject_id, version, wrapped)
                except FieldDecryptionError:
                    if not skip_unopened:
                        raise
        return found

    def create_subject_key(self, session: Session, subject_id: str, *,
                           new_subject: bool = False) -> tuple[int, bytes]:
        """Make the subject's key for the current field version (idempotent per version).

        `new_subject`: the caller has just made this id (a row not yet written), so there is no
        key to look for; should one exist all the same, inserting the key fails on its
        primary key and the transaction with it, rather than replacing the key."""
        version = self.current_version(FIELD)
        existing = None if new_subject else session.get(SubjectKey, (subject_id, version))
        if existing is not None:
            return version, self.unwrap_subject_key(subject_id, version, existing.wrapped)
        key = new_key()
        session.add(SubjectKey(
            subject_id=subject_id, version=version,
            wrapped=wrap_key(self.key(FIELD, version) or b"", key,
                             label=_subject_key_label(subject_id, version)),
        ))
        return version, key

    def destroy_subject_keys(self, session: Session, subject_id: str,
                             *, except_version: int | None = None) -> None:
        """Crypto-shred: without these rows the subject's sealed fields open nowhere."""
        self.forget_subject(subject_id)
        statement = delete(SubjectKey).where(SubjectKey.subject_id == subject_id)
        if except_version is not None:
            statement = statement.where(SubjectKey.version != except_version)
        session.execute(statement)


def add_data_key(session: Session, kek: bytes, purpose: str) -> int:
    """Add the next version of `purpose`'s data key; returns the new version."""
    current = session.scalar(select(func.max(DataKey.version)).where(DataKey.purpose == purpose))
    version = (current or 0) + 1
    session.add(DataKey(
        purpose=purpose, version=version,
        wrapped=wrap_data_key(kek, purpose, version, _new_key_material(purpose)),
    ))
    return version


def ensure_data_keys(session: Session, kek: bytes) -> list[str]:
    """Create version 1 of every purpose that has no key yet; returns the purposes created."""
    have = set(session.scalars(select(DataKey.purpose).distinct()))
    created = [p for p in PURPOSES if p not in have]
    for purpose in created:
        add_data_key(session, kek, purpose)
    return created


def retire_unused_field_versions(session: Session) -> list[int]:
    """Mark field key versions that no subject key uses any more as retired."""
    current = session.scalar(select(func.max(DataKey.version)).where(DataKey.purpose == FIELD))
    used = set(session.scalars(select(SubjectKey.version).distinct()))
    retired = []
    for row in session.scalars(select(DataKey).where(DataKey.purpose == FIELD,
                                                     DataKey.retired_at.is_(None))):
        if row.version != current and row.version not in used:
            row.retired_at = dt.datetime.now(dt.UTC)
            retired.append(row.version)
    return retired
