"""Synthetic data for every CRM module beyond accounts and contacts (`enclave demo`): leads
(some converted into deals), opportunities across the pipeline, activities, cases at each
priority, campaigns with members, and consent for about half the people. Made-up names at
reserved example domains and fictional 555-01xx numbers only; every write goes through the same
operations (and so the same guard, encryption and audit) as the API's.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
from collections.abc import Sequence
from dataclasses import dataclass

from api import demo_data
from schema.context import unit_of_work
from schema.ops import activities, campaigns, cases, consent, leads, opportunities
from schema.runtime import Appliance
from security.principal import Principal

_SOURCES = ["web", "event", "referral", "partner", "cold call"]
_STAGES = ["prospecting", "qualification", "proposal", "negotiation", "won", "lost"]
_SUBJECTS = ["Intro call", "Follow-up", "Pricing question", "Site visit", "Contract review"]
_CASES = ["Invoice does not match order", "Delivery late", "Login fails", "Part arrived broken",
          "Request for documentation"]


@dataclass(frozen=True)
class ModuleCounts:
    leads: int = 0
    converted: int = 0
    opportunities: int = 0
    activities: int = 0
    cases: int = 0
    campaigns: int = 0
    members: int = 0
    consents: int = 0


def fill_modules(appliance: Appliance, principal: Principal, contact_ids: Sequence[str],
                 account_ids: Sequence[str], rng: random.Random) -> ModuleCounts:
    """Fill every module, scaled on the number of contacts; one unit of work per module."""
    now = dt.datetime.now(dt.UTC)
    scale = max(1, len(contact_ids) // 10)
    with unit_of_work(appliance, principal) as ctx:
        lead_ids = []
        for i, person in enumerate(demo_data.contacts(scale * 2, rng)):
            lead = leads.create_lead(ctx, {
                "first_name": person["first_name"], "last_name": person["last_name"],
                "company": rng.choice(["Northwind Mills", "Kestrel Freight", "Quarry Lane Foods"]),
                "email": f"lead.{i}.{person['email']}", "phone": person["phone"],
                "source": rng.choice(_SOURCES), "score": rng.randrange(0, 101)})
            lead_ids.append(lead.id)
        converted = 0
        for lead_id in lead_ids[: max(1, len(lead_ids) // 4)]:
            with ctx.savepoint():
                leads.convert_lead(ctx, lead_id, opportunity={
                    "name": "First order", "amount": decimal.Decimal(rng.randrange(10, 500) * 100),
                    "currency": "EUR"})
            converted += 1
    with unit_of_work(appliance, principal) as ctx:
        deals = 0
        for _ in range(scale * 2):
            deal = opportunities.create_opportunity(ctx, {
                "name": rng.choice(["Renewal", "Expansion", "New site", "Service contract"]),
                "account_id": rng.choice(account_ids), "currency": "EUR",
                "amount": decimal.Decimal(rng.randrange(5, 2000) * 50),
                "expected_close": (now + dt.timedelta(days=rng.randrange(5, 180))).date()})
            target = rng.choice(_STAGES)
            if target != "prospecting":
                opportunities.move_opportunity(ctx, deal.id, target)
            deals += 1
    with unit_of_work(appliance, principal) as ctx:
        logged = 0
        for contact_id in rng.sample(list(contact_ids), min(len(contact_ids), scale * 3)):
            kind = rng.choice(["call", "meeting", "note", "email", "task"])
            data: dict[str, object] = {
                "kind": kind, "subject": rng.choice(_SUBJECTS), "contact_id": contact_id,
                "body": "Synthetic demo activity.",
                "occurred_at": now - dt.timedelta(days=rng.randrange(0, 60))}
            if kind == "task":
                data["due_at"] = now + dt.timedelta(days=rng.randrange(-5, 20))
            activities.log_activity(ctx, data)
            logged += 1
    with unit_of_work(appliance, principal) as ctx:
        opened = 0
        for _ in range(scale):
            case = cases.open_case(ctx, {
                "subject": rng.choice(_CASES), "description": "Synthetic demo case.",
                "contact_id": rng.choice(list(contact_ids)),
                "priority": rng.choice(["urgent", "high", "normal", "low"])})
            if rng.random() < 0.5:
                cases.respond_to_case(ctx, case.id)
            if rng.random() < 0.3:
                cases.resolve_case(ctx, case.id)
            opened += 1
    with unit_of_work(appliance, principal) as ctx:
        consented = 0
        for contact_id in contact_ids:
            if rng.random() < 0.5:
                consent.record_consent(ctx, contact_id, purpose_="marketing", channel_="email",
                                       granted=True, source="demo web form",
                                       evidence="synthetic double opt-in")
                consented += 1
        made = members = 0
        for name, channel in (("Spring newsletter", "email"), ("Trade fair invite", "event")):
            campaign = campaigns.create_campaign(ctx, {
                "name": name, "channel": channel, "status": "active",
                "budget": decimal.Decimal("2500.00"), "currency": "EUR"})
            made += 1
            for contact_id in rng.sample(list(contact_ids), min(len(contact_ids), scale * 3)):
                campaigns.add_member(ctx, campaign.id, contact_id=contact_id)
                members += 1
    return ModuleCounts(len(lead_ids), converted, deals + converted, logged, opened, made,
                        members, consented)
