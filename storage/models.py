"""SQLAlchemy models: the tables of the security kernel, people's sign-in and the first two CRM
objects.

Personal fields are `SealedColumn`s (ciphertext only); their blind indexes sit beside them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.selectable import ScalarSelect

from storage.base import Base, RecordMixin, utcnow
from storage.columns import UTCDateTime
from storage.sealed import Sealed, SealedColumn

__all__ = ["Base", "RecordMixin", "utcnow"]


class Account(RecordMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str | None] = mapped_column(String(100))
    website: Mapped[str | None] = mapped_column(String(300))


class Contact(RecordMixin, Base):
    __tablename__ = "contacts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("accounts.id", ondelete="SET NULL"), index=True
    )
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[Sealed | None] = mapped_column(SealedColumn)
    email_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    phone: Mapped[Sealed | None] = mapped_column(SealedColumn)
    phone_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    address: Mapped[Sealed | None] = mapped_column(SealedColumn)
    birth_date: Mapped[Sealed | None] = mapped_column(SealedColumn)
    national_id: Mapped[Sealed | None] = mapped_column(SealedColumn)
    notes: Mapped[Sealed | None] = mapped_column(SealedColumn)

    account: Mapped[Account | None] = relationship(lazy="raise")


class DataKey(Base):
    """A versioned data key, wrapped by the key-encryption key (which never reaches the DB)."""

    __tablename__ = "data_keys"

    purpose: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SubjectKey(Base):
    """One data subject's own key, wrapped by the field data key of `version`.

    Deleting a subject's keys makes every copy of their sealed fields unreadable
    (crypto-shredding).
    """

    __tablename__ = "subject_keys"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


class Erasure(Base):
    """A data subject erased (their record deleted and subject keys destroyed), kept so that
    restoring an older backup can erase them again."""

    __tablename__ = "erasures"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    erased_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    by: Mapped[str] = mapped_column(String(100))


class ApiClient(Base):
    """An OAuth2 client (an internal application) that gets tokens with client credentials."""

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    roles: Mapped[list[str]] = mapped_column(JSON)
    team: Mapped[str | None] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PolicyRule(Base):
    """One Casbin policy line: role may do action on (object type, field or field class)."""

    __tablename__ = "policy_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))

    __table_args__ = (
        Index("uq_policy_rule", "role", "object_type", "field", "action", unique=True),
    )


class Setting(Base):
    """Small appliance facts: the policy version, the appliance id."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuditEvent(Base):
    """One entry of the hash-chained, append-only audit log."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(100), index=True)
    roles: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str | None] = mapped_column(String(64))
    object_ids: Mapped[str] = mapped_column(Text)
    fields: Mapped[str] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: The entry's Merkle leaf hash as the appender wrote it (migration 0007; None before):
    #: what signing a checkpoint reads. Verification recomputes it from the columns above.
    leaf: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """The last sequence number and hash; the row appenders lock to stay in order."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    #: Sign a checkpoint once `seq` reaches this.
    checkpoint_due: Mapped[int] = mapped_column(BigInteger)


class AuditCheckpoint(Base):
    """A signed statement that the log had `seq` entries ending in `hash`."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(40))
    #: Signed promise: the next checkpoint exists by this sequence number.
    next_due: Mapped[int] = mapped_column(BigInteger)
    key_version: Mapped[int] = mapped_column(Integer)
    signature: Mapped[str] = mapped_column(String(200))


# -- people's sign-in (docs/signin.md) ---------------------------------------------------------

class User(Base):
    """A person who signs in: a local password (argon2id), TOTP for the roles that need it."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Normalised (NFKC, trimmed, lower-case); unique.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    #: None: no local password (signs in through the organisation's provider only).
    password_hash: Mapped[str | None] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    team: Mapped[str | None] = mapped_column(String(100))
    #: The TOTP secret, sealed under the user's own subject key (crypto-shreddable).
    totp_secret: Mapped[Sealed | None] = mapped_column(SealedColumn)
    #: The last TOTP time step accepted: a code is never accepted twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_signin_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A browser's sign-in session. Only the SHA-256 of the cookie's secret is stored.

    `stage`: anonymous (the sign-in page was shown), password (first factor done, TOTP due),
    full (signed in)."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("users.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    #: The roles this session acts with (the user's, narrowed by a federated role claim).
    roles: Mapped[list[str] | None] = mapped_column(JSON)
    #: Authentication methods (RFC 8176): pwd, otp, fed.
    amr: Mapped[list[str] | None] = mapped_column(JSON)
    #: State of a federated sign-in under way.
    pending: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    authenticated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebClient(Base):
    """An application that signs people in with the authorization-code flow (PKCE, S256)."""

    __tablename__ = "web_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON)
    #: None: a public client (no secret; PKCE alone binds the code to it).
    secret_hash: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuthorizationCode(Base):
    """A single-use, short-lived authorization code. Only its SHA-256 is stored."""

    __tablename__ = "authorization_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id"), index=True)
    session_id: Mapped[str] = mapped_column(String(36))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(200))
    nonce: Mapped[str | None] = mapped_column(String(255))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    roles: Mapped[list[str]] = mapped_column(JSON)
    amr: Mapped[list[str]] = mapped_column(JSON)
    auth_time: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


def current_subject_key(model: Any = None) -> ScalarSelect[bytes]:
    """Each record's wrapped subject key for the version its fields are sealed under, as a
    column of the record query (use with `with_expression(Model.current_wrapped_key, ...)`)."""
    model = Contact if model is None else model
    return (select(SubjectKey.wrapped)
            .where(SubjectKey.subject_id == model.id, SubjectKey.version == model.key_version)
            .scalar_subquery())


# The CRM objects beyond accounts and contacts live in their own module; importing it here puts
# their tables on `Base.metadata` for migrations and backups.
from storage import crm_models as _crm_models  # noqa: E402

#: The table of each guarded object type.
MODELS: dict[str, Any] = {
    "account": Account, "contact": Contact, "lead": _crm_models.Lead,
    "opportunity": _crm_models.Opportunity, "activity": _crm_models.Activity,
    "case": _crm_models.Case, "campaign": _crm_models.Campaign,
    "campaign_member": _crm_models.CampaignMember, "consent": _crm_models.Consent,
}
from storage import documents_models as _documents_models  # noqa: E402,F401
