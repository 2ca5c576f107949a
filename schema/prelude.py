"""The statement every GraphQL request on PostgreSQL reads first, in one round trip."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, exists, func, literal_column, select

from schema.runtime import KEYS_VERSION_KEY
from security.authz import POLICY_VERSION_KEY
from storage.crm_models import Webhook
from storage.documents_models import TrustedDocument
from storage.models import ApiClient, Setting

_PRELUDES: dict[tuple[bool, bool, bool, bool], Any] = {}


def prelude_statement(timeout: bool, client: bool, document: bool,
                      webhooks: bool = False) -> Any:
    """One SELECT for what every request reads first (PostgreSQL): the keys and policy
    versions, the statement timeout (`set_config(..., true)` is `SET LOCAL`), whether the
    calling API client is still active, the named document's bound clients, and whether any
    webhook is active (a write with none to tell queues nothing, and need not look again)."""
    key = (timeout, client, document, webhooks)
    found = _PRELUDES.get(key)
    if found is None:
        columns: list[Any] = [
            select(Setting.value).where(Setting.key == KEYS_VERSION_KEY)
            .scalar_subquery().label("keys_version"),
            select(Setting.value).where(Setting.key == POLICY_VERSION_KEY)
            .scalar_subquery().label("policy_version"),
        ]
        if timeout:
            columns.append(func.set_config(literal_column("'statement_timeout'"),
                                           bindparam("timeout"), literal_column("true"))
                           .label("timeout"))
        if client:
            columns.append(select(ApiClient.revoked_at.is_(None))
                           .where(ApiClient.id == bindparam("client_id"))
                           .scalar_subquery().label("client_active"))
        if document:
            columns.append(select(TrustedDocument.clients)
                           .where(TrustedDocument.id == bindparam("document_id"))
                           .scalar_subquery().label("document_clients"))
        if webhooks:
            columns.append(exists(select(Webhook.id).where(Webhook.disabled_at.is_(None)))
                           .label("webhooks_active"))
        found = _PRELUDES[key] = select(*columns)
    return found
