"""Trusted GraphQL documents (issue 7): the allow-list of operations, bound to API clients.

Revision ID: 0005_documents
Revises: 0004_crm
"""
import sqlalchemy as sa
from alembic import op

revision = '0005_documents'
down_revision = '0004_crm'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('trusted_documents',
    sa.Column('id', sa.String(length=71), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('clients', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('trusted_documents')
