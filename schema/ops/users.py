"""People's accounts: create, list, disable, reset TOTP, set password. Admin only, audited.

The CLI (`enclave users ...`) and the console call these; sign-in itself is `schema.ops.signin`.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

from sqlalchemy import select, update

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.clients import known_roles
from security import totp
from security.authz import MANAGE
from security.default_policy import TOTP_REQUIRED_ROLES
from security.errors import BadUserInput, Conflict, NotFound
from security.passwords import hash_secret
from security.totp_seal import seal_totp_secret
from storage.ids import new_id
from storage.models import User, UserSession

OBJECT = "user"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class Enrolment:
    """A TOTP secret, shown once to the person who will scan it."""

    secret: str
    uri: str


@dataclass(frozen=True)
class CreatedUser:
    user: User
    totp: Enrolment | None


def normalise_email(value: str) -> str:
    """NFKC, trimmed, lower-case: the form stored and looked up."""
    return unicodedata.normalize("NFKC", value).strip().lower()


def clean_email(value: str) -> str:
    email = validation.email("email", value)
    if email is None:
        raise BadUserInput("email is required", field="email")
    return normalise_email(email)


def check_password(password: str, email: str) -> None:
    """Length is what counts (NIST SP 800-63B): 12 to 1024 characters, not the email."""
    if len(password) < MIN_PASSWORD:
        raise BadUserInput(f"the password must have at least {MIN_PASSWORD} characters",
                           field="password")
    if len(password) > MAX_PASSWORD:
        raise BadUserInput(f"the password may have at most {MAX_PASSWORD} characters",
                           field="password")
    if normalise_email(password) == email or len(set(password)) < 4:
        raise BadUserInput("the password is too easy to guess", field="password")


def needs_totp(roles: list[str] | tuple[str, ...]) -> bool:
    return bool(TOTP_REQUIRED_ROLES & set(roles))


def _enrol(ctx: RequestContext, user: User) -> Enrolment:
    secret = totp.new_secret()
    user.totp_secret = seal_totp_secret(ctx.appliance.keyring, ctx.session, user.id, secret)
    user.totp_last_step = None
    return Enrolment(secret, totp.provisioning_uri(secret, account=user.email))


def create_user(ctx: RequestContext, *, email: str, roles: list[str], team: str | None = None,
                password: str | None, with_totp: bool = False) -> CreatedUser:
    """A person's account. `password=None`: they sign in through the organisation's provider
    only. TOTP is enrolled for roles that require it (and when asked)."""
    ctx.guard.require(OBJECT, MANAGE)
    clean = clean_email(email)
    clean_team = validation.team("team", team)
    if not roles:
        raise BadUserInput("give at least one role", field="roles")
    unknown = sorted(set(roles) - known_roles(ctx))
    if unknown:
        raise BadUserInput(f"unknown role(s): {', '.join(unknown)}", field="roles")
    if password is not None:
        check_password(password, clean)
    if ctx.session.scalar(select(User.id).where(User.email == clean)) is not None:
        raise Conflict(f"a person with email {clean} already exists", field="email")
    user = User(id=new_id(), email=clean, roles=sorted(set(roles)), team=clean_team,
                password_hash=hash_secret(password) if password is not None else None,
                failed_count=0)
    ctx.session.add(user)
    ctx.session.flush()
    enrolment = _enrol(ctx, user) if with_totp or needs_totp(user.roles) else None
    ctx.session.flush()
    ctx.audit("user.create", object_type=OBJECT, object_ids=[user.id],
              fields=[f"role:{r}" for r in user.roles]
              + ([f"team:{clean_team}"] if clean_team else [])
              + (["totp:enrolled"] if enrolment else [])
              + ([] if password is not None else ["password:none"]))
    return CreatedUser(user, enrolment)


def list_users(ctx: RequestContext) -> list[User]:
    ctx.guard.require(OBJECT, MANAGE)
    return list(ctx.session.scalars(select(User).order_by(User.email)))


def find_user(ctx: RequestContext, email: str) -> User:
    user = ctx.session.scalar(select(User).where(User.email == normalise_email(email))
                              .with_for_update())
    if user is None:
        raise NotFound(f"no person with email {normalise_email(email)}")
    return user


def _end_sessions(ctx: RequestContext, user: User) -> None:
    ctx.session.execute(update(UserSession).where(
        UserSession.user_id == user.id, UserSession.revoked_at.is_(None)
    ).values(revoked_at=dt.datetime.now(dt.UTC)))


def disable_user(ctx: RequestContext, email: str) -> User:
    """They can no longer sign in; their sessions end and their tokens stop working at once."""
    ctx.guard.require(OBJECT, MANAGE)
    user = find_user(ctx, email)
    if user.disabled_at is not None:
        raise Conflict(f"{user.email} is already disabled")
    user.disabled_at = dt.datetime.now(dt.UTC)
    _end_sessions(ctx, user)
    ctx.session.flush()
    ctx.audit("user.disable", object_type=OBJECT, object_ids=[user.id])
    return user


def reset_totp(ctx: RequestContext, email: str) -> Enrolment:
    """A new TOTP secret (the old one stops working); their sessions end."""
    ctx.guard.require(OBJECT, MANAGE)
    user = find_user(ctx, email)
    enrolment = _enrol(ctx, user)
    _end_sessions(ctx, user)
    ctx.session.flush()
    ctx.audit("user.totp_reset", object_type=OBJECT, object_ids=[user.id])
    return enrolment


def set_password(ctx: RequestContext, email: str, password: str) -> User:
    """A new password; clears a lock-out and ends their sessions."""
    ctx.guard.require(OBJECT, MANAGE)
    user = find_user(ctx, email)
    check_password(password, user.email)
    user.password_hash = hash_secret(password)
    user.failed_count = 0
    user.locked_until = None
    _end_sessions(ctx, user)
    ctx.session.flush()
    ctx.audit("user.password_set", object_type=OBJECT, object_ids=[user.id])
    return user
