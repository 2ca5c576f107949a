"""The compiled page statement is built right when threads race to build it first.

SQLAlchemy adapts an aliased class's attributes on first use, and is not safe when two threads
do it at once: one of them can render `accounts.key_version` for `acc.key_version`, which turns
the page into a cross join with every account (seen under the benchmark's load: 50 copies of
the first contact, audited as such). A fresh process is imitated with a fresh alias and an
empty statement cache; the threads switch as often as the interpreter allows.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased

from schema.compiled import sql
from storage.models import Account

CONTACT_COLUMNS = ("account_id", "email", "first_name", "id", "key_version", "last_name",
                   "owner", "phone", "team", "title")
ACCOUNT_COLUMNS = ("id", "key_version", "name", "owner", "team")


@pytest.fixture
def eager_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _race(threads: int) -> list[str]:
    rendered: list[str] = []
    start = threading.Barrier(threads)

    def build() -> None:
        start.wait()
        statement = sql.page_statement(CONTACT_COLUMNS, ACCOUNT_COLUMNS, (False, True, False),
                                       (False, False, False, False), False, 51)
        rendered.append(str(statement.compile(dialect=postgresql.dialect())))

    workers = [threading.Thread(target=build) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return rendered


@pytest.mark.parametrize("alias", ["unprimed", "primed"])
def test_threads_building_the_first_page_statement_at_once_all_get_the_alias(
        alias: str, monkeypatch: pytest.MonkeyPatch, eager_switching: None) -> None:
    wrong = 0
    for _ in range(30):
        fresh = aliased(Account, name="acc") if alias == "unprimed" else sql.primed_alias()
        monkeypatch.setattr(sql, "_ACCOUNT", fresh)
        monkeypatch.setattr(sql, "_STATEMENTS", {})
        for text in _race(8):
            assert "acc.key_version AS acc__key_version" in text
            wrong += "accounts." in text
    assert wrong == 0


def test_a_primed_alias_has_every_account_column_adapted_already() -> None:
    alias = sql.primed_alias()
    adapted = {key for key in vars(alias) if not key.startswith("_")}
    assert {"id", "key_version", "name", "owner", "team"} <= adapted
    assert str(alias.key_version.__clause_element__().compile()) == "acc.key_version"
