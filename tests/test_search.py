"""Filters, sorting and keyset cursors on record lists (schema.ops.search), on both backends.

Paging through a sorted list must give exactly the rows of the whole sorted list, once each,
whatever the page size; filters and sorts on fields the caller may not read are refused.
"""

from __future__ import annotations

import decimal
from typing import Any

import pytest

from schema.context import unit_of_work
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.ops.records import list_records
from schema.ops.search import FieldFilter, SortKey
from schema.runtime import Appliance
from security.errors import BadUserInput, Forbidden
from storage.models import Account
from tests.conftest import operator

MANAGER = operator("sales_manager", team="east", id="mgr-east")
INDUSTRIES = ["energy", None, "food", "energy", "retail", None, "food", "energy", "retail", "food"]


def _seed(appliance: Appliance) -> list[str]:
    ids = []
    with unit_of_work(appliance, MANAGER) as ctx:
        for i, industry in enumerate(INDUSTRIES):
            account = account_ops.create_account(ctx, {"name": f"Acme {i % 4}",
                                                       "industry": industry})
            ids.append(account.id)
    return ids


def _walk(appliance: Appliance, principal: Any, size: int, **kwargs: Any) -> list[Account]:
    seen: list[Account] = []
    after = None
    while True:
        with unit_of_work(appliance, principal) as ctx:
            page = list_records(ctx, "account", first=size, after=after, **kwargs)
            seen.extend(page.items)
            if not page.has_next:
                return seen
            after = page.end_cursor


@pytest.mark.parametrize("size", [1, 3, 7])
def test_paging_a_sorted_list_visits_every_row_once_in_order(appliance: Appliance,
                                                             size: int) -> None:
    ids = _seed(appliance)
    sort = [SortKey("industry", descending=True), SortKey("name")]
    rows = _walk(appliance, MANAGER, size, sort=sort)
    assert sorted(r.id for r in rows) == sorted(ids)
    assert len(rows) == len(ids)
    # The order: industry descending with NULLs last, then name, then id.
    keys = [(r.industry is None, r.industry or "", r.name, r.id) for r in rows]
    expected = sorted(keys, key=lambda k: (k[0], _neg(k[1]), k[2], k[3]))
    assert keys == expected


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text) + (1,)


def test_filters_eq_in_starts_with_and_ranges(appliance: Appliance) -> None:
    _seed(appliance)
    def names(*filters: FieldFilter) -> list[str | None]:
        with unit_of_work(appliance, MANAGER) as ctx:
            return [a.industry for a in list_records(ctx, "account", first=100, after=None,
                                                     filters=list(filters)).items]
    assert sorted(names(FieldFilter("industry", eq="food"))) == ["food"] * 3  # type: ignore[type-var]
    assert len(names(FieldFilter("industry", in_=["food", "retail"]))) == 5
    assert len(names(FieldFilter("name", starts_with="Acme 1"))) == 3
    # A LIKE wildcard in the prefix is taken literally.
    assert names(FieldFilter("name", starts_with="Acme %")) == []
    with unit_of_work(appliance, MANAGER) as ctx:
        first = list_records(ctx, "account", first=100, after=None).items
        middle = sorted(a.created_at for a in first)[4].isoformat()
    assert len(names(FieldFilter("created_at", lte=middle))) == 5
    assert len(names(FieldFilter("created_at", gte=middle))) == 6


def test_bad_filters_are_clear_errors(appliance: Appliance) -> None:
    with unit_of_work(appliance, MANAGER) as ctx:
        for bad, field in ((FieldFilter("nope", eq="x"), "filter.field"),
                           (FieldFilter("created_at", gte="yesterday"), "filter.created_at"),
                           (FieldFilter("industry"), "filter")):
            with pytest.raises(BadUserInput) as caught:
                list_records(ctx, "account", first=10, after=None, filters=[bad])
            assert caught.value.extra.get("field") == field
        with pytest.raises(BadUserInput):
            list_records(ctx, "account", first=10, after="not-a-cursor", sort=[SortKey("name")])


def test_encrypted_fields_match_only_through_their_blind_index(appliance: Appliance) -> None:
    with unit_of_work(appliance, MANAGER) as ctx:
        for i in range(3):
            contact_ops.create_contact(ctx, {"last_name": f"Person {i}",
                                             "email": f"p{i}@example.org",
                                             "address": f"{i} Example Street"})
    with unit_of_work(appliance, MANAGER) as ctx:
        found = list_records(ctx, "contact", first=10, after=None,
                             filters=[FieldFilter("email", in_=["P1@example.org",
                                                                "p2@example.org"])]).items
        assert sorted(c.last_name for c in found) == ["Person 1", "Person 2"]
        for bad in (FieldFilter("email", starts_with="p1"), FieldFilter("address", eq="x")):
            with pytest.raises(BadUserInput):
                list_records(ctx, "contact", first=10, after=None, filters=[bad])
        with pytest.raises(BadUserInput):
            list_records(ctx, "contact", first=10, after=None, sort=[SortKey("email")])


def test_filtering_or_sorting_on_a_refused_field_is_refused_and_audited(
        appliance: Appliance) -> None:
    _seed(appliance)
    agent = operator("support_agent", team="east", id="agent")
    with unit_of_work(appliance, agent) as ctx:
        # support_agent may read account names but not industries.
        assert list_records(ctx, "account", first=5, after=None,
                            filters=[FieldFilter("name", starts_with="Acme")]).items
    for kwargs in ({"filters": [FieldFilter("industry", eq="food")]},
                   {"sort": [SortKey("industry")]}):
        with pytest.raises(Forbidden), unit_of_work(appliance, agent) as ctx:
            list_records(ctx, "account", first=5, after=None, **kwargs)
    with appliance.sessions() as session:
        from sqlalchemy import select

        from storage.models import AuditEvent
        refusals = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "account.refused", AuditEvent.actor.contains("agent"))).all()
    assert len(refusals) == 2 and all("industry" in r.fields for r in refusals)


def test_decimal_filters_are_exact() -> None:
    from schema.ops.search import coerce
    from storage.crm_models import Opportunity
    assert coerce(Opportunity.amount, "amount", "0.10") == decimal.Decimal("0.10")
    with pytest.raises(BadUserInput):
        coerce(Opportunity.amount, "amount", "NaN")
