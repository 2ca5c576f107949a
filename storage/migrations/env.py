"""Alembic environment: migrations run on the connection the caller hands over."""

from alembic import context

from storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Enclave always passes its own connection
    raise RuntimeError("run migrations through `enclave init` (storage.migrate.upgrade)")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
