"""Query and Mutation roots. Resolvers translate arguments and delegate to `schema.ops`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.graphql import (
    activities,
    campaigns,
    cases,
    custom_fields,
    data_transfer,
    leads,
    opportunities,
    privacy,
    webhooks,
)
from schema.graphql import types as t
from schema.graphql.fields import RecordFilter, RecordSort, split_input, to_filters, to_sort
from schema.ops import accounts, audit_log, clients, contacts, policies
from schema.ops.records import Page
from security.authz import Rule

Ctx = Info[RequestContext, Any]




def _page_info(page: Page[Any]) -> t.PageInfo:
    return t.PageInfo(has_next_page=page.has_next, has_previous_page=page.has_previous,
                      start_cursor=page.start_cursor, end_cursor=page.end_cursor)


def _contact_connection(page: Page[Any]) -> t.ContactConnection:
    return t.ContactConnection(
        edges=[t.ContactEdge(cursor=page.cursor_of(row), node=t.Contact(row=row))
               for row in page.items],
        page_info=_page_info(page))


def _account_connection(page: Page[Any]) -> t.AccountConnection:
    return t.AccountConnection(
        edges=[t.AccountEdge(cursor=page.cursor_of(row), node=t.Account(row=row))
               for row in page.items],
        page_info=_page_info(page))


def _client(row: Any) -> t.ApiClient:
    return t.ApiClient(id=row.id, name=row.name, roles=list(row.roles), team=row.team,
                       created_at=row.created_at, revoked_at=row.revoked_at)


def _audit_event(row: Any) -> t.AuditEvent:
    return t.AuditEvent(
        seq=row.seq, ts=row.ts, actor=row.actor, roles=json.loads(row.roles), action=row.action,
        object_type=row.object_type, object_ids=json.loads(row.object_ids),
        fields=json.loads(row.fields), decision=row.decision, reason=row.reason,
        request_id=row.request_id, prev_hash=row.prev_hash, hash=row.hash)


# Root fields are nullable on purpose: a refused or failed field comes back null with its error,
# and the rest of the answer (including earlier mutations' results) still arrives.
@strawberry.type
class Query(leads.Queries, opportunities.Queries, activities.Queries, cases.Queries,
            campaigns.Queries, privacy.Queries, custom_fields.Queries, data_transfer.Queries,
            webhooks.Queries):
    @strawberry.field
    def me(self, info: Ctx) -> t.Me:
        p = info.context.principal
        return t.Me(id=p.id, name=p.name, roles=list(p.roles), team=p.team)

    @strawberry.field
    def accounts(self, info: Ctx, first: int | None = 20, after: str | None = None,
                 filter: list[RecordFilter] | None = None,
                 sort: list[RecordSort] | None = None) -> t.AccountConnection | None:
        return _account_connection(accounts.list_accounts(
            info.context, first=first, after=after, filters=to_filters(filter),
            sort=to_sort(sort)))

    @strawberry.field
    def account(self, info: Ctx, id: strawberry.ID) -> t.Account | None:
        return t.Account(row=accounts.get_account(info.context, id))

    @strawberry.field
    def contacts(self, info: Ctx, first: int | None = 20, after: str | None = None,
                 filter: t.ContactFilter | None = None,
                 filters: list[RecordFilter] | None = None,
                 sort: list[RecordSort] | None = None) -> t.ContactConnection | None:
        f = filter or t.ContactFilter()
        page = contacts.list_contacts(info.context, first=first, after=after,
                                      account_id=f.account_id, owner=f.owner, email=f.email,
                                      phone=f.phone, filters=to_filters(filters),
                                      sort=to_sort(sort))
        return _contact_connection(page)

    @strawberry.field
    def contact(self, info: Ctx, id: strawberry.ID) -> t.Contact | None:
        return t.Contact(row=contacts.get_contact(info.context, id))

    @strawberry.field(description="The audit log, oldest first. security_officer only.")
    def audit_events(self, info: Ctx, first: int | None = 50, after: str | None = None,
                     filter: t.AuditEventFilter | None = None) -> t.AuditEventConnection | None:
        f = filter or t.AuditEventFilter()
        page = audit_log.list_events(info.context, first=first, after=after,
                                     filter=audit_log.AuditFilter(**dataclasses.asdict(f)))
        edges = [t.AuditEventEdge(cursor=audit_log.encode_cursor(row.seq), node=_audit_event(row))
                 for row in page.items]
        return t.AuditEventConnection(edges=edges, page_info=t.PageInfo(
            has_next_page=page.has_next, has_previous_page=after is not None,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field
    def policies(self, info: Ctx) -> list[t.PolicyRule] | None:
        return [t.PolicyRule(role=r.role, object_type=r.object_type, field=r.field,
                             action=r.action) for r in policies.list_rules(info.context)]

    @strawberry.field
    def clients(self, info: Ctx) -> list[t.ApiClient] | None:
        return [_client(row) for row in clients.list_clients(info.context)]


@strawberry.type
class Mutation(leads.Mutations, opportunities.Mutations, activities.Mutations, cases.Mutations,
               campaigns.Mutations, privacy.Mutations, custom_fields.Mutations,
               data_transfer.Mutations, webhooks.Mutations):
    @strawberry.mutation
    def create_account(self, info: Ctx, input: t.AccountInput) -> t.Account | None:
        with info.context.savepoint():
            values, custom = split_input(input)
            row = accounts.create_account(info.context, values, custom=custom)
        return t.Account(row=row)

    @strawberry.mutation
    def update_account(self, info: Ctx, id: strawberry.ID, input: t.AccountPatch) -> t.Account | None:
        with info.context.savepoint():
            values, custom = split_input(input)
            row = accounts.update_account(info.context, id, values, custom=custom)
        return t.Account(row=row)

    @strawberry.mutation
    def delete_account(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(accounts.delete_account(info.context, id)))

    @strawberry.mutation
    def create_contact(self, info: Ctx, input: t.ContactInput) -> t.Contact | None:
        with info.context.savepoint():
            values, custom = split_input(input)
            row = contacts.create_contact(info.context, values, custom=custom)
        return t.Contact(row=row)

    @strawberry.mutation
    def update_contact(self, info: Ctx, id: strawberry.ID, input: t.ContactPatch) -> t.Contact | None:
        with info.context.savepoint():
            values, custom = split_input(input)
            row = contacts.update_contact(info.context, id, values, custom=custom)
        return t.Contact(row=row)

    @strawberry.mutation
    def delete_contact(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(contacts.delete_contact(info.context, id)))

    @strawberry.mutation
    def grant_policy(self, info: Ctx, rule: t.PolicyRuleInput) -> t.PolicyChange | None:
        with info.context.savepoint():
            version = policies.grant(info.context, Rule(**dataclasses.asdict(rule)))
        return t.PolicyChange(policy_version=version)

    @strawberry.mutation
    def revoke_policy(self, info: Ctx, rule: t.PolicyRuleInput) -> t.PolicyChange | None:
        with info.context.savepoint():
            version = policies.revoke(info.context, Rule(**dataclasses.asdict(rule)))
        return t.PolicyChange(policy_version=version)

    @strawberry.mutation
    def create_client(self, info: Ctx, name: str, roles: list[str],
                      team: str | None = None) -> t.IssuedClient | None:
        with info.context.savepoint():
            issued = clients.create_client(info.context, name=name, roles=roles, team=team)
        return t.IssuedClient(client=_client(issued.client), client_secret=issued.secret)

    @strawberry.mutation
    def revoke_client(self, info: Ctx, id: str) -> t.ApiClient | None:
        with info.context.savepoint():
            return _client(clients.revoke_client(info.context, id))
