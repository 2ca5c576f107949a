"""CSV import and export: rows validated like GraphQL inputs and reported by row and column,
all-or-nothing writes nothing when one row is bad, exports carry only what the role may read
(columns and records), both audited; over GraphQL and from the `enclave` command line.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from security.config import Settings
from security.principal import Principal
from storage.models import Account, AuditEvent, Contact

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
TEAM = "east"

IMPORT = """
mutation($o: String!, $csv: String!, $all: Boolean) {
  importCsv(objectType: $o, csv: $csv, allOrNothing: $all) {
    created rejectedCount rolledBack rejected { row field message }
  }
}"""
EXPORT = "query($o: String!) { exportCsv(objectType: $o) }"

GOOD_AND_BAD = (
    "lastName,firstName,email,phone,nationalId\n"
    "Abernathy,Iris,iris.a@example.com,+1 555 0101,AB-1001\n"
    "Brookfield,Jon,not-an-email,+1 555 0102,\n"
    ",Kai,kai@example.com,,\n"
    "Castellan,Lena,lena.c@example.org,+1 555 0104,\n"
)


def _contacts(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return session.scalar(select(func.count()).select_from(Contact)) or 0


def _codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors", [])]


def _seed(appliance: Appliance, team: str, last_name: str, **extra: str) -> str:
    principal = Principal(id=f"mgr-{team}", name="m", roles=("sales_manager",), team=team,
                          kind="operator")
    with unit_of_work(appliance, principal) as ctx:
        return str(contact_ops.create_contact(ctx, {"last_name": last_name, **extra}).id)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_import_writes_good_rows_and_reports_each_bad_one_by_row_and_column(
        appliance: Appliance, caller: Any) -> None:
    manager = caller("sales_manager", team=TEAM)
    result = manager.gql(IMPORT, {"o": "contact", "csv": GOOD_AND_BAD})
    assert "errors" not in result, result
    report = result["data"]["importCsv"]
    assert report["created"] == 2 and report["rejectedCount"] == 2 and not report["rolledBack"]
    assert [(r["row"], r["field"]) for r in report["rejected"]] == [(3, "email"), (4, "lastName")]
    assert "email" in report["rejected"][0]["message"]
    with appliance.sessions() as session:
        names = sorted(session.scalars(select(Contact.last_name)))
        assert names == ["Abernathy", "Castellan"]
        assert all(c.team == TEAM and c.owner == manager.client_id
                   for c in session.scalars(select(Contact)))
        raw = repr(session.execute(select(Contact.national_id, Contact.email)).all())
        assert "AB-1001" not in raw and "iris.a@example.com" not in raw  # sealed like any write
        entry = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.import")).one()
        assert {"created:2", "rejected:2"} <= set(json.loads(entry.fields))


def test_all_or_nothing_writes_nothing_when_one_row_is_bad(appliance: Appliance,
                                                           caller: Any) -> None:
    manager = caller("sales_manager", team=TEAM)
    result = manager.gql(IMPORT, {"o": "contact", "csv": GOOD_AND_BAD, "all": True})
    report = result["data"]["importCsv"]
    assert report["created"] == 0 and report["rolledBack"] and report["rejectedCount"] == 2
    assert _contacts(appliance) == 0
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "contact.create")) == 0
    good = "lastName,email\nDrummond,d@example.net\nEsterhazy,e@example.net\n"
    ok = manager.gql(IMPORT, {"o": "contact", "csv": good, "all": True})["data"]["importCsv"]
    assert ok == {"created": 2, "rejectedCount": 0, "rolledBack": False, "rejected": []}
    accounts = manager.gql(IMPORT, {"o": "account", "csv": "name,website\nFenwick Ltd,"
                                    "https://fenwick.example.com\nBad,ftp://x\n"})
    assert accounts["data"]["importCsv"]["created"] == 1
    assert accounts["data"]["importCsv"]["rejected"][0]["field"] == "website"
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 1


def test_a_quoting_error_stops_the_import_and_says_the_rest_was_not_read(
        caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team=TEAM)
    broken = 'lastName\nGale\n"Hurst\nIbbotson\nJarrow\n'  # row 3 opens a quote never closed
    report = manager.gql(IMPORT, {"o": "contact", "csv": broken})["data"]["importCsv"]
    assert report["created"] == 1 and report["rejectedCount"] == 1, report
    (rejected,) = report["rejected"]
    assert rejected["row"] == 3 and "the rows after it were not read" in rejected["message"]
    assert _contacts(appliance) == 1


def test_import_refuses_bad_files_roles_and_sizes(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team=TEAM)
    unknown = manager.gql(IMPORT, {"o": "contact", "csv": "lastName,shoeSize\nA,9\n"})
    assert _codes(unknown) == ["BAD_USER_INPUT"]
    assert unknown["errors"][0]["extensions"]["field"] == "shoeSize"
    owner = manager.gql(IMPORT, {"o": "contact", "csv": "lastName,owner\nA,someone\n"})
    assert _codes(owner) == ["BAD_USER_INPUT"]  # owner and team are the importer's
    assert _codes(manager.gql(IMPORT, {"o": "case", "csv": "x\n"})) == ["BAD_USER_INPUT"]
    support = caller("support_agent")
    assert _codes(support.gql(IMPORT, {"o": "contact", "csv": GOOD_AND_BAD})) == ["FORBIDDEN"]
    huge = "lastName\n" + ("x" * 99 + "\n") * 53_000
    big = manager.gql(IMPORT, {"o": "contact", "csv": huge}, expect_status=413) \
        if len(huge) > appliance.settings.max_body_bytes else None
    assert big is not None  # the HTTP body limit stops it before the resolver's 5 MB limit
    assert _contacts(appliance) == 0


def test_export_as_sales_rep_omits_restricted_columns_and_other_teams(
        appliance: Appliance, caller: Any) -> None:
    east = _seed(appliance, TEAM, "Fairweather", email="f@example.com",
                 national_id="NI-SECRET-1", birth_date="1980-02-03")
    _seed(appliance, "west", "Westmacott", email="w@example.com")
    rep = caller("sales_rep", team=TEAM)
    result = rep.gql(EXPORT, {"o": "contact"})
    assert "errors" not in result, result
    text = result["data"]["exportCsv"]
    rows = _rows(text)
    assert [r["id"] for r in rows] == [east]
    assert rows[0]["lastName"] == "Fairweather" and rows[0]["email"] == "f@example.com"
    assert "nationalId" not in rows[0] and "birthDate" not in rows[0]
    assert "NI-SECRET-1" not in text and "1980-02-03" not in text and "Westmacott" not in text
    with appliance.sessions() as session:
        export = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.export")).one()
        fields = json.loads(export.fields)
        assert "rows:1" in fields and "omitted:nationalId" in fields
        read = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.read",
            AuditEvent.actor == f"client:{rep.client_id}")).one()
        assert json.loads(read.object_ids) == [east]


def test_export_as_support_agent_holds_only_name_email_phone_columns(
        appliance: Appliance, caller: Any) -> None:
    _seed(appliance, TEAM, "Garroway", first_name="Hal", email="hal@example.com",
          phone="+1 555 0110", address="1 Secret Row", national_id="NI-2")
    text = caller("support_agent").gql(EXPORT, {"o": "contact"})["data"]["exportCsv"]
    header = next(csv.reader(io.StringIO(text)))
    assert header == ["id", "firstName", "lastName", "account", "email", "phone"]
    assert "Secret Row" not in text and "NI-2" not in text
    assert _rows(text)[0]["email"] == "hal@example.com"
    # A role with no read rule on contacts gets nothing at all.
    assert _codes(caller("integration").gql(EXPORT, {"o": "contact"})) == ["FORBIDDEN"]


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(settings.data_dir), "ENCLAVE_DEV_MODE": "1",
                "NO_COLOR": "1", "COLUMNS": "200"})
    if settings.database_url:
        env["ENCLAVE_DATABASE_URL"] = settings.database_url
    return env


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENCLAVE), *args], env=_cli_env(settings), capture_output=True,
                          text=True, timeout=120, check=False, cwd=settings.data_dir.parent)


def test_cli_import_and_export(appliance: Appliance, settings: Settings,
                               tmp_path: Path) -> None:
    source = tmp_path / "contacts.csv"
    source.write_text(GOOD_AND_BAD)
    refused = _cli(settings, "import", "contacts", str(source), "--all-or-nothing",
                   "--as-role", "sales_manager", "--team", TEAM)
    assert refused.returncode != 0, refused
    problems = [line for line in refused.stderr.splitlines() if line.startswith("enclave:")]
    assert len(problems) == 1 and "nothing was imported" in problems[0], refused.stderr
    assert "row 3 (email)" in refused.stderr and "Traceback" not in refused.stderr
    assert _contacts(appliance) == 0
    source.write_text("lastName,email,nationalId\nHolloway,h@example.com,NI-77\n")
    done = _cli(settings, "import", "contacts", str(source), "--as-role", "sales_manager",
                "--team", TEAM)
    assert done.returncode == 0, done.stderr
    assert "imported 1" in done.stdout
    target = tmp_path / "out.csv"
    exported = _cli(settings, "export", "contacts", "--as-role", "sales_rep", "--team", TEAM,
                    "-o", str(target))
    assert exported.returncode == 0, exported.stderr
    rows = _rows(target.read_text())
    assert [r["lastName"] for r in rows] == ["Holloway"] and "nationalId" not in rows[0]
    assert "nationalId" in exported.stderr  # named as left out
    # A file that is not UTF-8: one line, not an internal error.
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("lastName\nM\u00fcller\n".encode("latin-1"))
    unreadable = _cli(settings, "import", "contacts", str(latin), "--as-role", "sales_manager",
                      "--team", TEAM)
    assert unreadable.returncode == 1, unreadable.stderr
    assert [line for line in unreadable.stderr.splitlines() if line.startswith("enclave:")] \
        == ["enclave: error: the input is not UTF-8 text"], unreadable.stderr
    # A refused export leaves the file that was there as it was, and no partial file beside it.
    before = target.read_bytes()
    refused = _cli(settings, "export", "contacts", "--as-role", "admin", "-o", str(target))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    # A folder or a missing folder as the output: one line, nothing written.
    for output, says in ((tmp_path, "is a folder"), (tmp_path / "none" / "x.csv", "no folder")):
        bad = _cli(settings, "export", "contacts", "--as-role", "sales_rep", "--team", TEAM,
                   "-o", str(output))
        problems = [line for line in bad.stderr.splitlines() if line.startswith("enclave:")]
        assert bad.returncode == 1 and len(problems) == 1 and says in problems[0], bad.stderr


def test_leads_import_with_custom_columns_and_export(appliance: Appliance,
                                                     caller: Any) -> None:
    admin = caller("admin")
    for key, kind, cls in (("budget", "number", "internal"), ("vip", "boolean", "restricted")):
        defined = admin.gql("mutation($k: String!, $t: String!, $c: String!) { "
                            "defineCustomField(objectType: \"lead\", key: $k, type: $t, "
                            "classification: $c) { key } }", {"k": key, "t": kind, "c": cls})
        assert "errors" not in defined, defined
    manager = caller("sales_manager", team=TEAM)
    data = ("lastName,company,email,score,custom.budget,custom.vip\n"
            "Ingleby,Ingleby Co,i@example.com,40,1200.50,yes\n"
            "Jessop,,j@example.com,400,,\n"
            "Kettering,,k@example.com,10,lots,\n")
    report = manager.gql(IMPORT, {"o": "lead", "csv": data})["data"]["importCsv"]
    assert report["created"] == 1
    assert [(r["row"], r["field"]) for r in report["rejected"]] == [
        (3, "score"), (4, "custom.budget")]
    rep_view = _rows(caller("sales_rep", team=TEAM).gql(EXPORT, {"o": "lead"})["data"][
        "exportCsv"])
    assert rep_view[0]["lastName"] == "Ingleby" and rep_view[0]["custom.budget"] == "1200.50"
    assert "custom.vip" not in rep_view[0]  # restricted: the rep may not read it
    manager_view = _rows(manager.gql(EXPORT, {"o": "lead"})["data"]["exportCsv"])
    assert manager_view[0]["custom.vip"] == "true" and manager_view[0]["score"] == "40"
