"""initial schema: messages, recipients, attachments, tracking events, suppressions, modules

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 22:25:58.585570
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types (a migration must not change when the models do): microsecond
# DATETIME and LONGTEXT/LONGBLOB on MariaDB, plain types on SQLite.
_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_LONGBLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table('integration_modules',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('settings_encrypted', sa.Text(), nullable=True),
    sa.Column('updated_at', _DT, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    op.create_table('messages',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.Enum('queued', 'sending', 'retrying', 'sent', 'delivered', 'bounced', 'complained', 'rejected', 'failed', 'suppressed', name='message_status', native_enum=False, length=16), nullable=False),
    sa.Column('transport', sa.Enum('smtp2go', 'smtp', name='transport', native_enum=False, length=16), nullable=True),
    sa.Column('sender', sa.String(length=998), nullable=False),
    sa.Column('reply_to', sa.String(length=998), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('text_body', _LONGTEXT, nullable=True),
    sa.Column('html_body', _LONGTEXT, nullable=True),
    sa.Column('headers', sa.JSON(), nullable=True),
    sa.Column('template_id', sa.String(length=255), nullable=True),
    sa.Column('template_data', sa.JSON(), nullable=True),
    sa.Column('reference', sa.String(length=255), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('smtp2go_message_id', sa.String(length=128), nullable=True),
    sa.Column('message_id_header', sa.String(length=255), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('api_attempts', sa.Integer(), nullable=False),
    sa.Column('smtp_attempts', sa.Integer(), nullable=False),
    sa.Column('crashes', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('fallback_reason', sa.Text(), nullable=True),
    sa.Column('api_abandoned', sa.Boolean(), nullable=False),
    sa.Column('queued_at', _DT, nullable=False),
    sa.Column('send_at', _DT, nullable=True),
    sa.Column('next_attempt_at', _DT, nullable=True),
    sa.Column('published_at', _DT, nullable=True),
    sa.Column('lease_owner', sa.String(length=191), nullable=True),
    sa.Column('lease_expires_at', _DT, nullable=True),
    sa.Column('inflight_transport', sa.Enum('smtp2go', 'smtp', name='inflight_transport', native_enum=False, length=16), nullable=True),
    sa.Column('inflight_since', _DT, nullable=True),
    sa.Column('ambiguous_since', _DT, nullable=True),
    sa.Column('sent_at', _DT, nullable=True),
    sa.Column('failed_at', _DT, nullable=True),
    sa.Column('email_delivered_at', _DT, nullable=True),
    sa.Column('email_bounced_at', _DT, nullable=True),
    sa.Column('email_opened_at', _DT, nullable=True),
    sa.Column('email_clicked_at', _DT, nullable=True),
    sa.Column('email_complained_at', _DT, nullable=True),
    sa.Column('purged_at', _DT, nullable=True),
    sa.Column('updated_at', _DT, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key'),
    sa.UniqueConstraint('smtp2go_message_id'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_ambiguous_since'), ['ambiguous_since'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_message_id_header'), ['message_id_header'], unique=False)
        batch_op.create_index('ix_messages_queued_at', ['queued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_reference'), ['reference'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_sent_at'), ['sent_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_status'), ['status'], unique=False)
        batch_op.create_index('ix_messages_status_next_attempt', ['status', 'next_attempt_at'], unique=False)

    op.create_table('suppressions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('source_message_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', _DT, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('address'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    op.create_table('attachments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('mimetype', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('content', _LONGBLOB, nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attachments_message_id'), ['message_id'], unique=False)

    op.create_table('recipients',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.Enum('to', 'cc', 'bcc', name='recipient_kind', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('queued', 'sent', 'delivered', 'opened', 'clicked', 'bounced', 'complained', 'rejected', 'failed', 'suppressed', name='recipient_status', native_enum=False, length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('sent_at', _DT, nullable=True),
    sa.Column('delivered_at', _DT, nullable=True),
    sa.Column('bounced_at', _DT, nullable=True),
    sa.Column('bounce_type', sa.String(length=16), nullable=True),
    sa.Column('opened_at', _DT, nullable=True),
    sa.Column('open_count', sa.Integer(), nullable=False),
    sa.Column('clicked_at', _DT, nullable=True),
    sa.Column('click_count', sa.Integer(), nullable=False),
    sa.Column('complained_at', _DT, nullable=True),
    sa.Column('rejected_at', _DT, nullable=True),
    sa.Column('unsubscribed_at', _DT, nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', 'kind', 'address', name='uq_recipients_message_kind_address'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recipients_address'), ['address'], unique=False)
        batch_op.create_index(batch_op.f('ix_recipients_message_id'), ['message_id'], unique=False)

    op.create_table('tracking_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('provider_event_id', sa.String(length=191), nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=True),
    sa.Column('smtp2go_message_id', sa.String(length=128), nullable=True),
    sa.Column('tracking_ref', sa.String(length=64), nullable=True),
    sa.Column('event_type', sa.Enum('processed', 'delivered', 'open', 'click', 'bounce', 'spam', 'unsubscribe', 'resubscribe', 'reject', 'unknown', name='event_type', native_enum=False, length=16), nullable=False),
    sa.Column('raw_event', sa.String(length=64), nullable=True),
    sa.Column('recipient', sa.String(length=320), nullable=True),
    sa.Column('occurred_at', _DT, nullable=False),
    sa.Column('received_at', _DT, nullable=False),
    sa.Column('applied_at', _DT, nullable=True),
    sa.Column('bounce_type', sa.String(length=16), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('smtp2go_data', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider_event_id'),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('tracking_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tracking_events_event_type'), ['event_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_tracking_events_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tracking_events_occurred_at'), ['occurred_at'], unique=False)
        batch_op.create_index('ix_tracking_events_orphans', ['applied_at', 'received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tracking_events_recipient'), ['recipient'], unique=False)
        batch_op.create_index(batch_op.f('ix_tracking_events_smtp2go_message_id'), ['smtp2go_message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tracking_events_tracking_ref'), ['tracking_ref'], unique=False)



def downgrade() -> None:
    # Dropping a table drops its indexes; dropping them first fails on MariaDB for indexes backing a FK.
    for table in ("tracking_events", "recipients", "attachments", "suppressions", "messages",
                  "integration_modules"):
        op.drop_table(table)
