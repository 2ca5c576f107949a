"""The CRM modules: leads, pipeline and opportunities, activities, cases and SLAs, campaigns
and consent, custom fields, webhooks, retention; custom field columns on accounts and contacts.

The default pipeline and SLA policies are seeded by `enclave init` (schema.crm_defaults), not
here: a restore migrates an empty schema and then fills it from the backup.

Revision ID: 0004_crm
Revises: 0003_people
"""
import sqlalchemy as sa
from alembic import op

_ts = sa.DateTime(timezone=True)

revision = '0004_crm'
down_revision = '0003_people'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('budget', sa.Numeric(precision=18, scale=2), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('starts_on', sa.Date(), nullable=True),
    sa.Column('ends_on', sa.Date(), nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_team'), ['team'], unique=False)

    op.create_table('custom_field_defs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('object_type', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('value_type', sa.String(length=16), nullable=False),
    sa.Column('classification', sa.String(length=16), nullable=False),
    sa.Column('created_at', _ts, nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('custom_field_defs', schema=None) as batch_op:
        batch_op.create_index('uq_custom_field', ['object_type', 'key'], unique=True)

    op.create_table('pipeline_stages',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('probability', sa.Integer(), nullable=False),
    sa.Column('is_won', sa.Boolean(), nullable=False),
    sa.Column('is_lost', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('retention_rules',
    sa.Column('object_type', sa.String(length=64), nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('condition', sa.String(length=32), nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.PrimaryKeyConstraint('object_type')
    )
    op.create_table('sla_policies',
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('first_response_minutes', sa.Integer(), nullable=False),
    sa.Column('resolution_minutes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('priority')
    )
    op.create_table('webhooks',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('secret', sa.LargeBinary(), nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('disabled_at', _ts, nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['api_clients.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhooks_client_id'), ['client_id'], unique=False)

    op.create_table('cases',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('description', sa.LargeBinary(), nullable=True),
    sa.Column('contact_id', sa.String(length=36), nullable=True),
    sa.Column('account_id', sa.String(length=36), nullable=True),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('assignee', sa.String(length=100), nullable=True),
    sa.Column('first_response_due', _ts, nullable=True),
    sa.Column('resolution_due', _ts, nullable=True),
    sa.Column('first_response_at', _ts, nullable=True),
    sa.Column('resolved_at', _ts, nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cases_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_assignee'), ['assignee'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_team'), ['team'], unique=False)

    op.create_table('consents',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('contact_id', sa.String(length=36), nullable=False),
    sa.Column('purpose', sa.String(length=50), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('granted', sa.Boolean(), nullable=False),
    sa.Column('recorded_at', _ts, nullable=False),
    sa.Column('source', sa.String(length=100), nullable=True),
    sa.Column('evidence', sa.LargeBinary(), nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.create_index('ix_consent_current', ['contact_id', 'purpose', 'channel', 'recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_consents_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consents_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_consents_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_consents_team'), ['team'], unique=False)

    op.create_table('opportunities',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('account_id', sa.String(length=36), nullable=True),
    sa.Column('contact_id', sa.String(length=36), nullable=True),
    sa.Column('amount', sa.Numeric(precision=18, scale=2), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('stage_id', sa.String(length=40), nullable=False),
    sa.Column('probability', sa.Integer(), nullable=False),
    sa.Column('expected_close', sa.Date(), nullable=True),
    sa.Column('closed_at', _ts, nullable=True),
    sa.Column('description', sa.LargeBinary(), nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['stage_id'], ['pipeline_stages.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('opportunities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_opportunities_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_closed_at'), ['closed_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_expected_close'), ['expected_close'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_stage_id'), ['stage_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_opportunities_team'), ['team'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('webhook_id', sa.String(length=36), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('object_type', sa.String(length=64), nullable=False),
    sa.Column('object_id', sa.String(length=36), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=True),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', _ts, nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('delivered_at', _ts, nullable=True),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_webhook_id'), ['webhook_id'], unique=False)

    op.create_table('leads',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('first_name', sa.String(length=100), nullable=True),
    sa.Column('last_name', sa.String(length=100), nullable=False),
    sa.Column('company', sa.String(length=200), nullable=True),
    sa.Column('email', sa.LargeBinary(), nullable=True),
    sa.Column('email_bidx', sa.String(length=64), nullable=True),
    sa.Column('phone', sa.LargeBinary(), nullable=True),
    sa.Column('phone_bidx', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=50), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('score', sa.Integer(), nullable=True),
    sa.Column('converted_at', _ts, nullable=True),
    sa.Column('converted_contact_id', sa.String(length=36), nullable=True),
    sa.Column('converted_account_id', sa.String(length=36), nullable=True),
    sa.Column('converted_opportunity_id', sa.String(length=36), nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['converted_account_id'], ['accounts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['converted_contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['converted_opportunity_id'], ['opportunities.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_leads_email_bidx'), ['email_bidx'], unique=False)
        batch_op.create_index(batch_op.f('ix_leads_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_leads_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_leads_phone_bidx'), ['phone_bidx'], unique=False)
        batch_op.create_index(batch_op.f('ix_leads_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_leads_team'), ['team'], unique=False)

    op.create_table('opportunity_stage_changes',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('opportunity_id', sa.String(length=36), nullable=False),
    sa.Column('from_stage', sa.String(length=40), nullable=True),
    sa.Column('to_stage', sa.String(length=40), nullable=False),
    sa.Column('changed_by', sa.String(length=100), nullable=False),
    sa.Column('changed_at', _ts, nullable=False),
    sa.ForeignKeyConstraint(['opportunity_id'], ['opportunities.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('opportunity_stage_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_opportunity_stage_changes_opportunity_id'), ['opportunity_id'], unique=False)

    op.create_table('activities',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.Column('occurred_at', _ts, nullable=False),
    sa.Column('due_at', _ts, nullable=True),
    sa.Column('done_at', _ts, nullable=True),
    sa.Column('account_id', sa.String(length=36), nullable=True),
    sa.Column('contact_id', sa.String(length=36), nullable=True),
    sa.Column('lead_id', sa.String(length=36), nullable=True),
    sa.Column('opportunity_id', sa.String(length=36), nullable=True),
    sa.Column('case_id', sa.String(length=36), nullable=True),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['opportunity_id'], ['opportunities.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_activities_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_due_at'), ['due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_lead_id'), ['lead_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_occurred_at'), ['occurred_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_opportunity_id'), ['opportunity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_team'), ['team'], unique=False)

    op.create_table('campaign_members',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('campaign_id', sa.String(length=36), nullable=False),
    sa.Column('contact_id', sa.String(length=36), nullable=True),
    sa.Column('lead_id', sa.String(length=36), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('created_at', _ts, nullable=False),
    sa.Column('updated_at', _ts, nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=True),
    sa.Column('custom_plain', sa.JSON(), nullable=True),
    sa.Column('custom_sealed', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('campaign_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_members_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_members_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_members_key_version'), ['key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_members_lead_id'), ['lead_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_members_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_members_team'), ['team'], unique=False)
        batch_op.create_index('uq_campaign_contact', ['campaign_id', 'contact_id'], unique=True)
        batch_op.create_index('uq_campaign_lead', ['campaign_id', 'lead_id'], unique=True)

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('custom_plain', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('custom_sealed', sa.LargeBinary(), nullable=True))
        batch_op.create_index(batch_op.f('ix_accounts_key_version'), ['key_version'], unique=False)

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('custom_plain', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('custom_sealed', sa.LargeBinary(), nullable=True))
        batch_op.alter_column('key_version',
               existing_type=sa.INTEGER(),
               nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.alter_column('key_version',
               existing_type=sa.INTEGER(),
               nullable=False)
        batch_op.drop_column('custom_sealed')
        batch_op.drop_column('custom_plain')

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_key_version'))
        batch_op.drop_column('custom_sealed')
        batch_op.drop_column('custom_plain')
        batch_op.drop_column('key_version')

    with op.batch_alter_table('campaign_members', schema=None) as batch_op:
        batch_op.drop_index('uq_campaign_lead')
        batch_op.drop_index('uq_campaign_contact')
        batch_op.drop_index(batch_op.f('ix_campaign_members_team'))
        batch_op.drop_index(batch_op.f('ix_campaign_members_owner'))
        batch_op.drop_index(batch_op.f('ix_campaign_members_lead_id'))
        batch_op.drop_index(batch_op.f('ix_campaign_members_key_version'))
        batch_op.drop_index(batch_op.f('ix_campaign_members_contact_id'))
        batch_op.drop_index(batch_op.f('ix_campaign_members_campaign_id'))

    op.drop_table('campaign_members')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_activities_team'))
        batch_op.drop_index(batch_op.f('ix_activities_owner'))
        batch_op.drop_index(batch_op.f('ix_activities_opportunity_id'))
        batch_op.drop_index(batch_op.f('ix_activities_occurred_at'))
        batch_op.drop_index(batch_op.f('ix_activities_lead_id'))
        batch_op.drop_index(batch_op.f('ix_activities_kind'))
        batch_op.drop_index(batch_op.f('ix_activities_key_version'))
        batch_op.drop_index(batch_op.f('ix_activities_due_at'))
        batch_op.drop_index(batch_op.f('ix_activities_contact_id'))
        batch_op.drop_index(batch_op.f('ix_activities_case_id'))
        batch_op.drop_index(batch_op.f('ix_activities_account_id'))

    op.drop_table('activities')
    with op.batch_alter_table('opportunity_stage_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_opportunity_stage_changes_opportunity_id'))

    op.drop_table('opportunity_stage_changes')
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_leads_team'))
        batch_op.drop_index(batch_op.f('ix_leads_status'))
        batch_op.drop_index(batch_op.f('ix_leads_phone_bidx'))
        batch_op.drop_index(batch_op.f('ix_leads_owner'))
        batch_op.drop_index(batch_op.f('ix_leads_key_version'))
        batch_op.drop_index(batch_op.f('ix_leads_email_bidx'))

    op.drop_table('leads')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_webhook_id'))
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_status'))
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('opportunities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_opportunities_team'))
        batch_op.drop_index(batch_op.f('ix_opportunities_stage_id'))
        batch_op.drop_index(batch_op.f('ix_opportunities_owner'))
        batch_op.drop_index(batch_op.f('ix_opportunities_key_version'))
        batch_op.drop_index(batch_op.f('ix_opportunities_expected_close'))
        batch_op.drop_index(batch_op.f('ix_opportunities_contact_id'))
        batch_op.drop_index(batch_op.f('ix_opportunities_closed_at'))
        batch_op.drop_index(batch_op.f('ix_opportunities_account_id'))

    op.drop_table('opportunities')
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consents_team'))
        batch_op.drop_index(batch_op.f('ix_consents_owner'))
        batch_op.drop_index(batch_op.f('ix_consents_key_version'))
        batch_op.drop_index(batch_op.f('ix_consents_contact_id'))
        batch_op.drop_index('ix_consent_current')

    op.drop_table('consents')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_team'))
        batch_op.drop_index(batch_op.f('ix_cases_status'))
        batch_op.drop_index(batch_op.f('ix_cases_owner'))
        batch_op.drop_index(batch_op.f('ix_cases_key_version'))
        batch_op.drop_index(batch_op.f('ix_cases_contact_id'))
        batch_op.drop_index(batch_op.f('ix_cases_assignee'))
        batch_op.drop_index(batch_op.f('ix_cases_account_id'))

    op.drop_table('cases')
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhooks_client_id'))

    op.drop_table('webhooks')
    op.drop_table('sla_policies')
    op.drop_table('retention_rules')
    op.drop_table('pipeline_stages')
    with op.batch_alter_table('custom_field_defs', schema=None) as batch_op:
        batch_op.drop_index('uq_custom_field')

    op.drop_table('custom_field_defs')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_team'))
        batch_op.drop_index(batch_op.f('ix_campaigns_owner'))
        batch_op.drop_index(batch_op.f('ix_campaigns_key_version'))

    op.drop_table('campaigns')
