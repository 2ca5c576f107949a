"""People's sign-in: browser sessions, the password step with lock-out, the TOTP step.

Sessions: the cookie holds 32 random bytes; the database holds only their SHA-256. The id
changes whenever the session gains privilege (first factor passed, signed in), so a session id
planted before sign-in is worthless after it. A form's CSRF token is an HMAC of the cookie's
secret: session-bound, never stored, unforgeable without the cookie.

Lock-out: after `signin_max_failures` consecutive failures (wrong password or wrong TOTP code)
the account is locked for `signin_lockout_seconds`, doubling with each further failure up to
`signin_lockout_max_seconds`. While locked no password is even checked. Every failure, lock and
sign-in is audited. An unknown email costs the same argon2id verification as a known one and
gets the same answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from schema.ops.users import needs_totp, normalise_email
from schema.runtime import Appliance
from security import totp
from security.audit import AuditEntry
from security.passwords import DUMMY_HASH, verify_secret
from security.totp_seal import open_totp_secret
from storage.ids import new_id
from storage.models import AuthorizationCode, User, UserSession

ANONYMOUS_SECONDS = 15 * 60
SECOND_FACTOR_SECONDS = 5 * 60
FAILED = ("Sign-in failed: check the email address and password. After repeated failures an "
          "account is locked for a while.")
TOTP_FAILED = "That code was not accepted. Enter the current code from your authenticator app."
NO_SECOND_FACTOR = ("Sign-in failed: this account needs a second factor that is not set up; ask "
                    "an administrator to run `enclave users reset-totp`.")

Status = Literal["signed_in", "totp", "failed"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    mac = hmac.new(session_token.encode(), b"enclave/csrf/v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_ok(session_token: str | None, submitted: str | None) -> bool:
    if not session_token or not submitted:
        return False
    return hmac.compare_digest(csrf_token(session_token), submitted)


@dataclass
class Outcome:
    status: Status
    message: str | None = None
    #: The session's new cookie secret when it changed (set it on the response).
    token: str | None = None


@dataclass(frozen=True)
class SignedIn:
    """A signed-in person, as a session (and the codes it yields) knows them."""

    user: User
    session_id: str
    roles: tuple[str, ...]
    amr: tuple[str, ...]
    auth_time: int


# -- sessions -----------------------------------------------------------------------------------

def start_session(db: Session) -> tuple[UserSession, str]:
    """An anonymous session for a sign-in page; sweeps long-expired sessions and codes."""
    now = utcnow()
    horizon = now - dt.timedelta(days=1)
    db.execute(delete(UserSession).where(UserSession.expires_at < horizon))
    db.execute(delete(AuthorizationCode).where(AuthorizationCode.expires_at < horizon))
    token = secrets.token_urlsafe(32)
    row = UserSession(id=new_id(), token_hash=token_hash(token), stage="anonymous",
                      created_at=now, last_seen_at=now,
                      expires_at=now + dt.timedelta(seconds=ANONYMOUS_SECONDS))
    db.add(row)
    db.flush()
    return row, token


def load_session(appliance: Appliance, db: Session, token: str | None,
                 *, lock: bool = False) -> UserSession | None:
    """The live session behind a cookie, or None (unknown, ended, expired, idle too long,
    or its person disabled)."""
    if not token or len(token) > 200:
        return None
    statement = select(UserSession).where(UserSession.token_hash == token_hash(token))
    row = db.scalar(statement.with_for_update() if lock else statement)
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    if row.stage == "full":
        idle = dt.timedelta(seconds=appliance.settings.session_idle_seconds)
        if row.last_seen_at + idle <= now:
            return None
        user = db.get(User, row.user_id) if row.user_id else None
        if user is None or user.disabled_at is not None:
            return None
    return row


def signed_in(appliance: Appliance, db: Session, token: str | None) -> SignedIn | None:
    """The person a full session belongs to (and note that they were seen)."""
    row = load_session(appliance, db, token)
    if row is None or row.stage != "full" or row.user_id is None:
        return None
    user = db.get(User, row.user_id)
    if user is None:
        return None
    now = utcnow()
    if (now - row.last_seen_at).total_seconds() > 30:
        row.last_seen_at = now
    roles = tuple(r for r in (row.roles or []) if r in user.roles)
    auth_time = int((row.authenticated_at or row.created_at).timestamp())
    return SignedIn(user, row.id, roles, tuple(row.amr or ()), auth_time)


def session_active(db: Session, session_id: str) -> bool:
    """Whether tokens issued through this session may still be used."""
    row = db.get(UserSession, session_id)
    return row is not None and row.revoked_at is None and row.stage == "full"


def _rotate(row: UserSession) -> str:
    token = secrets.token_urlsafe(32)
    row.token_hash = token_hash(token)
    return token


def end_session(appliance: Appliance, db: Session, row: UserSession,
                request_id: str | None = None) -> None:
    row.revoked_at = utcnow()
    if row.user_id:
        user = db.get(User, row.user_id)
        _audit(appliance, db, user, "signout", roles=row.roles or (), request_id=request_id)


def revoke_session(db: Session, session_id: str) -> None:
    row = db.get(UserSession, session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()


# -- audit --------------------------------------------------------------------------------------

def _audit(appliance: Appliance, db: Session, user: User | None, action: str, *,
           decision: str = "allow", reason: str | None = None, fields: list[str] | None = None,
           roles: Any = (), request_id: str | None = None) -> None:
    appliance.append_audit(db, [AuditEntry(
        actor=f"user:{user.id}" if user else "anonymous", roles=tuple(roles),
        action=action, object_type="user", object_ids=[user.id] if user else [],
        fields=fields or [], decision=decision, reason=reason, request_id=request_id)])


def audit_anonymous(appliance: Appliance, db: Session, action: str, *, reason: str,
                    request_id: str | None = None) -> None:
    """A refusal before anyone is known (a failed federated sign-in, a bad form)."""
    _audit(appliance, db, None, action, decision="deny", reason=reason, request_id=request_id)


# -- failures and lock-out ----------------------------------------------------------------------

def _locked(user: User, now: dt.datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


def _fail(appliance: Appliance, db: Session, user: User, action: str, reason: str,
          request_id: str | None) -> None:
    settings = appliance.settings
    now = utcnow()
    user.failed_count += 1
    _audit(appliance, db, user, action, decision="deny", reason=reason,
           fields=[f"failures:{user.failed_count}"], roles=user.roles, request_id=request_id)
    over = user.failed_count - settings.signin_max_failures
    if over >= 0:
        seconds = min(settings.signin_lockout_seconds * 2 ** min(over, 30),
                      settings.signin_lockout_max_seconds)
        user.locked_until = now + dt.timedelta(seconds=seconds)
        _audit(appliance, db, user, "signin.lock", decision="deny",
               reason=f"{user.failed_count} consecutive failures; locked for {seconds} s",
               fields=[f"failures:{user.failed_count}", f"locked_seconds:{seconds}"],
               roles=user.roles, request_id=request_id)


# -- the steps ----------------------------------------------------------------------------------

def _first_factor_passed(appliance: Appliance, db: Session, row: UserSession, user: User,
                         *, roles: list[str], amr: str, request_id: str | None) -> Outcome:
    row.user_id = user.id
    row.roles = sorted(roles)
    row.amr = [amr]
    if needs_totp(user.roles) or user.totp_secret is not None:
        if user.totp_secret is None:
            _audit(appliance, db, user, "signin.totp", decision="deny",
                   reason="no TOTP secret enrolled for a role that requires one",
                   roles=user.roles, request_id=request_id)
            row.user_id, row.roles, row.amr = None, None, None
            return Outcome("failed", NO_SECOND_FACTOR)
        row.stage = "password"
        row.expires_at = utcnow() + dt.timedelta(seconds=SECOND_FACTOR_SECONDS)
        action = "signin.password" if amr == "pwd" else "signin.federated"
        _audit(appliance, db, user, action, fields=[f"amr:{amr}", "next:totp"], roles=user.roles, request_id=request_id)
        return Outcome("totp", token=_rotate(row))
    return _complete(appliance, db, row, user, request_id)


def _complete(appliance: Appliance, db: Session, row: UserSession, user: User,
              request_id: str | None) -> Outcome:
    now = utcnow()
    row.stage = "full"
    row.authenticated_at = row.last_seen_at = now
    row.expires_at = now + dt.timedelta(seconds=appliance.settings.session_max_seconds)
    user.failed_count = 0
    user.locked_until = None
    user.last_signin_at = now
    _audit(appliance, db, user, "signin", fields=[f"amr:{m}" for m in row.amr or []],
           roles=row.roles or (), request_id=request_id)
    return Outcome("signed_in", token=_rotate(row))


def password_step(appliance: Appliance, db: Session, row: UserSession, email: str,
                  password: str, request_id: str | None = None) -> Outcome:
    clean = normalise_email(email)[:254]
    user = db.scalar(select(User).where(User.email == clean).with_for_update())
    if user is None or user.password_hash is None:
        verify_secret(DUMMY_HASH, password)  # the same time as a real check
        _audit(appliance, db, user, "signin.password", decision="deny",
               reason="unknown account" if user is None else "no local password",
               request_id=request_id)
        return Outcome("failed", FAILED)
    if user.disabled_at is not None or _locked(user, utcnow()):
        verify_secret(DUMMY_HASH, password)
        reason = "account disabled" if user.disabled_at is not None else \
            f"account locked until {user.locked_until.isoformat()}"  # type: ignore[union-attr]
        _audit(appliance, db, user, "signin.password", decision="deny", reason=reason,
               roles=user.roles, request_id=request_id)
        return Outcome("failed", FAILED)
    if not verify_secret(user.password_hash, password):
        _fail(appliance, db, user, "signin.password", "wrong password", request_id)
        return Outcome("failed", FAILED)
    return _first_factor_passed(appliance, db, row, user, roles=list(user.roles), amr="pwd",
                                request_id=request_id)


def federated_step(appliance: Appliance, db: Session, row: UserSession, email: str,
                   asserted_roles: list[str] | None, issuer: str,
                   request_id: str | None = None) -> Outcome:
    """The organisation's provider vouched for `email`: map it to the local person. A role
    claim (when configured) can narrow their roles for this session, never widen them."""
    user = db.scalar(select(User).where(User.email == normalise_email(email)[:254])
                     .with_for_update())
    reason = None
    if user is None:
        reason = "no local account for this federated identity"
    elif user.disabled_at is not None:
        reason = "account disabled"
    elif _locked(user, utcnow()):
        reason = "account locked"
    roles = list(user.roles) if user else []
    if user is not None and reason is None and asserted_roles is not None:
        roles = [r for r in user.roles if r in asserted_roles]
        if not roles:
            reason = "the provider's role claim grants none of the account's roles"
    if reason is not None or user is None:
        _audit(appliance, db, user, "signin.federated", decision="deny", reason=reason,
               fields=[f"issuer:{issuer}"], roles=user.roles if user else (),
               request_id=request_id)
        return Outcome("failed", FAILED)
    return _first_factor_passed(appliance, db, row, user, roles=roles, amr="fed",
                                request_id=request_id)


def totp_step(appliance: Appliance, db: Session, row: UserSession, code: str,
              request_id: str | None = None) -> Outcome:
    user = db.get(User, row.user_id, with_for_update=True) if row.user_id else None
    if row.stage != "password" or user is None:
        return Outcome("failed", FAILED)
    if user.disabled_at is not None or _locked(user, utcnow()) or user.totp_secret is None:
        _audit(appliance, db, user, "signin.totp", decision="deny",
               reason="account disabled, locked or without TOTP", roles=user.roles,
               request_id=request_id)
        _back_to_start(row)
        return Outcome("failed", FAILED)
    secret = open_totp_secret(appliance.keyring, db, user.id, user.totp_secret)
    step = totp.matching_step(secret, code, last_step=user.totp_last_step)
    if step is None:
        replay = totp.matching_step(secret, code, last_step=None) is not None
        _fail(appliance, db, user, "signin.totp",
              "TOTP code already used" if replay else "wrong TOTP code", request_id)
        if _locked(user, utcnow()):
            _back_to_start(row)
            return Outcome("failed", FAILED)
        return Outcome("totp", TOTP_FAILED)
    user.totp_last_step = step
    row.amr = [*(row.amr or []), "otp"]
    return _complete(appliance, db, row, user, request_id)


def _back_to_start(row: UserSession) -> None:
    row.stage = "anonymous"
    row.user_id, row.roles, row.amr = None, None, None
