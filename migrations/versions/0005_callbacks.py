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
    op.create_table(
        "status_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reference", sa.String(255), nullable=True),
        sa.Column("smtp2go_message_id", sa.String(128), nullable=True),
        sa.Column("occurred_at", _DT, nullable=False),
        sa.Column("created_at", _DT, nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("dispatched_at", _DT, nullable=True),
        sa.UniqueConstraint("event_id"),
        sa.UniqueConstraint("message_id", "seq", name="uq_status_events_message_seq"),
        **_TABLE,
    )
    op.create_index("ix_status_events_created_at", "status_events", ["created_at"])
    op.create_index("ix_status_events_dispatched_at", "status_events", ["dispatched_at"])
    op.create_table(
        "callback_endpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
        sa.Column("previous_until", _DT, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("created_at", _DT, nullable=False),
        **_TABLE,
    )
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_pk", sa.Integer(), sa.ForeignKey("status_events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _DT, nullable=True),
        sa.Column("locked_until", _DT, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _DT, nullable=False),
        sa.Column("delivered_at", _DT, nullable=True),
        sa.UniqueConstraint("event_pk", "kind", "endpoint_id", name="uq_callback_deliveries_target"),
        **_TABLE,
    )
    op.create_index("ix_callback_deliveries_endpoint_id", "callback_deliveries", ["endpoint_id"])
    op.create_index("ix_callback_deliveries_due", "callback_deliveries", ["state", "next_attempt_at"])
    op.create_table(
        "callback_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.Integer(), sa.ForeignKey("callback_deliveries.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("attempted_at", _DT, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", _DT, nullable=True),
        **_TABLE,
    )
    op.create_index("ix_callback_attempts_delivery_id", "callback_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("callback_attempts")
    op.drop_table("callback_deliveries")
    op.drop_table("callback_endpoints")
    op.drop_table("status_events")
    # A plain DROP COLUMN (SQLite >= 3.35): batch mode would rebuild messages and cascade into its children.
    op.drop_column("messages", "expires_at")
