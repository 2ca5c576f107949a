"""Trusted documents and the open path's limits (issue 7), on SQLite and PostgreSQL.

Refusals are shown by attacks: an unregistered document, a raw query, a document bound to
another client, an over-deep / over-costly / over-sized request, a flood; each is a clear
error with its code, and audited.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from schema.context import unit_of_work
from schema.graphql import execution
from schema.ops import documents
from schema.runtime import Appliance
from security.errors import BadUserInput, Forbidden
from storage.models import AuditEvent
from tests.conftest import operator

CONTACTS = "query Contacts($first: Int) { contacts(first: $first) { edges { node { id lastName email } } } }"
ME = "{ me { id roles } }"


def _register(appliance: Appliance, body: str, *clients: str) -> str:
    with unit_of_work(appliance, operator("admin")) as ctx:
        return documents.add_document(ctx, body, clients=clients,
                                      validate=execution.validate_document).id


def _trusted(appliance: Appliance, monkeypatch: pytest.MonkeyPatch, **more: Any) -> None:
    monkeypatch.setattr(appliance, "settings",
                        dataclasses.replace(appliance.settings, documents="trusted", **more))


def _post(caller: Any, payload: dict[str, Any]) -> dict[str, Any]:
    response = caller.http.post("/graphql", json=payload,
                                headers={"Authorization": f"Bearer {caller.token}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _audit(appliance: Appliance, action: str) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def _code(result: dict[str, Any]) -> str:
    return str(result["errors"][0]["extensions"]["code"])


def test_document_id_is_sha256_of_the_exact_text() -> None:
    # sha256 of the three bytes "abc" (FIPS 180-2 test vector).
    assert documents.document_id("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert documents.document_id("{ me { id } }") != documents.document_id("{ me { id }}")
    assert documents.is_document_id(documents.document_id("x"))
    assert not documents.is_document_id("sha256:XYZ")


def test_registered_document_runs_by_id_by_post_and_get(
        appliance: Appliance, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = caller("sales_manager", team="east")
    doc_id = _register(appliance, CONTACTS, rep.client_id)
    _trusted(appliance, monkeypatch)
    posted = _post(rep, {"documentId": doc_id, "variables": {"first": 5}})
    assert posted == {"data": {"contacts": {"edges": []}}}
    got = rep.http.get("/graphql", params={"documentId": doc_id,
                                           "variables": json.dumps({"first": 5})},
                       headers={"Authorization": f"Bearer {rep.token}"})
    assert got.status_code == 200 and got.json() == posted
    # Apollo's persisted-query extension names the same document.
    apollo = _post(rep, {"extensions": {"persistedQuery": {
        "version": 1, "sha256Hash": doc_id.removeprefix("sha256:")}}})
    assert apollo == posted


def test_trusted_mode_refuses_raw_unknown_and_unbound_documents_and_audits(
        appliance: Appliance, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, other = caller("sales_manager", team="east"), caller("sales_manager", team="east")
    doc_id = _register(appliance, CONTACTS, owner.client_id)
    _trusted(appliance, monkeypatch)
    raw = _post(other, {"query": ME})
    assert _code(raw) == "FORBIDDEN" and raw["data"] is None
    unknown = _post(other, {"documentId": documents.document_id("{ me { name } }")})
    assert _code(unknown) == "PERSISTED_QUERY_NOT_FOUND" and unknown["data"] is None
    unbound = _post(other, {"documentId": doc_id})
    assert _code(unbound) == "FORBIDDEN" and unbound["data"] is None
    assert "not registered for client" in unbound["errors"][0]["message"]
    mismatched = _post(owner, {"documentId": doc_id, "query": ME})
    assert _code(mismatched) == "BAD_USER_INPUT"
    refusals = _audit(appliance, "document.refused")
    assert len(refusals) == 4
    assert all(e.decision == "deny" and e.actor.endswith(other.client_id) or
               e.actor.endswith(owner.client_id) for e in refusals)
    assert doc_id in refusals[2].object_ids and refusals[2].reason
    # The owner may still run it.
    assert "errors" not in _post(owner, {"documentId": doc_id})


def test_open_mode_still_runs_raw_queries(caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    assert rep.gql(ME)["data"]["me"]["roles"] == ["sales_rep"]


def test_registration_needs_document_manage_and_a_valid_document(
        appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    with unit_of_work(appliance, operator("sales_manager")) as ctx, \
            pytest.raises(Forbidden):
        documents.add_document(ctx, ME, clients=[rep.client_id])
    with unit_of_work(appliance, operator("admin")) as ctx, pytest.raises(BadUserInput) as bad:
        documents.add_document(ctx, "{ me { nope } }", clients=[rep.client_id],
                               validate=execution.validate_document)
    assert "nope" in bad.value.message
    with unit_of_work(appliance, operator("admin")) as ctx, pytest.raises(BadUserInput):
        documents.add_document(ctx, ME, clients=["c-no-such-client"])
    assert _audit(appliance, "document.register") == []


def test_manifest_unbind_and_remove_are_audited(appliance: Appliance, caller: Any) -> None:
    a, b = caller("sales_rep", team="east"), caller("sales_rep", team="east")
    manifest = json.dumps({"format": "apollo-persisted-query-manifest", "version": 1,
                           "operations": [{"id": documents.document_id(ME).removeprefix(
                               "sha256:"), "name": "Me", "type": "query", "body": ME}]})
    with unit_of_work(appliance, operator("admin")) as ctx:
        (registered,) = documents.add_manifest(ctx, manifest, clients=[a.client_id, b.client_id])
    relay = json.dumps({documents.document_id(CONTACTS): CONTACTS})
    with unit_of_work(appliance, operator("admin")) as ctx:
        documents.add_manifest(ctx, relay, clients=[a.client_id])
    forged = json.dumps({documents.document_id(ME): CONTACTS})
    with unit_of_work(appliance, operator("admin")) as ctx, pytest.raises(BadUserInput):
        documents.add_manifest(ctx, forged, clients=[a.client_id])
    misshapen = json.dumps({"format": "apollo-persisted-query-manifest", "operations": "x"})
    with unit_of_work(appliance, operator("admin")) as ctx, \
            pytest.raises(BadUserInput, match="list of"):
        documents.add_manifest(ctx, misshapen, clients=[a.client_id])
    with unit_of_work(appliance, operator("admin")) as ctx:
        assert documents.remove_document(ctx, registered.id, client=a.client_id) is False
        assert [r.clients for r in documents.list_documents(ctx, client=b.client_id)] == \
            [[b.client_id]]
        assert documents.remove_document(ctx, registered.id) is True
    assert len(_audit(appliance, "document.register")) == 2
    assert len(_audit(appliance, "document.unbind")) == 1
    assert len(_audit(appliance, "document.remove")) == 1


def test_cli_add_list_remove(appliance: Appliance, caller: Any, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from api.cli import app
    rep = caller("sales_rep", team="east")
    source = tmp_path / "me.graphql"
    source.write_text(ME)
    monkeypatch.setenv("ENCLAVE_DATA_DIR", str(appliance.settings.data_dir))
    monkeypatch.setenv("ENCLAVE_DEV_MODE", "1")
    if appliance.settings.database_url:
        monkeypatch.setenv("ENCLAVE_DATABASE_URL", appliance.settings.database_url)
    runner = CliRunner()

    def last_json(output: str) -> Any:
        return json.loads(output.strip().splitlines()[-1])

    added = runner.invoke(app, ["documents", "add", "--client", rep.client_id, str(source),
                                "--json"])
    assert added.exit_code == 0, added.output
    assert last_json(added.output)[0]["id"] == documents.document_id(ME)
    listed = runner.invoke(app, ["documents", "list", "--json"])
    assert [d["id"] for d in last_json(listed.output)] == [documents.document_id(ME)]
    removed = runner.invoke(app, ["documents", "remove", documents.document_id(ME)])
    assert removed.exit_code == 0, removed.output
    assert last_json(runner.invoke(app, ["documents", "list", "--json"]).output) == []
    # Of several files, the one that fails is named, and none is registered.
    bad = source.with_name("bad.graphql")
    bad.write_text("{ noSuchField }")
    refused = runner.invoke(app, ["documents", "add", "--client", rep.client_id, str(source),
                                  str(bad)])
    assert refused.exit_code != 0
    assert isinstance(refused.exception, BadUserInput)
    assert refused.exception.message.startswith(f"{bad}: ")
    assert "no file was registered" in refused.exception.message
    assert last_json(runner.invoke(app, ["documents", "list", "--json"]).output) == []


# -- limits of the open path ---------------------------------------------------------------------

def test_over_costly_query_is_refused_before_it_runs_and_audited(
        appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_manager", team="east")
    fields = " ".join(["id lastName email phone title notes"] * 1)
    costly = rep.gql(f"{{ contacts(first: 100) {{ edges {{ node {{ {fields} account {{ id name "
                     "industry website owner team createdAt updatedAt } } } } }")
    ok = rep.gql(f"{{ contacts(first: 10) {{ edges {{ node {{ {fields} }} }} }} }}")
    assert "errors" not in ok
    aliased = "{ " + " ".join(f"c{i}: contacts(first: 100) {{ edges {{ node {{ id email "
                              f"phone notes title }} }} }}" for i in range(9)) + " }"
    refused = rep.gql(aliased)
    assert refused["data"] is None
    assert _code(refused) == "QUERY_TOO_COSTLY", refused
    assert refused["errors"][0]["extensions"]["cost"] > execution.MAX_COST
    assert costly.get("data") is not None  # 100 x 14 fields is within 5000
    # Variables count: the same document is cheap with a small page and refused with a big one.
    doc = ("query($n: Int) { " + " ".join(f"c{i}: contacts(first: $n) {{ edges {{ node {{ id "
                                           f"email phone notes title }} }} }}"
                                           for i in range(9)) + " }")
    assert "errors" not in rep.gql(doc, {"n": 5})
    assert _code(rep.gql(doc, {"n": 100})) == "QUERY_TOO_COSTLY"
    events = _audit(appliance, "graphql.refused")
    assert len(events) == 2 and all("costs" in (e.reason or "") for e in events)


def test_fragments_spread_over_and_over_are_costed_at_once(caller: Any) -> None:
    """A fragment spread twice into itself doubles at every level up to the nesting limit:
    walked afresh at each use, working out its cost took minutes and held the request's
    thread. It is answered at once: the cycle by validation, the doubling of real fields by
    the cost limit (6.4e9 here)."""
    rep = caller("sales_manager", team="east")
    answers: dict[str, Any] = {}

    def send() -> None:
        answers["cycle"] = rep.gql("query { ...F } fragment F on Query { ...F ...F }")
        answers["doubling"] = rep.gql("query { ...F } fragment F on Query { me { id } "
                                      "...F ...F }")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=60)  # milliseconds now; 2**32 walks of the fragment before
    assert not sender.is_alive(), "the cost of a self-spreading fragment is still being walked"
    cycle, doubling = answers["cycle"], answers["doubling"]
    assert cycle.get("data") is None and "within itself" in cycle["errors"][0]["message"], cycle
    assert _code(doubling) == "QUERY_TOO_COSTLY", doubling
    assert doubling["errors"][0]["extensions"]["cost"] > 10**9


def test_over_deep_query_is_refused_and_audited(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_manager", team="east")
    body = "leaf"
    for i in range(execution.MAX_DEPTH + 2, 0, -1):
        body = f"f{i} {{ {body} }}"
    refused = rep.gql("{ " + body + " }")
    assert refused["data"] is None
    assert any("maximum operation depth of 6" in e["message"] for e in refused["errors"])
    assert any("depth" in (e.reason or "") for e in _audit(appliance, "graphql.refused"))


def test_variables_over_the_size_limit_are_refused(appliance: Appliance, caller: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rep = caller("sales_manager", team="east")
    response = rep.http.post("/graphql", json={"query": ME, "variables": {"x": "y" * 70_000}},
                             headers={"Authorization": f"Bearer {rep.token}"})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    again = rep.http.post("/graphql", json={"query": ME, "variables": {"x": "y" * 70_000}},
                          headers={"Authorization": f"Bearer {rep.token}"})
    assert again.status_code == 413
    events = [e for e in _audit(appliance, "graphql.refused") if "variables" in (e.reason or "")]
    assert len(events) == 1 and events[0].actor == f"client:{rep.client_id}"


def test_rate_limit_per_client_is_429_and_audited_once(
        appliance: Appliance, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rep, other = caller("sales_rep", team="east"), caller("sales_rep", team="east")
    monkeypatch.setattr(appliance, "settings", dataclasses.replace(
        appliance.settings, rate_limit=0.001, rate_burst=3))
    with TestClient(create_app(appliance), base_url="http://127.0.0.1") as http:
        def send(who: Any) -> Any:
            return http.post("/graphql", json={"query": ME},
                             headers={"Authorization": f"Bearer {who.token}"})
        assert [send(rep).status_code for _ in range(3)] == [200, 200, 200]
        limited = [send(rep) for _ in range(3)]
        assert [r.status_code for r in limited] == [429, 429, 429]
        assert limited[0].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert int(limited[0].headers["retry-after"]) >= 1
        assert send(other).status_code == 200  # per client
    events = [e for e in _audit(appliance, "graphql.refused") if "rate limit" in (e.reason or "")]
    assert len(events) == 1


def test_statement_timeout_is_set_on_postgresql(appliance: Appliance, caller: Any,
                                                backend: str) -> None:
    rep = caller("sales_rep", team="east")
    seen: list[tuple[str, Any]] = []
    from sqlalchemy import event

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    event.listen(appliance.engine, "before_cursor_execute", record)
    try:
        assert "errors" not in rep.gql(ME)
    finally:
        event.remove(appliance.engine, "before_cursor_execute", record)
    timeouts = [(s, p) for s, p in seen if "statement_timeout" in s]
    if backend != "postgres":
        assert timeouts == []
        return
    # The request's first statement: set_config(..., true) is SET LOCAL for this transaction.
    assert len(timeouts) == 1 and seen[0] == timeouts[0]
    statement, parameters = timeouts[0]
    assert "set_config('statement_timeout', " in statement and ", true)" in statement
    assert str(appliance.settings.statement_timeout_ms) in parameters.values()


def test_get_refuses_mutations(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_manager", team="east")
    doc_id = _register(appliance, 'mutation { createAccount(input: {name: "A"}) { id } }',
                       rep.client_id)
    got = rep.http.get("/graphql", params={"documentId": doc_id},
                       headers={"Authorization": f"Bearer {rep.token}"})
    assert got.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "errors" not in _post(rep, {"documentId": doc_id})


def test_settings_reject_unknown_document_modes(tmp_path: Path) -> None:
    from security.config import Settings
    from security.errors import ConfigurationError
    with pytest.raises(ConfigurationError):
        Settings(data_dir=tmp_path, documents="sometimes")
    assert Settings(data_dir=tmp_path).documents == "trusted"
    assert Settings(data_dir=tmp_path, dev_mode=True).documents == "open"
    assert Settings.from_env({"ENCLAVE_DOCUMENTS": "open", "ENCLAVE_GRAPHQL_MAX_COST": "900"},
                             data_dir=tmp_path).graphql_max_cost == 900


def test_a_persons_token_runs_documents_bound_to_its_web_client(
        appliance: Appliance, http: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.signin_support import Flow, code_from, make_person, make_web_client, redeem, sign_in
    rep = make_person(appliance, "rep@example.com", "sales_rep", team="east")
    client_id, secret = make_web_client(appliance)
    other_id, _ = make_web_client(appliance)
    flow = Flow.new(client_id)
    token = redeem(http, flow, code_from(sign_in(http, flow, rep), flow), secret).json()
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    mine = _register(appliance, ME, client_id)
    theirs = _register(appliance, CONTACTS, other_id)
    _trusted(appliance, monkeypatch)
    ran = http.post("/graphql", json={"documentId": mine}, headers=bearer).json()
    assert ran["data"]["me"]["roles"] == ["sales_rep"]
    refused = http.post("/graphql", json={"documentId": theirs}, headers=bearer).json()
    assert _code(refused) == "FORBIDDEN" and client_id in refused["errors"][0]["message"]
