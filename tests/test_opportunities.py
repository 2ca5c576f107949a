"""Opportunities, the configurable pipeline and sales analytics, over real HTTP.

Every test runs on SQLite and PostgreSQL (the `caller` fixture brings both). Figures are checked
against values computed here from the inputs, as Decimals (never floats).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, select

from schema.context import unit_of_work
from schema.ops import accounts as account_ops
from schema.ops import custom_fields as custom_field_ops
from schema.ops import opportunities as opportunity_ops
from schema.ops import policies
from schema.runtime import Appliance
from security.authz import READ, Rule
from security.principal import Principal
from storage.crm_models import Opportunity, PipelineStage, StageChange
from storage.models import AuditEvent

OPP_FIELDS = ("id name amount currency probability expectedClose closedAt description owner "
              "team stage { id name probability isWon isLost } account { id name }")
CREATE = ("mutation($input: OpportunityInput!) { createOpportunity(input: $input) { "
          + OPP_FIELDS + " } }")
UPDATE = ("mutation($id: ID!, $input: OpportunityPatch!) { updateOpportunity(id: $id, "
          "input: $input) { " + OPP_FIELDS + " } }")
MOVE = ("mutation($id: ID!, $stage: ID!) { moveOpportunity(id: $id, stageId: $stage) { "
        + OPP_FIELDS + " stageHistory { fromStage toStage changedBy changedAt } } }")
SUMMARY = ("query($currency: String) { pipelineSummary(currency: $currency) { "
           "stage { id position } currency count totalAmount weightedAmount } }")
FORECAST = ("query($from: Date!, $to: Date!, $currency: String) { forecast(from: $from, to: $to, "
            "currency: $currency) { month currency count totalAmount weightedAmount } }")
WIN_RATE = "query($from: Date!, $to: Date!) { winRate(from: $from, to: $to) { won lost rate } }"
UPSERT_STAGE = ("mutation($input: PipelineStageInput!) { upsertPipelineStage(input: $input) { "
                "id name position probability isWon isLost } }")
DELETE_STAGE = "mutation($id: ID!) { deletePipelineStage(id: $id) { id } }"
STAGES = "{ pipelineStages { id name position probability isWon isLost } }"
LARGE = ("5940542313081.68", "8598491098503.66", "6224631497720.53", "3892238223555.14",
         "7620613338608.32", "8567481309615.78", "4685767293238.94", "1125910313306.44",
         "7085887979226.96", "8147466740908.01", "3337054724722.54", "8367073931194.73")


# -- helpers ------------------------------------------------------------------------------------

def _codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors", [])]


def _error(result: dict[str, Any]) -> dict[str, Any]:
    errors = result.get("errors") or []
    assert len(errors) == 1, result
    return dict(errors[0])


def _principal(caller: Any) -> Principal:
    return Principal(id=caller.client_id, name=caller.client_id, roles=caller.roles,
                     team=caller.team, kind="client")


def _create(caller: Any, **values: Any) -> dict[str, Any]:
    result = caller.gql(CREATE, {"input": values})
    assert "errors" not in result, result
    return dict(result["data"]["createOpportunity"])


def _seed(appliance: Appliance, caller: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Opportunities owned by `caller`, written in-process (fast) through the same operations."""
    with unit_of_work(appliance, _principal(caller)) as ctx:
        ids = [opportunity_ops.create_opportunity(ctx, row).id for row in rows]
    return ids


def _opportunity_count(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Opportunity)) or 0)


def _audit(appliance: Appliance, action: str) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def _summary(caller: Any, currency: str | None = None) -> dict[tuple[str, str | None], Any]:
    result = caller.gql(SUMMARY, {"currency": currency})
    assert "errors" not in result, result
    return {(row["stage"]["id"], row["currency"]): row for row in result["data"]["pipelineSummary"]}


def _account(appliance: Appliance, caller: Any, name: str = "Example Ltd") -> str:
    with unit_of_work(appliance, _principal(caller)) as ctx:
        return str(account_ops.create_account(ctx, {"name": name}).id)


# -- CRUD and validation --------------------------------------------------------------------------

def test_create_read_update_delete(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    account_id = _account(appliance, rep)
    created = _create(rep, name="Example renewal", accountId=account_id, amount="1234.50",
                      currency="USD", expectedClose="2027-03-31",
                      description="Budget holder wants a discount")
    assert created["amount"] == "1234.50"
    assert created["currency"] == "USD"
    assert created["stage"]["id"] == "prospecting"  # the first open stage
    assert created["probability"] == 10  # the stage's default
    assert created["closedAt"] is None
    assert created["account"] == {"id": account_id, "name": "Example Ltd"}
    assert created["owner"] == rep.client_id and created["team"] == "east"

    # The description is sealed in the database.
    with appliance.sessions() as session:
        row = session.get(Opportunity, created["id"])
        assert row is not None and row.description is not None
        assert b"discount" not in row.description.ciphertext

    patched = rep.gql(UPDATE, {"id": created["id"], "input": {
        "amount": "99.99", "probability": 35, "description": "Signed off"}})
    assert "errors" not in patched, patched
    assert patched["data"]["updateOpportunity"]["amount"] == "99.99"
    assert patched["data"]["updateOpportunity"]["probability"] == 35
    assert patched["data"]["updateOpportunity"]["description"] == "Signed off"
    assert patched["data"]["updateOpportunity"]["currency"] == "USD"

    listed = rep.gql("query { opportunities(first: 10, filter: [{field: \"currency\", "
                     "eq: \"USD\"}], sort: [{field: \"amount\", direction: DESC}]) "
                     "{ edges { node { id amount } } } }")
    assert "errors" not in listed, listed
    assert [e["node"] for e in listed["data"]["opportunities"]["edges"]] == [
        {"id": created["id"], "amount": "99.99"}]

    deleted = rep.gql("mutation($id: ID!) { deleteOpportunity(id: $id) { id } }",
                      {"id": created["id"]})
    assert deleted["data"]["deleteOpportunity"] == {"id": created["id"]}
    gone = rep.gql("query($id: ID!) { opportunity(id: $id) { id } }", {"id": created["id"]})
    assert _codes(gone) == ["NOT_FOUND"]
    assert _opportunity_count(appliance) == 0
    assert [e.action for e in _audit(appliance, "opportunity.delete")] == ["opportunity.delete"]


def test_validation_names_the_field_and_writes_nothing(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    other_team = caller("sales_rep", team="west")
    foreign_account = _account(appliance, other_team, "Elsewhere Inc")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": "-1.00"}, "amount"),
        ({"amount": "1.234"}, "amount"),
        ({"amount": "1000000000000000.01"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"stageId": "no-such-stage"}, "stageId"),
        ({"stageId": "Bad Id!"}, "stageId"),
        ({"probability": 101}, "probability"),
        ({"probability": -1}, "probability"),
        ({"accountId": foreign_account}, "accountId"),
        ({"contactId": "00000000-0000-7000-8000-000000000000"}, "contactId"),
        ({"name": "   "}, "name"),
    ]
    for extra, field in cases:
        result = rep.gql(CREATE, {"input": {"name": "Deal", **extra}})
        error = _error(result)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (extra, error)
        assert error["extensions"]["field"] == field, (extra, error)
        assert result["data"]["createOpportunity"] is None
    # The largest amount allowed goes in, and comes back, exactly; on SQLite (doubles) only
    # amounts it holds to the cent are taken, the others refused rather than rounded.
    biggest = _create(rep, name="Huge", amount="1000000000000000", currency="EUR")
    assert Decimal(biggest["amount"]) == Decimal(10) ** 15
    odd = rep.gql(CREATE, {"input": {"name": "Odd", "amount": "999999999999999.99"}})
    if appliance.settings.database_url is None:
        assert _error(odd)["extensions"]["field"] == "amount"
        assert _codes(odd) == ["BAD_USER_INPUT"]
    else:
        assert odd["data"]["createOpportunity"]["amount"] == "999999999999999.99"
    for row in rep.gql("{ opportunities { edges { node { name amount } } } }")[
            "data"]["opportunities"]["edges"]:
        assert row["node"]["amount"] == {"Huge": "1000000000000000.00",
                                         "Odd": "999999999999999.99"}[row["node"]["name"]]
    created = 1 if appliance.settings.database_url is None else 2
    assert _opportunity_count(appliance) == created
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StageChange)) == created

    # Patches: the stage moves only through moveOpportunity; required fields stay set.
    for patch, field in (({"name": None}, "name"), ({"currency": None}, "currency"),
                         ({"amount": "0.001"}, "amount")):
        error = _error(rep.gql(UPDATE, {"id": biggest["id"], "input": patch}))
        assert (error["extensions"]["code"], error["extensions"]["field"]) == \
            ("BAD_USER_INPUT", field)
    # Someone else's opportunity (another team) does not exist for this rep.
    theirs = _create(other_team, name="Not yours")
    assert _codes(rep.gql(UPDATE, {"id": theirs["id"], "input": {"name": "Mine now"}})) == \
        ["NOT_FOUND"]


# -- stages and history ---------------------------------------------------------------------------

def test_moving_to_won_records_history_and_closed_at(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    deal = _create(rep, name="Upgrade", amount="500.00", stageId="qualification")
    assert deal["probability"] == 25

    moved = rep.gql(MOVE, {"id": deal["id"], "stage": "proposal"})["data"]["moveOpportunity"]
    assert moved["stage"]["id"] == "proposal" and moved["probability"] == 50
    assert moved["closedAt"] is None

    before = dt.datetime.now(dt.UTC)
    won = rep.gql(MOVE, {"id": deal["id"], "stage": "won"})
    assert "errors" not in won, won
    won_deal = won["data"]["moveOpportunity"]
    assert won_deal["probability"] == 100
    closed_at = dt.datetime.fromisoformat(won_deal["closedAt"])
    assert before - dt.timedelta(seconds=1) <= closed_at <= dt.datetime.now(dt.UTC)
    history = won_deal["stageHistory"]
    assert [(h["fromStage"], h["toStage"]) for h in history] == [
        (None, "qualification"), ("qualification", "proposal"), ("proposal", "won")]
    assert {h["changedBy"] for h in history} == {f"client:{rep.client_id}"}
    times = [dt.datetime.fromisoformat(h["changedAt"]) for h in history]
    assert times == sorted(times)

    # Moving to the stage it is in is a mistake; reopening clears closedAt.
    assert _codes(rep.gql(MOVE, {"id": deal["id"], "stage": "won"})) == ["BAD_USER_INPUT"]
    reopened = rep.gql(MOVE, {"id": deal["id"], "stage": "negotiation"})["data"]["moveOpportunity"]
    assert reopened["closedAt"] is None and reopened["probability"] == 75
    assert len(reopened["stageHistory"]) == 4

    moves = _audit(appliance, "opportunity.stage")
    assert len(moves) == 3
    assert all(json.loads(e.object_ids) == [deal["id"]] for e in moves)

    # A colleague of the same team may read it but not move it (reps write their own).
    colleague = caller("sales_rep", team="east")
    refused = colleague.gql(MOVE, {"id": deal["id"], "stage": "lost"})
    assert _codes(refused) == ["FORBIDDEN"]
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StageChange)) == 4


# -- analytics -----------------------------------------------------------------------------------

def test_summary_is_exact_decimal_per_stage_and_currency(appliance: Appliance,
                                                          caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    rows = [{"name": f"Small {i}", "amount": "0.10", "currency": "EUR", "stage_id": "proposal"}
            for i in range(30)]
    rows += [{"name": "Point one", "amount": "0.10", "currency": "EUR",
              "stage_id": "negotiation"},
             {"name": "Point two", "amount": "0.20", "currency": "EUR",
              "stage_id": "negotiation"},
             {"name": "Dollars", "amount": "999999999999.99", "currency": "USD",
              "stage_id": "negotiation"},
             {"name": "No amount", "currency": "EUR", "stage_id": "qualification"}]
    # Large amounts whose sum a running double would get wrong by a cent.
    rows += [{"name": f"Large {i}", "amount": amount, "currency": "GBP", "stage_id": "proposal"}
             for i, amount in enumerate(LARGE)]
    # Twenty times 7 * 10^13 at 100 %: cents x probability would pass 2^63 if summed in SQL.
    rows += [{"name": f"Giant {i}", "amount": "70000000000000.00", "currency": "JPY",
              "stage_id": "negotiation", "probability": 100} for i in range(20)]
    _seed(appliance, rep, rows)

    summary = _summary(rep)
    # 0.10 thirty times is 3.00, not 3.0000000000000004; weighted at 50 %: 1.50.
    assert summary[("proposal", "EUR")]["count"] == 30
    assert Decimal(summary[("proposal", "EUR")]["totalAmount"]) == Decimal("3.00")
    assert summary[("proposal", "EUR")]["totalAmount"] == "3.00"
    assert Decimal(summary[("proposal", "EUR")]["weightedAmount"]) == Decimal("1.50")
    # 0.10 + 0.20 == 0.30, weighted at 75 %: 0.225 exactly (not rounded away).
    assert summary[("negotiation", "EUR")]["totalAmount"] == "0.30"
    assert Decimal(summary[("negotiation", "EUR")]["weightedAmount"]) == Decimal("0.225")
    # Dollars are never added to euros.
    assert Decimal(summary[("negotiation", "USD")]["totalAmount"]) == Decimal("999999999999.99")
    assert Decimal(summary[("negotiation", "USD")]["weightedAmount"]) == \
        Decimal("999999999999.99") * 75 / 100
    large = sum((Decimal(a) for a in LARGE), Decimal(0))
    assert summary[("proposal", "GBP")]["totalAmount"] == str(large) == "73593158763682.73"
    assert Decimal(summary[("proposal", "GBP")]["weightedAmount"]) == large * 50 / 100
    assert summary[("negotiation", "JPY")]["totalAmount"] == "1400000000000000.00"
    assert Decimal(summary[("negotiation", "JPY")]["weightedAmount"]) == Decimal(14) * 10 ** 14
    assert summary[("qualification", "EUR")]["count"] == 1
    assert Decimal(summary[("qualification", "EUR")]["totalAmount"]) == 0

    # In one currency: every stage in position order, zeros included.
    result = rep.gql(SUMMARY, {"currency": "EUR"})["data"]["pipelineSummary"]
    with appliance.sessions() as session:
        stages = list(session.scalars(select(PipelineStage.id).order_by(PipelineStage.position)))
    assert [r["stage"]["id"] for r in result] == stages
    assert {r["currency"] for r in result} == {"EUR"}
    assert [r["count"] for r in result] == [0, 1, 30, 2, 0, 0]
    assert [r["count"] for r in _summary(rep, "GBP").values()] == [0, 0, len(LARGE), 0, 0, 0]
    assert _codes(rep.gql(SUMMARY, {"currency": "eur"})) == ["BAD_USER_INPUT"]


def test_forecast_and_win_rate_match_the_inputs(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    probability = {"prospecting": 10, "qualification": 25, "proposal": 50, "negotiation": 75}
    rows = [
        ("A", "1000.00", "EUR", "proposal", "2027-01-15"),
        ("B", "250.50", "EUR", "negotiation", "2027-01-31"),
        ("C", "80.00", "EUR", "prospecting", "2027-03-01"),
        ("D", "400.00", "USD", "proposal", "2027-01-20"),
        ("E", "1.00", "EUR", "qualification", "2026-12-31"),  # before the period
        ("F", "7.00", "EUR", "proposal", "2027-05-01"),  # after it
        ("G", "9000.00", "EUR", "proposal", "2027-02-10"),  # will be won: not open
        ("H", "300.00", "EUR", "negotiation", "2027-02-11"),  # will be lost
        ("I", "55.55", "EUR", "qualification", "2027-02-28"),
    ]
    ids = _seed(appliance, rep, [{"name": n, "amount": a, "currency": c, "stage_id": s,
                                  "expected_close": d} for n, a, c, s, d in rows])
    by_name = dict(zip([r[0] for r in rows], ids, strict=True))
    for name, stage in (("G", "won"), ("H", "lost")):
        assert "errors" not in rep.gql(MOVE, {"id": by_name[name], "stage": stage})
    closed = {"G", "H"}

    expected: dict[tuple[str, str], list[Decimal]] = {}
    for name, amount, currency, stage, close in rows:
        if name in closed or not "2027-01-01" <= close <= "2027-04-30":
            continue
        slot = expected.setdefault((close[:7], currency), [Decimal(0), Decimal(0), Decimal(0)])
        slot[0] += 1
        slot[1] += Decimal(amount)
        slot[2] += Decimal(amount) * probability[stage] / 100

    result = rep.gql(FORECAST, {"from": "2027-01-01", "to": "2027-04-30"})
    assert "errors" not in result, result
    got = {(r["month"], r["currency"]): [Decimal(r["count"]), Decimal(r["totalAmount"]),
                                         Decimal(r["weightedAmount"])]
           for r in result["data"]["forecast"]}
    assert got == expected

    euros = rep.gql(FORECAST, {"from": "2027-01-01", "to": "2027-04-30",
                               "currency": "EUR"})["data"]["forecast"]
    assert [r["month"] for r in euros] == ["2027-01", "2027-02", "2027-03", "2027-04"]
    assert euros[3]["count"] == 0 and Decimal(euros[3]["weightedAmount"]) == 0
    assert Decimal(euros[0]["weightedAmount"]) == expected[("2027-01", "EUR")][2]
    assert _codes(rep.gql(FORECAST, {"from": "2027-05-01", "to": "2027-01-01"})) == \
        ["BAD_USER_INPUT"]

    today = dt.datetime.now(dt.UTC).date()
    rate = rep.gql(WIN_RATE, {"from": (today - dt.timedelta(days=1)).isoformat(),
                              "to": (today + dt.timedelta(days=1)).isoformat()})
    assert rate["data"]["winRate"] == {"won": 1, "lost": 1, "rate": 0.5}
    # Another win: 2 of 3.
    assert "errors" not in rep.gql(MOVE, {"id": by_name["A"], "stage": "won"})
    rate = rep.gql(WIN_RATE, {"from": today.isoformat(), "to": today.isoformat()})
    assert rate["data"]["winRate"]["won"] == 2 and rate["data"]["winRate"]["lost"] == 1
    assert abs(rate["data"]["winRate"]["rate"] - 2 / 3) < 1e-12
    # A period in which nothing closed has no rate.
    empty = rep.gql(WIN_RATE, {"from": "2020-01-01", "to": "2020-12-31"})
    assert empty["data"]["winRate"] == {"won": 0, "lost": 0, "rate": None}


def test_aggregates_count_only_what_the_caller_may_see(appliance: Appliance,
                                                        caller: Any) -> None:
    east_rep = caller("sales_rep", team="east")
    east_colleague = caller("sales_rep", team="east")
    west_rep = caller("sales_rep", team="west")
    east_manager = caller("sales_manager", team="east")
    _seed(appliance, east_rep, [{"name": "East 1", "amount": "100.00", "stage_id": "proposal"}])
    _seed(appliance, east_colleague, [{"name": "East 2", "amount": "20.00",
                                       "stage_id": "proposal"}])
    _seed(appliance, west_rep, [{"name": f"West {i}", "amount": "5000.00",
                                 "stage_id": "proposal"} for i in range(3)])
    _seed(appliance, west_rep, [{"name": "West won", "amount": "7.00", "stage_id": "won"}])

    for who in (east_rep, east_manager):
        row = _summary(who, "EUR")[("proposal", "EUR")]
        assert (row["count"], row["totalAmount"]) == (2, "120.00"), who.roles
        assert _summary(who, "EUR")[("won", "EUR")]["count"] == 0
    west = _summary(west_rep, "EUR")[("proposal", "EUR")]
    assert (west["count"], west["totalAmount"]) == (3, "15000.00")

    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert east_rep.gql(WIN_RATE, {"from": today, "to": today})["data"]["winRate"] == \
        {"won": 0, "lost": 0, "rate": None}
    assert west_rep.gql(WIN_RATE, {"from": today, "to": today})["data"]["winRate"]["won"] == 1


def test_roles_that_may_not_read_the_figures_are_refused(appliance: Appliance,
                                                          caller: Any) -> None:
    # An "analyst" who may see every opportunity's name, but not its amount or stage.
    admin = Principal(id="admin", name="admin", roles=("admin",), kind="operator")
    with unit_of_work(appliance, admin) as ctx:
        for rule in (Rule("analyst", "opportunity", "@all", READ),
                     Rule("analyst", "opportunity", "name", READ)):
            policies.grant(ctx, rule)
    rep = caller("sales_rep", team="east")
    deal = _create(rep, name="Visible name", amount="10.00")
    analyst = caller("analyst")
    support = caller("support_agent")

    named = analyst.gql("query($id: ID!) { opportunity(id: $id) { name amount } }",
                        {"id": deal["id"]})
    assert named["data"]["opportunity"] == {"name": "Visible name", "amount": None}
    assert _codes(named) == ["FORBIDDEN"]

    today = dt.datetime.now(dt.UTC).date().isoformat()
    for query, variables, refused_fields in (
        (SUMMARY, {}, {"stage", "amount", "probability", "currency"}),
        (FORECAST, {"from": "2027-01-01", "to": "2027-12-31"},
         {"stage", "amount", "probability", "currency", "expectedClose"}),
        (WIN_RATE, {"from": today, "to": today}, {"stage", "closedAt"}),
    ):
        result = analyst.gql(query, variables)
        error = _error(result)
        assert error["extensions"]["code"] == "FORBIDDEN"
        assert set(error["extensions"]["fields"]) == refused_fields
        assert list(result["data"].values()) == [None]
        # No read rule on opportunities at all: refused too.
        assert _codes(support.gql(query, variables)) == ["FORBIDDEN"]

    history = analyst.gql("query($id: ID!) { opportunity(id: $id) { name stageHistory "
                          "{ toStage } } }", {"id": deal["id"]})
    assert history["data"]["opportunity"] == {"name": "Visible name", "stageHistory": None}
    assert _codes(history) == ["FORBIDDEN"]
    assert _codes(support.gql(STAGES)) == ["FORBIDDEN"]

    refusals = [e for e in _audit(appliance, "opportunity.refused")
                if e.actor == f"client:{analyst.client_id}"]
    refused = {f for e in refusals for f in json.loads(e.fields)}
    assert {"amount", "stage", "closed_at", "expected_close"} <= refused
    assert all(e.decision == "deny" for e in refusals)
    assert any(e.actor == f"client:{support.client_id}"
               for e in _audit(appliance, "opportunity.refused"))


# -- pipeline configuration -------------------------------------------------------------------------

def test_pipeline_is_configured_by_admin_only(appliance: Appliance, caller: Any) -> None:
    admin = caller("admin")
    manager = caller("sales_manager", team="east")
    stage = {"id": "demo", "name": "Demo given", "position": 35, "probability": 60}

    refused = manager.gql(UPSERT_STAGE, {"input": stage})
    assert _codes(refused) == ["FORBIDDEN"]
    assert _codes(manager.gql(DELETE_STAGE, {"id": "prospecting"})) == ["FORBIDDEN"]
    denials = [e for e in _audit(appliance, "pipeline.refused")
               if e.actor == f"client:{manager.client_id}"]
    assert denials and all(e.decision == "deny" for e in denials)

    created = admin.gql(UPSERT_STAGE, {"input": stage})
    assert "errors" not in created, created
    assert created["data"]["upsertPipelineStage"] == {**stage, "isWon": False, "isLost": False}
    stages = manager.gql(STAGES)["data"]["pipelineStages"]
    assert [s["id"] for s in stages] == ["prospecting", "qualification", "proposal", "demo",
                                         "negotiation", "won", "lost"]
    changed = admin.gql(UPSERT_STAGE, {"input": {**stage, "name": "Demo done"}})
    assert changed["data"]["upsertPipelineStage"]["name"] == "Demo done"
    assert [json.loads(e.object_ids) for e in _audit(appliance, "pipeline.stage_create")] == \
        [["demo"]]
    assert json.loads(_audit(appliance, "pipeline.stage_update")[0].fields) == ["name"]

    for bad, field in (
        ({"isWon": True, "isLost": True, "probability": 100}, "isLost"),
        ({"isWon": True, "probability": 90}, "probability"),
        ({"isLost": True, "probability": 5}, "probability"),
        ({"probability": 101}, "probability"),
        ({"position": 20}, "position"),  # qualification's
        ({"id": "Not A Slug"}, "id"),
        ({"name": ""}, "name"),
    ):
        error = _error(admin.gql(UPSERT_STAGE, {"input": {**stage, **bad}}))
        assert (error["extensions"]["code"], error["extensions"]["field"]) == \
            ("BAD_USER_INPUT", field), bad

    # A used stage is neither deleted nor turned into a closing one.
    rep = caller("sales_rep", team="east")
    deal = _create(rep, name="In demo", stageId="demo", amount="1.00")
    assert deal["probability"] == 60
    assert _codes(admin.gql(DELETE_STAGE, {"id": "demo"})) == ["CONFLICT"]
    assert _codes(admin.gql(UPSERT_STAGE, {"input": {**stage, "isWon": True,
                                                     "probability": 100}})) == ["CONFLICT"]
    assert "errors" not in rep.gql(MOVE, {"id": deal["id"], "stage": "proposal"})
    deleted = admin.gql(DELETE_STAGE, {"id": "demo"})
    assert deleted["data"]["deletePipelineStage"] == {"id": "demo"}
    assert _codes(admin.gql(DELETE_STAGE, {"id": "demo"})) == ["NOT_FOUND"]
    assert [json.loads(e.object_ids) for e in _audit(appliance, "pipeline.stage_delete")] == \
        [["demo"]]
    # The history still names the stage that is gone.
    history = rep.gql(MOVE, {"id": deal["id"], "stage": "won"})["data"]["moveOpportunity"]
    assert Counter(h["toStage"] for h in history["stageHistory"]) == \
        Counter({"demo": 1, "proposal": 1, "won": 1})


# -- custom fields and batching ---------------------------------------------------------------------

def test_custom_fields_and_one_history_query_per_page(appliance: Appliance, caller: Any) -> None:
    admin = Principal(id="admin", name="admin", roles=("admin",), kind="operator")
    with unit_of_work(appliance, admin) as ctx:
        custom_field_ops.define(ctx, object_type="opportunity", key="region", value_type="text",
                                classification="internal")
        custom_field_ops.define(ctx, object_type="opportunity", key="margin",
                                value_type="number", classification="restricted")
    manager = caller("sales_manager", team="east")
    rep = caller("sales_rep", team="east")
    created = manager.gql(
        "mutation($input: OpportunityInput!) { createOpportunity(input: $input) { id "
        "customFields { key text number } } }",
        {"input": {"name": "With extras", "customFields": [
            {"key": "region", "text": "North"}, {"key": "margin", "number": "12.5"}]}})
    assert "errors" not in created, created
    assert sorted((f["key"], f["text"], f["number"])
                  for f in created["data"]["createOpportunity"]["customFields"]) == [
        ("margin", None, "12.5"), ("region", "North", None)]
    # A rep (up to confidential) sees the internal field only, and may not set the other.
    seen = rep.gql("query($id: ID!) { opportunity(id: $id) { customFields { key text } } }",
                   {"id": created["data"]["createOpportunity"]["id"]})
    assert seen["data"]["opportunity"]["customFields"] == [{"key": "region", "text": "North"}]
    refused = rep.gql(CREATE, {"input": {"name": "Sneaky",
                                         "customFields": [{"key": "margin", "number": "99"}]}})
    assert _codes(refused) == ["FORBIDDEN"]

    ids = _seed(appliance, rep, [{"name": f"Paged {i}", "stage_id": "proposal"}
                                 for i in range(12)])
    for opportunity_id in ids[:6]:
        assert "errors" not in rep.gql(MOVE, {"id": opportunity_id, "stage": "negotiation"})
    seen_statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen_statements.append(statement)

    event.listen(appliance.engine, "before_cursor_execute", record)
    try:
        page = rep.gql("{ opportunities(first: 50) { edges { node { id stageHistory "
                       "{ fromStage toStage } } } } }")
    finally:
        event.remove(appliance.engine, "before_cursor_execute", record)
    assert "errors" not in page, page
    histories = {e["node"]["id"]: e["node"]["stageHistory"]
                 for e in page["data"]["opportunities"]["edges"]}
    assert len(histories[ids[0]]) == 2 and len(histories[ids[-1]]) == 1
    assert sum("opportunity_stage_changes" in s for s in seen_statements) == 1
