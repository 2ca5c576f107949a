"""The repository's shape: packages come from here, imports point down, models match migrations."""

from __future__ import annotations

import ast
import importlib
import json
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from storage import migrate
from storage.db import make_engine
from storage.models import Base

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "schema", "security", "storage", "backup")

# Arrows point down: api -> backup -> schema -> storage; everything may use security, security
# never reaches up into the layers that use it.
FORBIDDEN_IMPORTS = {
    "storage": {"schema", "api", "backup"},
    "security": {"schema", "api", "backup"},
    "schema": {"api", "backup"},
    "backup": {"api"},
}


# -- 1. packages come from this repository ------------------------------------------------------

def _inside_repo(path: str | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(REPO)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_is_imported_from_the_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert _inside_repo(module.__file__), f"{name} imported from {module.__file__}"
    assert Path(module.__file__ or "").resolve() == REPO / name / "__init__.py"
    assert all(_inside_repo(p) for p in module.__path__), module.__path__


def test_the_venv_imports_the_repository_packages_from_anywhere(tmp_path: Path) -> None:
    """As the service runs it: the venv's python, started away from the checkout."""
    program = ("import importlib, json; print(json.dumps({n: importlib.import_module(n).__file__ "
               f"for n in {PACKAGES!r}}}))")
    done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", program], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)
    for name in PACKAGES:
        assert Path(files[name]).resolve() == REPO / name / "__init__.py", (name, files[name])


def test_no_package_of_the_same_name_hides_in_site_packages() -> None:
    """A `schema` or `storage` from PyPI in the venv would shadow ours wherever the checkout is
    not first on sys.path."""
    places = [Path(p) for p in (*site.getsitepackages(), site.getusersitepackages())]
    places += [Path(p) for p in sys.path if p and "site-packages" in p]
    clashes = [str(place / candidate) for place in set(places) if place.is_dir()
               for name in PACKAGES for candidate in (name, f"{name}.py")
               if (place / candidate).exists() and not _inside_repo(str(place / candidate))]
    assert clashes == []


# -- 2. import direction ------------------------------------------------------------------------

def imported_top_levels(source: str, filename: str = "<src>") -> set[str]:
    """Top-level package names a module imports, however it does it."""
    tree = ast.parse(source, filename)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else \
                function.id if isinstance(function, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value.split(".")[0])
    return names


def _modules(package: str) -> Iterator[Path]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    yield from files


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_imports_point_down(package: str) -> None:
    violations = []
    for path in _modules(package):
        found = imported_top_levels(path.read_text(), str(path)) & FORBIDDEN_IMPORTS[package]
        if found:
            violations.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(found))}")
    assert violations == []


def test_the_import_checker_sees_every_form() -> None:
    source = """
import os
from typing import TYPE_CHECKING
import schema.ops.contacts
from api import app
if TYPE_CHECKING:
    from schema.context import RequestContext
def later():
    import importlib
    importlib.import_module("api.cli")
    __import__("backup")
from . import sibling
from .sealed import Sealed
"""
    assert imported_top_levels(source) == {"os", "typing", "schema", "api", "importlib",
                                           "backup"}


# -- 3. models and migrations agree -------------------------------------------------------------

def _migrated(url: str) -> Engine:
    engine = make_engine(url)
    migrate.upgrade(engine)
    return engine


def _assert_matches_models(engine: Engine) -> None:
    assert migrate.current_revision(engine) == migrate.head_revision()
    inspector = inspect(engine)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    assert tables == set(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        columns = {c["name"]: c for c in inspector.get_columns(name)}
        assert set(columns) == {c.name for c in table.columns}, name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (name, column.name)
        primary_key = inspector.get_pk_constraint(name)["constrained_columns"]
        assert primary_key == [c.name for c in table.primary_key.columns], name
    # Alembic's own comparison (types, indexes, foreign keys): autogenerate must find nothing.
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_sqlite_migrated_to_head_matches_the_models(tmp_path: Path) -> None:
    engine = _migrated(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        _assert_matches_models(engine)
    finally:
        engine.dispose()


def test_postgres_migrated_to_head_matches_the_models(pg_database: str) -> None:
    engine = _migrated(pg_database)
    try:
        _assert_matches_models(engine)
    finally:
        engine.dispose()


def test_migrations_have_a_single_head() -> None:
    from alembic.script import ScriptDirectory

    from storage.migrate import _config

    assert len(ScriptDirectory.from_config(_config()).get_heads()) == 1
