"""Key rotation and re-encryption. Both need the `key` manage permission and are audited."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from schema.context import RequestContext
from schema.runtime import KEYS_VERSION_KEY
from security import keys
from security.authz import MANAGE
from security.totp_seal import reseal_to_current
from storage.counters import bump_counter
from storage.models import Contact, SubjectKey, User

OBJECT = "contact"


def rotate_field_key(ctx: RequestContext) -> int:
    """Add a field key version: new writes use it, older versions still open."""
    ctx.guard.require("key", MANAGE)
    version = keys.add_data_key(ctx.session, ctx.appliance.kek, keys.FIELD)
    bump_counter(ctx.session, KEYS_VERSION_KEY)
    ctx.audit("key.rotate", object_type="key", object_ids=[f"{keys.FIELD}:{version}"])
    return version


@dataclass(frozen=True)
class ReencryptBatch:
    moved: int
    remaining: int
    target_version: int
    retired_versions: tuple[int, ...] = ()


def reencrypt_batch(ctx: RequestContext, *, batch_size: int = 200) -> ReencryptBatch:
    """Move up to `batch_size` contacts to the newest field key, in this unit of work.

    Each batch commits on its own, so the pass can stop and resume at any point and the API
    keeps serving; rows being changed by someone else are skipped and picked up next time.
    """
    ctx.guard.require("key", MANAGE)
    target = ctx.appliance.keyring.current_version(keys.FIELD)
    rows = list(ctx.session.scalars(
        select(Contact).where(Contact.key_version != target).order_by(Contact.id)
        .limit(batch_size).with_for_update(skip_locked=True)))
    ctx.guard.preload(rows)
    for contact in rows:
        ctx.guard.seal_fields(OBJECT, contact, {})
    ctx.session.flush()
    # People's TOTP secrets sit under their own subject keys too (security.totp_seal).
    stale_people = select(SubjectKey.subject_id).where(SubjectKey.version != target)
    people = list(ctx.session.scalars(
        select(User).where(User.id.in_(stale_people)).order_by(User.id)
        .limit(batch_size).with_for_update(skip_locked=True)))
    for user in people:
        user.totp_secret = reseal_to_current(ctx.appliance.keyring, ctx.session, user.id,
                                             user.totp_secret)
    ctx.session.flush()
    if people:
        ctx.audit("key.reencrypt", object_type="user", object_ids=[u.id for u in people],
                  fields=[f"to:{keys.FIELD}:{target}"])
    remaining = (ctx.session.scalar(
        select(func.count()).select_from(Contact).where(Contact.key_version != target)) or 0) \
        + (ctx.session.scalar(select(func.count()).select_from(User)
                              .where(User.id.in_(stale_people))) or 0)
    retired: list[int] = []
    if remaining == 0:
        retired = keys.retire_unused_field_versions(ctx.session)
        if retired:
            bump_counter(ctx.session, KEYS_VERSION_KEY)
    if rows or retired:
        ctx.audit("key.reencrypt", object_type=OBJECT, object_ids=[c.id for c in rows],
                  fields=[f"to:{keys.FIELD}:{target}"] + [f"retired:{v}" for v in retired])
    return ReencryptBatch(len(rows) + len(people), remaining, target, tuple(retired))
