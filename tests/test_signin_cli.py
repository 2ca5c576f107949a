"""`enclave users` and `enclave web-clients` as an operator runs them, and upgrading a data folder
made before people could sign in."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from alembic import command
from conftest import operator
from sqlalchemy import text

from schema.context import unit_of_work
from schema.ops import users
from schema.runtime import Appliance, initialise
from security.authz import MANAGE, READ
from security.config import Settings
from security.default_policy import rules_added_since
from security.errors import ConfigurationError
from storage import migrate
from storage.db import make_engine

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
SECRET_PASSWORD = "a long and secret passphrase"


def run(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(data_dir), "NO_COLOR": "1", "COLUMNS": "200"})
    return subprocess.run([str(ENCLAVE), *args], input=stdin, env=env, capture_output=True,
                          text=True, timeout=60, check=False, cwd=data_dir.parent)


def ok(data_dir: Path, *args: str, stdin: str = "") -> str:
    done = run(data_dir, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def refused(data_dir: Path, *args: str, expect: str, stdin: str = "") -> None:
    done = run(data_dir, *args, stdin=stdin)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and "DEVELOPMENT MODE" not in line]
    assert len(lines) == 1 and lines[0].startswith("enclave: error: "), done.stderr
    assert expect in lines[0], done.stderr


def test_users_and_web_clients_from_the_command_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    ok(data_dir, "init", "--dev")
    officer = json.loads(ok(data_dir, "users", "create", "--email", "Officer@Example.com",
                            "--role", "security_officer", "--password-stdin", "--json",
                            stdin=SECRET_PASSWORD + "\n"))
    assert officer["email"] == "officer@example.com" and officer["totp"] is True
    assert officer["totp_uri"].startswith("otpauth://totp/Enclave:officer%40example.com?secret=")
    assert officer["totp_secret"] in officer["totp_uri"]
    rep = ok(data_dir, "users", "create", "--email", "rep@example.com", "--role", "sales_rep",
             "--team", "east", "--password-stdin", stdin=SECRET_PASSWORD + "\n")
    assert "created rep@example.com (sales_rep; team east)" in rep and "TOTP" not in rep

    refused(data_dir, "users", "create", "--email", "rep@example.com", "--role", "sales_rep",
            "--password-stdin", stdin=SECRET_PASSWORD + "\n", expect="already exists")
    refused(data_dir, "users", "create", "--email", "x@example.com", "--role", "sales_rep",
            expect="--password-stdin")  # no terminal to prompt on
    refused(data_dir, "users", "create", "--email", "x@example.com", "--role", "sales_rep",
            "--password-stdin", stdin="short\n", expect="at least 12 characters")

    listed = json.loads(ok(data_dir, "users", "list", "--json"))
    assert [(u["email"], u["roles"], u["totp"]) for u in listed] == [
        ("officer@example.com", ["security_officer"], True),
        ("rep@example.com", ["sales_rep"], False)]
    assert all("password_hash" not in u and "totp_secret" not in u for u in listed)

    reset = json.loads(ok(data_dir, "users", "reset-totp", "officer@example.com", "--json"))
    assert reset["totp_secret"] != officer["totp_secret"]
    ok(data_dir, "users", "set-password", "rep@example.com", "--password-stdin",
       stdin="another long passphrase\n")
    ok(data_dir, "users", "disable", "REP@example.com")
    refused(data_dir, "users", "disable", "rep@example.com", expect="already disabled")
    assert "disabled" in ok(data_dir, "users", "list")

    web = json.loads(ok(data_dir, "web-clients", "create", "--name", "Sales app",
                        "--redirect-uri", "https://app.example.com/cb", "--json"))
    assert web["client_id"].startswith("w-") and len(web["client_secret"]) >= 32
    spa = json.loads(ok(data_dir, "web-clients", "create", "--name", "SPA", "--public",
                        "--redirect-uri", "http://127.0.0.1:5173/cb", "--json"))
    assert spa["client_secret"] is None
    refused(data_dir, "web-clients", "create", "--name", "bad", "--redirect-uri",
            "http://app.example.com/cb", expect="loopback only")
    refused(data_dir, "web-clients", "create", "--name", "bad", "--redirect-uri",
            "https://*.example.com/cb", expect="wildcard")
    for malformed in ("https://[::1/cb", "http://localhost:99999/cb", "https://exa mple.com/"):
        refused(data_dir, "web-clients", "create", "--name", "bad", "--redirect-uri", malformed,
                expect="redirect_uri")
    ok(data_dir, "web-clients", "revoke", web["client_id"])
    clients = {c["client_id"]: c for c in json.loads(ok(data_dir, "web-clients", "list",
                                                        "--json"))}
    assert clients[web["client_id"]]["revoked_at"] and clients[spa["client_id"]]["public"]

    # Nothing secret reached the database in the clear.
    stored = (data_dir / "enclave.db").read_bytes()
    for secret in (SECRET_PASSWORD, "another long passphrase", officer["totp_secret"],
                   reset["totp_secret"], web["client_secret"]):
        assert secret.encode() not in stored
    with make_engine(f"sqlite:///{data_dir / 'enclave.db'}").connect() as connection:
        actions = [r[0] for r in connection.execute(text(
            "SELECT action FROM audit_events WHERE object_type IN ('user', 'client') "
            "AND actor LIKE 'operator:%' ORDER BY seq"))]
    assert actions == ["user.create", "user.create", "user.totp_reset", "user.password_set",
                       "user.disable", "client.create", "client.create", "client.revoke"]


def test_upgrading_a_data_folder_from_before_peoples_sign_in(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", dev_mode=True)
    initialise(settings)
    # Make it look like the release before: schema at 0002, its default rules only.
    engine = make_engine(settings.resolved_database_url)
    config = migrate._config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002_erasures")
        for rule in rules_added_since(1):
            connection.execute(text(
                "DELETE FROM policy_rules WHERE role = :r AND object_type = :o AND field = :f "
                "AND action = :a"), dict(zip("rofa", rule.as_tuple(), strict=True)))
        connection.execute(text("DELETE FROM settings WHERE key = 'default_policy_revision'"))
        version = connection.execute(text(
            "SELECT value FROM settings WHERE key = 'policy_version'")).scalar_one()
    engine.dispose()

    with pytest.raises(ConfigurationError, match="run `enclave init`"):
        Appliance.open(settings)
    initialise(settings)  # what the upgrade runs
    appliance = Appliance.open(settings)
    try:
        with appliance.engine.connect() as connection:
            assert connection.execute(text(
                "SELECT value FROM settings WHERE key = 'policy_version'")).scalar_one() \
                == str(int(version) + 1)
            entry = connection.execute(text(
                "SELECT actor, fields FROM audit_events WHERE action = 'policy.defaults'")).one()
        assert entry.actor == "system:enclave"
        # Revision 2's rules (people's sign-in), then every later revision's.
        added = json.loads(entry.fields)
        assert added[:3] == ["admin:user:@all:manage", "auditor:audit:@all:read",
                             "auditor:policy:@all:read"]
        assert added == [":".join(r.as_tuple()) for r in rules_added_since(1)]
        with unit_of_work(appliance, operator("admin")) as ctx:
            users.create_user(ctx, email="first@example.com", roles=["auditor"],
                              password=SECRET_PASSWORD)
        with unit_of_work(appliance, operator("auditor")) as ctx:
            assert ctx.guard.permits("audit", READ) and ctx.guard.permits("policy", READ)
            assert not ctx.guard.permits("user", MANAGE)
        # A rule revoked afterwards stays revoked: the defaults are added once.
        with appliance.engine.begin() as connection:
            connection.execute(text("DELETE FROM policy_rules WHERE role = 'auditor' "
                                    "AND object_type = 'policy'"))
    finally:
        appliance.close()
    initialise(settings)
    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as connection:
        assert connection.execute(text(
            "SELECT count(*) FROM policy_rules WHERE role = 'auditor'")).scalar_one() == 1
    engine.dispose()
