"""The one field-encryption recipe. Only this module and `keys` touch cryptography's hazmat.

A sealed field is::

    0x01 | key version (4 bytes, big endian) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

The associated data binds the table, column, row id and key version, so a ciphertext copied to
another row or column, or relabelled with another version, does not open. Every failure raises
the same opaque `FieldDecryptionError`.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import struct
from collections.abc import Callable, Sequence
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = 1
_HEADER = struct.Struct(">BI")
_NONCE_BYTES = 12
assert _HEADER.size == 5 and _NONCE_BYTES == 12  # written out in `open_column`
KEY_BYTES = 32


class FieldDecryptionError(Exception):
    """A sealed field did not open: wrong key, wrong place, or altered bytes."""

    def __init__(self) -> None:
        super().__init__("sealed field failed authentication (moved, altered or key destroyed)")


@functools.lru_cache(maxsize=256)
def _place_prefix(table: str, column: str) -> bytes:
    return b"\x00".join((b"enclave/field/v1", table.encode(), column.encode())) + b"\x00"


def _associated_data(table: str, column: str, row_id: str, key_version: int) -> bytes:
    return b"%s%s\x00%d" % (_place_prefix(table, column), row_id.encode(), key_version)


def seal(key: bytes, *, key_version: int, table: str, column: str, row_id: str,
         plaintext: str) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    aad = _associated_data(table, column, row_id, key_version)
    body = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), aad)
    return _HEADER.pack(FORMAT, key_version) + nonce + body


def key_version_of(blob: bytes) -> int:
    if len(blob) < _HEADER.size + _NONCE_BYTES + 16 or blob[0] != FORMAT:
        raise FieldDecryptionError()
    return _HEADER.unpack_from(blob)[1]


PreparedKey = AESGCM


def prepare_key(key: bytes) -> PreparedKey:
    """A key made ready to open many fields (making it costs more than opening a short one)."""
    return AESGCM(key)


def open_sealed(key_for_version: Callable[[int], bytes | PreparedKey | None], *, table: str,
                column: str, row_id: str, blob: bytes) -> str:
    """Open a sealed field; the lookup gives the key of a version, raw or prepared."""
    version = key_version_of(blob)
    key = key_for_version(version)
    if key is None:
        raise FieldDecryptionError()
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = blob[_HEADER.size:_HEADER.size + _NONCE_BYTES]
    aad = _associated_data(table, column, row_id, version)
    try:
        plaintext = aead.decrypt(nonce, blob[_HEADER.size + _NONCE_BYTES:], aad)
    except InvalidTag:
        raise FieldDecryptionError() from None
    return plaintext.decode("utf-8")


def place(table: str, column: str) -> bytes:
    """Where a field lives, as `open_at` takes it (work it out once for many rows)."""
    return _place_prefix(table, column)


def open_at(key_for: Callable[[str, int], PreparedKey | None], where: bytes, row_id: str,
            blob: bytes) -> str:
    """`open_sealed` for many rows of one column (a compiled page): `where` from `place`, the
    prepared key looked up by (row id, version). Same checks, same associated data, same
    opaque error."""
    if len(blob) < _HEADER.size + _NONCE_BYTES + 16 or blob[0] != FORMAT:
        raise FieldDecryptionError()
    version = _HEADER.unpack_from(blob)[1]
    aead = key_for(row_id, version)
    if aead is None:
        raise FieldDecryptionError()
    try:
        plaintext = aead.decrypt(blob[_HEADER.size:_HEADER.size + _NONCE_BYTES],
                                 blob[_HEADER.size + _NONCE_BYTES:],
                                 b"%s%s\x00%d" % (where, row_id.encode(), version))
    except InvalidTag:
        raise FieldDecryptionError() from None
    return plaintext.decode("utf-8")


def row_places(ids: Sequence[str], versions: Sequence[int]) -> tuple[list[bytes], list[bytes]]:
    """For rows of these ids and key versions: each one's sealed-value header and the end of
    its associated data, as `open_column` takes them (worked out once per row, not per value)."""
    headers = list(map(_HEADER.pack, itertools.repeat(FORMAT, len(versions)), versions))
    suffixes = list(map(b"%s\x00%d".__mod__, zip(map(str.encode, ids), versions, strict=True)))
    return headers, suffixes


def open_column(keys: Sequence[PreparedKey | None], headers: Sequence[bytes],
                suffixes: Sequence[bytes], where: bytes, blobs: Sequence[bytes | None],
                ) -> list[str | None]:
    """Open one column of a page: blob i under key i, sealed at `where` (`place`) in row i
    (`row_places`), under that row's own key version. None stays None. Same associated data as
    `open_sealed`; any value that does not open raises the same opaque error."""
    # Offsets written out (header 5 bytes, nonce 12, tag 16): this runs for every sealed
    # value of a page, so the usual column (every value present) is opened by C loops.
    if None in blobs or None in keys:
        return [None if blob is None else _open_one(key, header, suffix, where, blob)
                for key, header, suffix, blob in zip(keys, headers, suffixes, blobs,
                                                     strict=True)]
    present = cast(Sequence[bytes], blobs)
    prepared = cast(Sequence[PreparedKey], keys)
    if list(map(_HEADER_PART, present)) != headers or min(map(len, present), default=33) < 33:
        raise FieldDecryptionError()
    try:
        opened = list(map(AESGCM.decrypt, prepared, map(_NONCE_PART, present),
                          map(_BODY_PART, present), map(where.__add__, suffixes)))
    except InvalidTag:
        raise FieldDecryptionError() from None
    return list(map(bytes.decode, opened))


# A sealed value's parts, cut by C code (`operator.itemgetter` of a slice).
_HEADER_PART = operator.itemgetter(slice(0, 5))
_NONCE_PART = operator.itemgetter(slice(5, 17))
_BODY_PART = operator.itemgetter(slice(17, None))


def _open_one(key: PreparedKey | None, header: bytes, suffix: bytes, where: bytes,
              blob: bytes) -> str:
    if key is None or blob[:5] != header or len(blob) < 33:
        raise FieldDecryptionError()
    try:
        return key.decrypt(blob[5:17], blob[17:], where + suffix).decode()
    except InvalidTag:
        raise FieldDecryptionError() from None


def wrap_key(wrapping_key: bytes, key: bytes, *, label: bytes) -> bytes:
    """Wrap a key under another with AES-GCM; `label` names what the key is for and where."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(wrapping_key).encrypt(nonce, key, b"enclave/wrap/v1\x00" + label)


def unwrap_key(wrapping_key: bytes | PreparedKey, wrapped: bytes, *, label: bytes) -> bytes:
    aead = wrapping_key if isinstance(wrapping_key, AESGCM) else AESGCM(wrapping_key)
    try:
        return aead.decrypt(
            wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], b"enclave/wrap/v1\x00" + label
        )
    except (InvalidTag, ValueError):
        raise FieldDecryptionError() from None


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
