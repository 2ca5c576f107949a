"""People's sign-in: users, their browser sessions, web clients and authorization codes.

Revision ID: 0003_people
Revises: 0002_erasures
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_people"
down_revision = "0002_erasures"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(200)),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("team", sa.String(100)),
        sa.Column("totp_secret", sa.LargeBinary()),
        sa.Column("totp_last_step", sa.BigInteger()),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("locked_until", _ts),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("last_signin_at", _ts),
        sa.Column("disabled_at", _ts),
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id")),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("roles", sa.JSON()),
        sa.Column("amr", sa.JSON()),
        sa.Column("pending", sa.JSON()),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("last_seen_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("authenticated_at", _ts),
        sa.Column("revoked_at", _ts),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])
    op.create_index("ix_user_sessions_expires_at", "user_sessions", ["expires_at"])
    op.create_table(
        "web_clients",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(200)),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("revoked_at", _ts),
    )
    op.create_table(
        "authorization_codes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("nonce", sa.String(255)),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(8), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("amr", sa.JSON(), nullable=False),
        sa.Column("auth_time", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("used_at", _ts),
    )
    op.create_index("ix_authorization_codes_user_id", "authorization_codes", ["user_id"])
    op.create_index("ix_authorization_codes_expires_at", "authorization_codes", ["expires_at"])


def downgrade() -> None:
    for table in ("authorization_codes", "web_clients", "user_sessions", "users"):
        op.drop_table(table)
