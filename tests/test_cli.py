"""The real `enclave` console script, run as a subprocess against a temporary data folder."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from storage.models import ApiClient

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
DEV_BANNER = "DEVELOPMENT MODE"
COMMAND_TIMEOUT = 60


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def problem_lines(self) -> list[str]:
        """stderr without the development-mode warning every dev command prints."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and DEV_BANNER not in line]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ENCLAVE_") and k not in ("FORCE_COLOR", "PY_COLORS")}
    env.update({"ENCLAVE_DATA_DIR": str(data_dir), "NO_COLOR": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def enclave(data_dir: Path, *args: str, **env: str) -> Run:
    cwd = next(p for p in data_dir.parents if p.exists())
    done = subprocess.run([str(ENCLAVE), *args], env=_env(data_dir, **env), cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def ok(data_dir: Path, *args: str, **env: str) -> Run:
    run = enclave(data_dir, *args, **env)
    assert run.returncode == 0, (args, run)
    assert "Traceback" not in run.stderr + run.stdout
    return run


def assert_one_line_error(run: Run, *, expect_in: str, code: int | None = None) -> str:
    assert run.returncode != 0, run
    if code is not None:
        assert run.returncode == code, run
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run
    lines = run.problem_lines
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("enclave: "), run.stderr
    assert expect_in in lines[0], run.stderr
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def dev_dir(data_dir: Path) -> Path:
    ok(data_dir, "init", "--dev")
    return data_dir


def test_enclave_is_the_repository_console_script() -> None:
    assert ENCLAVE.is_file() and os.access(ENCLAVE, os.X_OK)
    shebang = ENCLAVE.read_text().splitlines()[0]
    assert str(REPO / ".venv") in shebang


# -- 1. init ------------------------------------------------------------------------------------

def test_init_dev_creates_the_data_folder_and_issues_the_secret_once(data_dir: Path) -> None:
    first = ok(data_dir, "init", "--dev")
    assert DEV_BANNER in first.stderr

    assert _mode(data_dir) == 0o700
    keys_dir = data_dir / "keys"
    assert keys_dir.is_dir() and _mode(keys_dir) == 0o700
    kek = keys_dir / "kek.json"
    assert kek.is_file() and _mode(kek) == 0o600
    assert (data_dir / "enclave.db").is_file()
    assert _mode(data_dir / "enclave.db") & 0o077 == 0
    credentials_path = data_dir / "bootstrap-credentials.json"
    assert credentials_path.is_file() and _mode(credentials_path) == 0o600
    credentials_text = credentials_path.read_text()
    credentials = json.loads(credentials_text)
    client_id, secret = credentials["client_id"], credentials["client_secret"]
    assert client_id and len(secret) >= 32
    assert credentials["roles"] == ["admin"]

    # The secret is printed once, on stdout, never on stderr.
    assert first.stdout.count(secret) == 1
    assert client_id in first.stdout
    assert secret not in first.stderr

    # The secret is not stored in the clear in the database, nor the KEK.
    assert secret.encode() not in (data_dir / "enclave.db").read_bytes()
    assert secret.encode() not in kek.read_bytes()

    for again in (("init",), ("init", "--dev")):
        rerun = ok(data_dir, *again)
        assert secret not in rerun.stdout + rerun.stderr, again
        assert "client_secret" not in rerun.stdout
        assert "already issued" in rerun.stdout
        assert credentials_path.read_text() == credentials_text
        assert _mode(credentials_path) == 0o600

    listed = ok(data_dir, "clients", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [r["client_id"] for r in rows] == [client_id]
    assert rows[0]["roles"] == ["admin"] and rows[0]["revoked_at"] is None


def test_init_without_dev_needs_a_passphrase(data_dir: Path) -> None:
    run = enclave(data_dir, "init")
    assert_one_line_error(run, expect_in="ENCLAVE_KEY_PASSPHRASE", code=3)
    assert not (data_dir / "keys" / "kek.json").exists()
    assert not (data_dir / "bootstrap-credentials.json").exists()


# -- 2. clients ---------------------------------------------------------------------------------

def test_clients_create_list_revoke(dev_dir: Path) -> None:
    made = ok(dev_dir, "clients", "create", "--name", "webshop", "--role", "sales_manager",
              "--team", "t", "--json")
    issued = json.loads(made.stdout)
    client_id, secret = issued["client_id"], issued["client_secret"]
    assert client_id.startswith("c-") and len(secret) >= 32
    assert issued["roles"] == ["sales_manager"] and issued["team"] == "t"

    text_made = ok(dev_dir, "clients", "create", "--name", "erp", "--role", "sales_rep",
                   "--role", "support_agent")
    assert "client_secret:" in text_made.stdout and "shown once" in text_made.stdout

    listing = ok(dev_dir, "clients", "list")
    line = next(line for line in listing.stdout.splitlines() if client_id in line)
    assert "webshop" in line and "sales_manager" in line and line.rstrip().endswith("active")
    assert "erp" in listing.stdout and "sales_rep,support_agent" in listing.stdout
    as_json = ok(dev_dir, "clients", "list", "--json")
    for run in (listing, as_json):
        assert secret not in run.stdout + run.stderr
        assert "secret" not in run.stdout.lower()
    rows = {r["client_id"]: r for r in json.loads(as_json.stdout)}
    assert rows[client_id]["revoked_at"] is None and set(rows[client_id]) == {
        "client_id", "name", "roles", "team", "created_at", "revoked_at"}

    revoked = ok(dev_dir, "clients", "revoke", client_id)
    assert client_id in revoked.stdout
    after = ok(dev_dir, "clients", "list")
    line = next(line for line in after.stdout.splitlines() if client_id in line)
    assert line.rstrip().endswith("revoked")
    rows = {r["client_id"]: r for r in json.loads(
        ok(dev_dir, "clients", "list", "--json").stdout)}
    assert rows[client_id]["revoked_at"] is not None
    assert all(r["revoked_at"] is None for i, r in rows.items() if i != client_id)

    again = enclave(dev_dir, "clients", "revoke", client_id)
    assert_one_line_error(again, expect_in="already revoked")
    unknown = enclave(dev_dir, "clients", "revoke", "c-does-not-exist")
    assert_one_line_error(unknown, expect_in="c-does-not-exist")


def test_clients_create_on_postgres(data_dir: Path, pg_database: str) -> None:
    env = {"ENCLAVE_DATABASE_URL": pg_database}
    init = ok(data_dir, "init", "--dev", **env)
    credentials = json.loads((data_dir / "bootstrap-credentials.json").read_text())
    assert credentials["client_secret"] in init.stdout
    assert not (data_dir / "enclave.db").exists(), "PostgreSQL was asked for, SQLite was used"
    made = json.loads(ok(data_dir, "clients", "create", "--name", "pg-app", "--role",
                         "sales_rep", "--team", "north", "--json", **env).stdout)
    engine = create_engine(pg_database)
    try:
        with engine.connect() as connection:
            rows = {r.id: r for r in connection.execute(select(ApiClient))}
    finally:
        engine.dispose()
    assert set(rows) == {credentials["client_id"], made["client_id"]}
    row = rows[made["client_id"]]
    assert row.name == "pg-app" and row.roles == ["sales_rep"] and row.team == "north"
    assert made["client_secret"] not in row.secret_hash
    again = ok(data_dir, "init", **env)
    assert credentials["client_secret"] not in again.stdout


# -- 3. errors ----------------------------------------------------------------------------------

def test_unknown_role_is_one_line(dev_dir: Path) -> None:
    before = ok(dev_dir, "clients", "list", "--json").stdout
    run = enclave(dev_dir, "clients", "create", "--name", "x", "--role", "overlord")
    line = assert_one_line_error(run, expect_in="overlord", code=1)
    assert "unknown role" in line
    assert run.stdout == ""
    assert ok(dev_dir, "clients", "list", "--json").stdout == before


def test_brackets_in_names_and_ids_print_as_text(dev_dir: Path) -> None:
    """The console library reads "[/x]" as a closing tag: what users type is never markup."""
    unknown = enclave(dev_dir, "clients", "revoke", "[/foo]")
    assert_one_line_error(unknown, expect_in="no client [/foo]", code=1)
    ok(dev_dir, "clients", "create", "--name", "evil[/x]", "--role", "sales_rep")
    assert "evil[/x]" in ok(dev_dir, "clients", "list").stdout
    bad_key = enclave(dev_dir, "custom-fields", "define", "contact", "Tier", "--type", "text",
                      "--classification", "public")
    assert_one_line_error(bad_key, expect_in="[a-z][a-z0-9_]{0,40}", code=1)


def test_contradictory_or_unknown_options_are_refused_not_ignored(dev_dir: Path,
                                                                  tmp_path: Path) -> None:
    before = ok(dev_dir, "audit", "verify", "--json").stdout
    for args, says in (
            (("backup", "list", "--dir", str(tmp_path / "none")), "is not a folder"),
            (("backup", "prune", "--keep-daily", "1", "--dir", str(tmp_path / "none")),
             "is not a folder"),
            (("audit", "export", "--out", str(tmp_path / "e.json"), "--decision", "maybe"),
             "allow, deny or error"),
            (("demo", "--contacts", "1", "--team", ""), "--team"),
            (("demo", "--contacts", "1", "--team", "x" * 101), "longer than 100"),
            (("users", "create", "--email", "a@example.com", "--role", "sales_rep",
              "--no-password", "--password-stdin"), "contradict")):
        assert_one_line_error(enclave(dev_dir, *args), expect_in=says, code=1)
    assert not (tmp_path / "e.json").exists()
    # Nothing was written by any of them (the audit log's length is unchanged).
    assert json.loads(ok(dev_dir, "audit", "verify", "--json").stdout)["entries"] \
        == json.loads(before)["entries"]


def test_a_database_url_that_is_not_one_is_a_configuration_error(dev_dir: Path) -> None:
    for url, says in (("notaurl", "not a URL"), ("mysql://u@h/db", "'mysql'")):
        run = enclave(dev_dir, "clients", "list", ENCLAVE_DATABASE_URL=url)
        assert_one_line_error(run, expect_in=says, code=3)


def test_a_lost_database_is_named_and_never_replaced_by_an_empty_one(dev_dir: Path,
                                                                     tmp_path: Path) -> None:
    (dev_dir / "enclave.db").unlink()
    for args in (("clients", "list"), ("init", "--dev")):
        run = enclave(dev_dir, *args)
        assert_one_line_error(run, expect_in="enclave backup restore", code=3)
        assert not (dev_dir / "enclave.db").exists(), args
    # A file that is not a database where the database was: named, not an internal error.
    (dev_dir / "enclave.db").write_bytes(b"not a database, just some bytes" * 64)
    assert_one_line_error(enclave(dev_dir, "clients", "list"),
                          expect_in="is not a SQLite database", code=3)
    # A refused init of a new folder (no passphrase outside development mode) leaves no folder.
    fresh = tmp_path / "fresh" / "var"
    assert_one_line_error(enclave(fresh, "init"), expect_in="ENCLAVE_KEY_PASSPHRASE", code=3)
    assert not fresh.exists()


def test_sealed_kek_needs_the_right_passphrase(data_dir: Path) -> None:
    passphrase = "correct horse battery staple"
    init = ok(data_dir, "init", ENCLAVE_KEY_PASSPHRASE=passphrase)
    assert DEV_BANNER not in init.stderr
    kek_text = (data_dir / "keys" / "kek.json").read_text()
    kek = json.loads(kek_text)
    assert kek["sealing"] == "scrypt" and "key" not in kek
    assert passphrase not in kek_text

    missing = enclave(data_dir, "clients", "list")
    assert_one_line_error(missing, expect_in="ENCLAVE_KEY_PASSPHRASE", code=3)
    assert "sealed" in missing.stderr
    wrong = enclave(data_dir, "clients", "list", ENCLAVE_KEY_PASSPHRASE="wrong horse")
    line = assert_one_line_error(wrong, expect_in="wrong ENCLAVE_KEY_PASSPHRASE", code=3)
    assert "wrong horse" not in line
    right = ok(data_dir, "clients", "list", ENCLAVE_KEY_PASSPHRASE=passphrase)
    assert "bootstrap-admin" in right.stdout
    # The sealed key cannot be forced open by claiming development mode either.
    dev = enclave(data_dir, "clients", "list", ENCLAVE_DEV_MODE="1")
    assert_one_line_error(dev, expect_in="ENCLAVE_KEY_PASSPHRASE", code=3)


def test_uninitialised_data_folder(tmp_path: Path) -> None:
    never = tmp_path / "never" / "var"
    # serve too: one line before anything listens, not a traceback from each worker.
    for args in (("clients", "list"), ("audit", "verify"), ("keys", "rotate"),
                 ("serve", "--host", "127.0.0.1", "--port", "1")):
        run = enclave(never, *args)
        assert_one_line_error(run, expect_in="enclave init", code=3)
    assert not never.exists(), "a read-only command must not create the data folder"


def test_unsealed_kek_is_refused_outside_development_mode(dev_dir: Path) -> None:
    (dev_dir / "DEVELOPMENT-MODE").unlink()
    run = enclave(dev_dir, "clients", "list")
    assert_one_line_error(run, expect_in="development mode", code=3)


def test_readable_kek_is_refused(dev_dir: Path) -> None:
    kek = dev_dir / "keys" / "kek.json"
    kek.chmod(0o644)
    run = enclave(dev_dir, "clients", "list")
    assert_one_line_error(run, expect_in="chmod 600", code=3)


# -- 4. keys and audit --------------------------------------------------------------------------

def test_rotate_reencrypt_verify_then_tamper(dev_dir: Path) -> None:
    demo = ok(dev_dir, "demo", "--contacts", "20")
    assert "20 contacts" in demo.stdout and "leads" in demo.stdout
    database = dev_dir / "enclave.db"
    sealed_tables = ("contacts", "leads", "opportunities", "activities", "cases", "consents")
    with sqlite3.connect(database) as connection:
        sealed_rows = sum(connection.execute(
            f"SELECT count(*) FROM {table} WHERE key_version IS NOT NULL").fetchone()[0]
            for table in sealed_tables)
        # every module was filled
        assert all(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0
                   for table in (*sealed_tables, "campaigns", "campaign_members"))
    rotated = ok(dev_dir, "keys", "rotate")
    assert "version 2" in rotated.stdout
    moved = ok(dev_dir, "keys", "reencrypt", "--batch-size", "7")
    assert f"re-encrypted {sealed_rows} records to field key version 2" in moved.stdout
    with sqlite3.connect(database) as connection:
        for table in sealed_tables:
            versions = connection.execute(
                f"SELECT DISTINCT key_version FROM {table} WHERE key_version IS NOT NULL"
            ).fetchall()
            assert versions in ([], [(2,)]), table
    again = ok(dev_dir, "keys", "reencrypt")
    assert "re-encrypted 0 records" in again.stdout

    verified = ok(dev_dir, "audit", "verify", "--json")
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["first_bad_seq"] is None
    entries = report["entries"]
    assert entries >= 5
    assert "intact" in ok(dev_dir, "audit", "verify").stdout

    middle = entries // 2
    connection = sqlite3.connect(database)
    try:
        # The database refuses the change until the trigger is dropped.
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?",
                               (middle,))
        connection.rollback()
        connection.execute("DROP TRIGGER audit_events_no_update")
        changed = connection.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?",
                                     (middle,))
        assert changed.rowcount == 1
        connection.commit()
    finally:
        connection.close()

    tampered = enclave(dev_dir, "audit", "verify")
    line = assert_one_line_error(tampered, expect_in=f"first bad entry {middle}", code=1)
    assert "TAMPERED" in line
    as_json = enclave(dev_dir, "audit", "verify", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["first_bad_seq"] == middle


# -- 5. serve -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, *, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def test_serve_answers_over_real_http(data_dir: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = data_dir.parent / "serve.out", data_dir.parent / "serve.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        server = subprocess.Popen([str(ENCLAVE), "serve", "--dev", "--port", str(port)],
                                  env=_env(data_dir), cwd=data_dir.parent, stdout=out,
                                  stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, err_path.read_text()
            try:
                status, headers, body = _request(f"{base}/healthz")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "the server did not come up: " + \
                err_path.read_text()
            time.sleep(0.1)
        assert body == {"status": "ok"}
        assert headers.get("x-content-type-options") == "nosniff"
        assert "server" not in {k.lower() for k in headers}

        made = json.loads(ok(data_dir, "clients", "create", "--name", "live", "--role",
                             "sales_manager", "--team", "east", "--json").stdout)
        basic = base64.b64encode(f"{made['client_id']}:{made['client_secret']}".encode()).decode()
        status, headers, token = _request(
            f"{base}/oauth/token",
            data=urllib.parse.urlencode({"grant_type": "client_credentials"}).encode(),
            headers={"Authorization": f"Basic {basic}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, token
        assert token["token_type"].lower() == "bearer" and token["access_token"]
        assert "no-store" in headers.get("cache-control", "")

        def gql(query: str, variables: dict[str, Any] | None = None) -> Any:
            status, _, body = _request(
                f"{base}/graphql",
                data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                headers={"Authorization": f"Bearer {token['access_token']}",
                         "Content-Type": "application/json"})
            assert status == 200, body
            return body

        created = gql('mutation { createContact(input: {lastName: "Served", '
                      'email: "served@example.com"}) { id email } }')
        assert "errors" not in created, created
        contact_id = created["data"]["createContact"]["id"]
        read = gql("query($id: ID!) { contact(id: $id) { lastName email team } }",
                   {"id": contact_id})
        assert read == {"data": {"contact": {"lastName": "Served", "email": "served@example.com",
                                             "team": "east"}}}

        status, _, refused = _request(f"{base}/graphql",
                                      data=b'{"query": "{ me { id } }"}',
                                      headers={"Content-Type": "application/json"})
        assert status == 401
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    stderr = err_path.read_text()
    assert "ENCLAVE IS RUNNING IN DEVELOPMENT MODE" in stderr
    assert "Traceback" not in stderr
    stdout = out_path.read_text()
    credentials = json.loads((data_dir / "bootstrap-credentials.json").read_text())
    assert stdout.count(credentials["client_secret"]) == 1
    assert made["client_secret"] not in stdout + stderr
    assert token["access_token"] not in stdout + stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
