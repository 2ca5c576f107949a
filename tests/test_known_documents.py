"""Validation remembered per (schema, document) (schema.graphql.known_documents): a document
that passed every rule is not validated again on its next requests, but its cost (which reads
the variables) is still worked out each time, a document valid for one schema is not taken as valid for
another (introspection is for admins only), and a document that failed is checked again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import strawberry.schema.schema as strawberry_schema

from schema.graphql import execution
from schema.graphql.known_documents import VALID

INTROSPECTION = "{ __schema { queryType { name } } }"


def _rule_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counts: list[int] = []
    validate = strawberry_schema.validate

    def counting(schema: Any, document: Any, rules: Any, *args: Any, **kwargs: Any) -> Any:
        counts.append(len(rules))
        return validate(schema, document, rules, *args, **kwargs)

    monkeypatch.setattr(strawberry_schema, "validate", counting)
    return counts


def test_a_document_that_passed_is_not_validated_again_but_its_cost_is_checked(
        caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _rule_counts(monkeypatch)
    rep = caller("sales_manager", team="east")
    # A comment of its own: the pairs are remembered across tests (as across requests).
    document = (f"# {uuid.uuid4()}\n"
                "query($n: Int) { contacts(first: $n) { edges { node { id email } } } }")
    assert "errors" not in rep.gql(document, {"n": 5})
    assert "errors" not in rep.gql(document, {"n": 7})
    assert len(counts) == 1 and counts[0] > 20, counts  # depth and aliases included
    # The cost still reads this request's variables.
    costly = f"# {uuid.uuid4()}\nquery($n: Int) {{ " + " ".join(
        f"c{i}: contacts(first: $n) {{ edges {{ node {{ id email phone title }} }} }}"
        for i in range(12)) + " }"
    assert "errors" not in rep.gql(costly, {"n": 5})
    refused = rep.gql(costly, {"n": 100})
    assert refused["data"] is None
    assert refused["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
    assert refused["errors"][0]["extensions"]["cost"] > execution.MAX_COST
    assert len(counts) == 2, counts  # the costly document validated once, when it passed


def test_valid_for_the_admin_schema_is_not_valid_for_others(caller: Any) -> None:
    admin, rep = caller("admin"), caller("sales_manager", team="east")
    assert admin.gql(INTROSPECTION)["data"]["__schema"]["queryType"]["name"] == "Query"
    assert admin.gql(INTROSPECTION)["data"] is not None  # remembered for the admin schema
    refused = rep.gql(INTROSPECTION)
    assert refused.get("data") is None and refused["errors"]
    assert rep.gql(INTROSPECTION).get("data") is None  # and still, the second time


def test_a_document_that_failed_is_checked_every_time(caller: Any) -> None:
    rep = caller("sales_manager", team="east")
    misspelled = "{ me { nmae } }"
    deep = "{ " + "".join(f"f{i} {{ " for i in range(execution.MAX_DEPTH + 2)) + "leaf" + \
        " }" * (execution.MAX_DEPTH + 3)
    for document in (misspelled, misspelled, deep, deep):
        answer = rep.gql(document)
        assert answer.get("data") is None and answer["errors"], answer
    assert not any(text in (misspelled, deep) for _, text in VALID._pairs)
