"""reconciliation bookkeeping: when a sent message was last checked against SMTP2Go's activity

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 22:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("reconciled_at", _DT, nullable=True))
        batch.create_index("ix_messages_status_sent_at", ["status", "sent_at"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_status_sent_at")
        batch.drop_column("reconciled_at")
