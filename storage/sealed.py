"""Sealed values: what the ORM hands back for an encrypted column.

A `Sealed` holds ciphertext only. It has no way to turn itself into plaintext; the security
guard opens it, after asking the authoriser and recording the access. The column type refuses
to store anything that is not already sealed, so plaintext cannot reach the database by mistake.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator


class Sealed:
    """Ciphertext of one field of one row. Opaque: its repr never shows the bytes."""

    __slots__ = ("_blob",)

    def __init__(self, blob: bytes) -> None:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError("Sealed holds ciphertext bytes")
        self._blob = bytes(blob)

    @property
    def ciphertext(self) -> bytes:
        return self._blob

    def __repr__(self) -> str:
        return f"<Sealed {len(self._blob)} bytes>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other._blob == self._blob

    def __hash__(self) -> int:
        return hash(self._blob)


class SealedColumn(TypeDecorator[Sealed]):
    """A binary column that accepts and returns `Sealed` values only."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        if not isinstance(value, Sealed):
            raise TypeError(
                "an encrypted column accepts only Sealed values; seal the field through the guard"
            )
        return value.ciphertext

    def process_result_value(self, value: Any, dialect: Any) -> Sealed | None:
        if value is None:
            return None
        return Sealed(value)
