"""every attempt on record: the ``attempts`` table; parked and held as statuses; provider names

``attempts`` keeps one row per hand-over of a message to a provider. The per-transport counters it replaces
(``api_attempts``, ``smtp_attempts``) carry over as ONE SUMMARY ROW PER TRANSPORT that was tried: provider
``smtp2go`` or ``smtp``, started at the message's ``queued_at``, finished at its ``sent_at`` (else its last
update), outcome ``accepted`` for the transport that accepted it (with SMTP2Go's ``email_id`` as its provider
message id), else ``not_sent`` with the message's ``last_error``; no latency is known. ``messages.provider`` names the provider that accepted the message (its ``transport``).

Statuses: ``retrying`` with ``ambiguous_since`` becomes ``parked``, with ``held_since`` becomes ``held``. Dropped:
``api_attempts``, ``smtp_attempts``, ``api_abandoned`` and ``inflight_transport`` (the in-flight provider is the
last attempt's). The downgrade restores the columns (counters summed back from the rows) and the statuses.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


#: One summary row per transport that was tried (see the docstring); <counter> is that transport's column.
_CARRY_OVER = (
    "INSERT INTO attempts (message_id, provider, started_at, finished_at, outcome, provider_message_id, error) "
    "SELECT id, :t, queued_at, COALESCE(sent_at, updated_at), "
    "CASE WHEN transport = :t AND sent_at IS NOT NULL THEN 'accepted' ELSE 'not_sent' END, "
    "CASE WHEN transport = :t AND :t = 'smtp2go' THEN smtp2go_message_id END, "
    "CASE WHEN transport = :t AND sent_at IS NOT NULL THEN NULL "
    "ELSE last_error END "
    "FROM messages WHERE <counter> > 0")
_COUNT_BACK = ("UPDATE messages SET <counter> = (SELECT COUNT(*) FROM attempts a WHERE a.message_id = messages.id "
               "AND (a.provider = :t OR a.provider LIKE :p))")
_DROPPED = ("api_attempts", "smtp_attempts", "api_abandoned", "inflight_transport")


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", _exact(36), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("started_at", _DT, nullable=False),
        sa.Column("finished_at", _DT, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("provider_message_id", _exact(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        **_TABLE,
    )
    op.create_index("ix_attempts_message_id", "attempts", ["message_id"])
    op.add_column("messages", sa.Column("provider", sa.String(64), nullable=True))
    for transport, counter in (("smtp2go", "api_attempts"), ("smtp", "smtp_attempts")):
        op.execute(sa.text(_CARRY_OVER.replace("<counter>", counter)).bindparams(t=transport))
    op.execute("UPDATE messages SET provider = transport WHERE transport IS NOT NULL")
    op.execute("UPDATE messages SET status = 'parked' WHERE status = 'retrying' AND ambiguous_since IS NOT NULL")
    op.execute("UPDATE messages SET status = 'held' WHERE status = 'retrying' AND held_since IS NOT NULL")
    for column in _DROPPED:
        op.drop_column("messages", column)


def downgrade() -> None:
    op.add_column("messages", sa.Column("api_attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("messages", sa.Column("smtp_attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("messages", sa.Column("api_abandoned", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("messages", sa.Column("inflight_transport", sa.String(16), nullable=True))
    for transport, counter in (("smtp2go", "api_attempts"), ("smtp", "smtp_attempts")):
        op.execute(sa.text(_COUNT_BACK.replace("<counter>", counter)).bindparams(t=transport, p=f"{transport}:%"))
    op.execute("UPDATE messages SET status = 'retrying' WHERE status IN ('parked', 'held')")
    op.drop_column("messages", "provider")
    op.drop_table("attempts")
