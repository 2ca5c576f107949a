"""Key rotation and re-encryption. Both need the `key` manage permission and are audited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from schema.context import RequestContext
from schema.runtime import KEYS_VERSION_KEY
from security import keys, row_seal
from security.authz import MANAGE
from security.totp_seal import reseal_to_current
from storage.counters import bump_counter
from storage.crm_models import Webhook, WebhookDelivery
from storage.models import MODELS, SubjectKey, User


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
    """Move up to `batch_size` records (of every guarded object type, then people's TOTP
    secrets) to the newest field key, in this unit of work.

    Each batch commits on its own, so the pass can stop and resume at any point and the API
    keeps serving; rows being changed by someone else are skipped and picked up next time.
    """
    ctx.guard.require("key", MANAGE)
    target = ctx.appliance.keyring.current_version(keys.FIELD)
    moved = 0
    for object_type, model in MODELS.items():
        if moved >= batch_size:
            break
        rows = list(ctx.session.scalars(
            select(model).where(model.key_version != target).order_by(model.id)
            .limit(batch_size - moved).with_for_update(skip_locked=True)))
        ctx.guard.preload(rows)
        for record in rows:
            ctx.guard.seal_fields(object_type, record, {})
        ctx.session.flush()
        if rows:
            ctx.audit("key.reencrypt", object_type=object_type, object_ids=[r.id for r in rows],
                      fields=[f"to:{keys.FIELD}:{target}"])
        moved += len(rows)
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
    moved += _reseal_webhooks(ctx, target, batch_size)
    remaining = sum(ctx.session.scalar(select(func.count()).select_from(model)
                                       .where(model.key_version != target)) or 0
                    for model in (*MODELS.values(), Webhook, WebhookDelivery)) \
        + (ctx.session.scalar(select(func.count()).select_from(User)
                              .where(User.id.in_(stale_people))) or 0)
    retired: list[int] = []
    if remaining == 0:
        retired = keys.retire_unused_field_versions(ctx.session)
        if retired:
            bump_counter(ctx.session, KEYS_VERSION_KEY)
    if retired:
        ctx.audit("key.retire", object_type="key", object_ids=[],
                  fields=[f"retired:{keys.FIELD}:{v}" for v in retired])
    return ReencryptBatch(moved + len(people), remaining, target, tuple(retired))


def _reseal_webhooks(ctx: RequestContext, target: int, batch_size: int) -> int:
    """Webhook signing secrets and queued payloads sit under subject keys of their own rows
    (security.row_seal): move up to `batch_size` of each to the newest field key."""
    moved = 0
    targets: tuple[tuple[Any, tuple[str, str], str], ...] = (
        (Webhook, row_seal.SECRET, "secret"),
        (WebhookDelivery, row_seal.PAYLOAD, "payload"))
    for model, place, column in targets:
        rows = list(ctx.session.scalars(
            select(model).where(model.key_version != target).order_by(model.id)
            .limit(batch_size).with_for_update(skip_locked=True)))
        for row in rows:
            sealed, row.key_version = row_seal.reseal_to_current(
                ctx.appliance.keyring, ctx.session, place, row.id, getattr(row, column))
            setattr(row, column, sealed)
        ctx.session.flush()
        if rows:
            ctx.audit("key.reencrypt", object_type=model.__tablename__,
                      object_ids=[r.id for r in rows], fields=[f"to:{keys.FIELD}:{target}"])
        moved += len(rows)
    return moved
