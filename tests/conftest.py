"""Shared fixtures: every test that takes `appliance` runs on real SQLite and real PostgreSQL.

PostgreSQL: 127.0.0.1:5432 with trust authentication (ENCLAVE_TEST_PG_URL overrides). The suite
makes a template database with the migrations applied once, and each test gets its own database
cloned from it; all are dropped at the end.
"""

from __future__ import annotations

import os
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from api.app import create_app
from schema.context import unit_of_work
from schema.ops import clients
from schema.runtime import Appliance, initialise
from security import totp
from security.config import Settings
from security.principal import Principal
from storage import migrate
from storage.db import make_engine

PG_ADMIN_URL = os.environ.get("ENCLAVE_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # the suite must not silently skip a database
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    created: list[str] = []
    yield engine, created
    with engine.connect() as connection:
        for name in reversed(created):
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin: Any) -> str:
    engine, created = pg_admin
    name = f"enclave_tpl_{uuid.uuid4().hex[:10]}"
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    created.append(name)
    template_engine = make_engine(_pg_url(name))
    migrate.upgrade(template_engine)
    template_engine.dispose()
    return name


@pytest.fixture
def pg_database(pg_admin: Any, pg_template: str) -> str:
    engine, created = pg_admin
    name = f"enclave_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    created.append(name)
    return _pg_url(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    database_url = None
    if backend == "postgres":
        database_url = request.getfixturevalue("pg_database")
    # Checkpoints by count only (every 8 entries): the periodic signer is tested on its own
    # (tests/test_audit_timer.py), so that no test's checkpoints depend on how long it ran.
    return Settings(data_dir=tmp_path / "var", database_url=database_url, dev_mode=True,
                    audit_checkpoint_every=8, audit_checkpoint_seconds=0)


@pytest.fixture
def appliance(settings: Settings) -> Iterator[Appliance]:
    initialise(settings)
    opened = Appliance.open(settings)
    yield opened
    opened.close()


@pytest.fixture
def http(appliance: Appliance) -> Iterator[TestClient]:
    with TestClient(create_app(appliance), base_url="http://127.0.0.1") as client:
        yield client


def operator(*roles: str, team: str | None = None, id: str = "tester") -> Principal:
    return Principal(id=id, name=id, roles=roles, team=team, kind="operator")


@dataclass
class Caller:
    """An API client with a token, for HTTP tests."""

    http: TestClient
    client_id: str
    secret: str
    token: str
    roles: tuple[str, ...]
    team: str | None

    def gql(self, query: str, variables: dict[str, Any] | None = None,
            expect_status: int = 200) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}},
                                  headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == expect_status, response.text
        return response.json()


def issue_token(http: TestClient, client_id: str, secret: str) -> str:
    response = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                         auth=(client_id, secret))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def new_client(appliance: Appliance, *roles: str, team: str | None = None,
               name: str = "test-app") -> tuple[str, str]:
    with unit_of_work(appliance, operator("admin")) as ctx:
        issued = clients.create_client(ctx, name=name, roles=list(roles), team=team)
        return issued.client.id, issued.secret


@pytest.fixture
def caller(appliance: Appliance, http: TestClient) -> Any:
    """caller("sales_manager", team="east") -> a Caller with a fresh token."""

    def make(*roles: str, team: str | None = None) -> Caller:
        client_id, secret = new_client(appliance, *roles, team=team)
        return Caller(http, client_id, secret, issue_token(http, client_id, secret), roles, team)

    return make


@pytest.fixture
def steady_totp_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """Holds the TOTP clock in the middle of one 30-second step for the test's length.

    Tests that send a code one or two steps off (window, replay) would otherwise change meaning
    when a step boundary passes mid-test: "one step behind" computed twice on either side of a
    boundary is two different codes, and the second is no replay."""
    middle = (totp.current_step() + 0.5) * totp.STEP_SECONDS
    monkeypatch.setattr(totp, "time", types.SimpleNamespace(time=lambda: middle))
    return middle
