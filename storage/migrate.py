"""Apply Alembic migrations programmatically (the CLI's `init` and the tests use this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

_SCRIPTS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Migrate in a transaction of its own (an engine), or inside the caller's (a connection),
    so that a restore can create the schema and fill it atomically."""
    config = _config()
    if isinstance(bind, Connection):
        config.attributes["connection"] = bind
        command.upgrade(config, revision)
        return
    with bind.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(bind: Engine, revision: str) -> None:
    """Migrate down to `revision` in a transaction of its own (the A/B benchmark runs an older
    revision of the code on a copy of the database)."""
    config = _config()
    with bind.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(bind: Engine | Connection) -> str | None:
    if isinstance(bind, Connection):
        return MigrationContext.configure(bind).get_current_revision()
    with bind.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def known_revisions() -> set[str]:
    """Every revision this code can migrate from or to."""
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()
