"""The declarative base and what every guarded CRM record carries."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, query_expression

from storage.columns import UTCDateTime
from storage.sealed import Sealed, SealedColumn


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class RecordMixin:
    """Owner and team (what record rules read), times, and the record's custom field values.

    Sealed values of a record (its own sealed columns and `custom_sealed`) are all sealed under
    the record's own subject key at `key_version` (rows move whole on re-encryption); None while
    the record holds nothing sealed.
    """

    owner: Mapped[str] = mapped_column(String(100), index=True)
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    key_version: Mapped[int | None] = mapped_column(Integer, index=True)
    #: Custom fields classified public or internal: {key: value}.
    custom_plain: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Custom fields classified confidential or restricted: one sealed JSON object.
    custom_sealed: Mapped[Sealed | None] = mapped_column(SealedColumn)

    @declared_attr
    def current_wrapped_key(cls) -> Mapped[bytes | None]:
        """The wrapped subject key of `key_version`, when the query asked for it (saves a
        round trip per page: see `storage.models.current_subject_key`)."""
        return query_expression()
