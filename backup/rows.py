"""Rows as portable JSON lines, the same from SQLite and PostgreSQL, readable by anyone.

One JSON object per row, its columns in table order: binary and sealed values as base64,
datetimes as ISO 8601 in UTC, dates as YYYY-MM-DD, decimals (money) as exact text, JSON columns
as JSON, everything else as it is. A backup from
SQLite restores into PostgreSQL and the other way round.

`data_keys` is not among the tables: a backup carries the data keys unwrapped in `keys.json`
(under its age encryption) and a restore wraps them again under the target's own
key-encryption key, which never leaves its machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Date, LargeBinary, Numeric, Table, select

from backup.errors import Tampered
from storage.columns import UTCDateTime
from storage.models import Base
from storage.sealed import Sealed, SealedColumn

#: Travels as keys.json, not as rows (its rows are wrapped by a key that stays on the machine).
KEYS_TABLE = "data_keys"
_Codec = Callable[[Any], Any]


def backup_tables() -> list[Table]:
    """Every table a backup holds, parents before children (foreign keys)."""
    return [t for t in Base.metadata.sorted_tables if t.name != KEYS_TABLE]


def table_named(name: str) -> Table | None:
    table = Base.metadata.tables.get(name)
    return None if table is None or name == KEYS_TABLE else table


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: str) -> bytes:
    return base64.b64decode(value.encode("ascii"), validate=True)


def _encode_sealed(value: Sealed) -> str:
    return _b64(value.ciphertext)


def _encode_binary(value: bytes) -> str:
    return _b64(bytes(value))


def _encode_datetime(value: dt.datetime) -> str:
    return value.isoformat()


def _decode_sealed(value: str) -> Sealed:
    return Sealed(_unb64(value))


def _codecs(table: Table) -> list[tuple[str, _Codec | None, _Codec | None]]:
    """(column, encode, decode) for every column; None where the value passes as it is."""
    found: list[tuple[str, _Codec | None, _Codec | None]] = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, SealedColumn):
            found.append((column.name, _encode_sealed, _decode_sealed))
        elif isinstance(kind, LargeBinary):
            found.append((column.name, _encode_binary, _unb64))
        elif isinstance(kind, UTCDateTime):
            found.append((column.name, _encode_datetime, dt.datetime.fromisoformat))
        elif isinstance(kind, Numeric) and kind.asdecimal:
            found.append((column.name, str, decimal.Decimal))
        elif isinstance(kind, Date):
            found.append((column.name, dt.date.isoformat, dt.date.fromisoformat))
        else:
            found.append((column.name, None, None))
    return found


def dump_rows(connection: Connection, table: Table, *, batch: int = 1000) -> Iterator[bytes]:
    """The table's rows in primary-key order, one JSON line each, streamed (server-side cursor
    on PostgreSQL), so memory does not grow with the table."""
    encoders = [(name, encode) for name, encode, _ in _codecs(table)]
    statement = select(table).order_by(*table.primary_key.columns)
    result = connection.execution_options(yield_per=batch).execute(statement)
    try:
        for row in result:
            document = {name: (value if encode is None or value is None else encode(value))
                        for (name, encode), value in zip(encoders, row, strict=True)}
            yield (json.dumps(document, separators=(",", ":"), ensure_ascii=False)
                   + "\n").encode("utf-8")
    finally:
        result.close()


class RowDecoder:
    """Turns a table's JSON lines back into values its columns accept."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._decoders = {name: decode for name, _, decode in _codecs(table)}

    def decode(self, line: bytes) -> dict[str, Any]:
        try:
            document = json.loads(line)
        except ValueError:
            raise Tampered(f"a row of {self.table.name} is not JSON") from None
        if not isinstance(document, dict):
            raise Tampered(f"a row of {self.table.name} is not a JSON object")
        values: dict[str, Any] = {}
        for name, value in document.items():
            if name not in self._decoders:
                raise Tampered(f"{self.table.name} has no column {name!r}")
            decode = self._decoders[name]
            try:
                values[name] = value if decode is None or value is None else decode(value)
            except (ValueError, TypeError):
                raise Tampered(f"{self.table.name}.{name} holds a value of the wrong kind") from None
        return values
