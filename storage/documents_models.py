"""Trusted GraphQL documents: the operations an application may send (issue 7)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.base import Base, utcnow
from storage.columns import UTCDateTime


class TrustedDocument(Base):
    """One registered document, named by `sha256:<hex>` of its exact text, and the API
    clients (ids) allowed to send it."""

    __tablename__ = "trusted_documents"

    id: Mapped[str] = mapped_column(String(71), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    #: A label for operators: the file or manifest it came from.
    name: Mapped[str | None] = mapped_column(String(200))
    clients: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
