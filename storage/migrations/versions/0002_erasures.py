"""Erasures: which data subjects were erased and when, so a restore can replay them.

Revision ID: 0002_erasures
Revises: 0001_kernel
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_erasures"
down_revision = "0001_kernel"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("subject_id", sa.String(36), primary_key=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(100), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasures")
