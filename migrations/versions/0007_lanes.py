"""lanes: ``messages.lane``, ``messages.list_id`` and ``messages.batch_id``

``lane`` names the queue a message travels on (``transactional``, every existing row, or ``bulk``);
``list_id`` the mailing list it belongs to (exact, like every identifier); ``batch_id`` the ``send_batch`` chunk
``enqueue_many`` published it in, indexed so the console can count a batch's statuses. The downgrade drops them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-15 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("messages", sa.Column("lane", sa.String(16), nullable=False, server_default="transactional"))
    op.add_column("messages", sa.Column("list_id", _exact(64), nullable=True))
    op.add_column("messages", sa.Column("batch_id", _exact(36), nullable=True))
    op.create_index("ix_messages_batch_id", "messages", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_batch_id", table_name="messages")
    op.drop_column("messages", "batch_id")
    op.drop_column("messages", "list_id")
    op.drop_column("messages", "lane")
