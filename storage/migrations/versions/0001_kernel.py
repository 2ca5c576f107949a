"""The security kernel: keys, clients, policies, audit log, accounts and contacts.

Revision ID: 0001_kernel
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_kernel"
down_revision = None
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)
_seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "data_keys",
        sa.Column("purpose", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("retired_at", _ts),
    )
    op.create_table(
        "subject_keys",
        sa.Column("subject_id", sa.String(36), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "api_clients",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("team", sa.String(100)),
        sa.Column("secret_hash", sa.String(200), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("revoked_at", _ts),
    )
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(64), nullable=False),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
    )
    op.create_index(
        "uq_policy_rule", "policy_rules", ["role", "object_type", "field", "action"], unique=True
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", _seq, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(64)),
        sa.Column("object_ids", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("request_id", sa.String(64)),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"])
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("checkpoint_due", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", _seq, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("next_due", sa.BigInteger(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(200), nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("industry", sa.String(100)),
        sa.Column("website", sa.String(300)),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("team", sa.String(100)),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
    )
    op.create_index("ix_accounts_owner", "accounts", ["owner"])
    op.create_index("ix_accounts_team", "accounts", ["team"])
    op.create_table(
        "contacts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "account_id", sa.String(36), sa.ForeignKey("accounts.id", ondelete="SET NULL")
        ),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("title", sa.String(200)),
        sa.Column("email", sa.LargeBinary()),
        sa.Column("email_bidx", sa.String(64)),
        sa.Column("phone", sa.LargeBinary()),
        sa.Column("phone_bidx", sa.String(64)),
        sa.Column("address", sa.LargeBinary()),
        sa.Column("birth_date", sa.LargeBinary()),
        sa.Column("national_id", sa.LargeBinary()),
        sa.Column("notes", sa.LargeBinary()),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("team", sa.String(100)),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
    )
    for column in ("account_id", "email_bidx", "phone_bidx", "owner", "team", "key_version"):
        op.create_index(f"ix_contacts_{column}", "contacts", [column])
    _make_audit_append_only()


def _make_audit_append_only() -> None:
    """Refuse UPDATE and DELETE on the audit tables in the database itself.

    This stops mistakes and casual tampering; someone able to drop the trigger is caught by the
    hash chain and the signed checkpoints instead.
    """
    dialect = op.get_bind().dialect.name
    for table in ("audit_events", "audit_checkpoints"):
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        else:
            op.execute(
                f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$"
            )
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in ("contacts", "accounts", "audit_checkpoints", "audit_head", "audit_events",
                  "policy_rules", "api_clients", "subject_keys", "data_keys", "settings"):
        op.drop_table(table)
    if dialect != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
        op.execute("DROP FUNCTION IF EXISTS audit_checkpoints_append_only()")
