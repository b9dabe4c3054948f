"""telling the application: messages.expires_at, and the status-callback tables

``messages.expires_at``: an email not handed to a transport by then is ``expired`` instead of sent. The new
statuses ``cancelled`` and ``expired`` need no DDL (statuses are stored by value in a VARCHAR(16)).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def upgrade() -> None:
    # A plain ADD COLUMN (no batch mode): on SQLite batch mode would rebuild messages, which holds every body.
    op.add_column("messages", sa.Column("expires_at", _DT, nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): batch mode would rebuild messages and cascade into its children.
    op.drop_column("messages", "expires_at")
