"""operator console: the audit log and the index behind its message search

``audit_log``: one row per operator action taken in the console (who, when, what, why, what it changed). No
foreign key to messages: the record outlives a purge or a deleted message.

``ix_messages_status_queued_at`` (status, queued_at, id): the console's ``status:`` search walks it newest first
with keyset pagination on (queued_at, id), and the overview's "oldest queued" reads its first entry. Searches
without a status walk ``ix_messages_queued_at``; ``to:`` uses ``ix_recipients_address``, ``reference:``,
``id:`` and ``email_id:`` their own indexes (docs/console.md shows the plans).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")



def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _DT, nullable=False),
        sa.Column("actor", sa.String(191), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=True),
        sa.Column("target", sa.String(320), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(255), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=True),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])
    op.create_index("ix_audit_log_message_id", "audit_log", ["message_id"])
    # A plain CREATE INDEX (no batch mode): on SQLite batch mode would rebuild messages, which holds every body.
    op.create_index("ix_messages_status_queued_at", "messages", ["status", "queued_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_messages_status_queued_at", table_name="messages")
    op.drop_index("ix_audit_log_message_id", table_name="audit_log")
    op.drop_index("ix_audit_log_created_at", table_name="audit_log")
    op.drop_table("audit_log")
