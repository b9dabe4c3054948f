"""exact identifiers (utf8mb4_bin on MariaDB) and messages.held_since

Identifiers compared case-insensitively made MariaDB and SQLite disagree: idempotency keys ``Order-1`` and
``order-1`` were one key on MariaDB (``utf8mb4_unicode_ci``: the second email was never sent) and two on SQLite
(BINARY). Tracking ids and every column holding one, idempotency keys, provider ids, event ids and references
become ``utf8mb4_bin`` on MariaDB; SQLite already compares them byte for byte, so there only ``held_since`` is
added. Email addresses stay case-insensitive.

``held_since``: when an operator problem (revoked key, missing encryption key, no transport) started holding a
message, indexed so the sender can find held mail at once when the problem is fixed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

#: (table, column, length, nullable) of every identifier made exact. Frozen here: a migration must not change
#: when the models do.
_IDENTIFIERS = (
    ("messages", "id", 36, False),
    ("messages", "reference", 255, True),
    ("messages", "idempotency_key", 255, True),
    ("messages", "smtp2go_message_id", 128, True),
    ("messages", "message_id_header", 255, True),
    ("recipients", "message_id", 36, False),
    ("attachments", "message_id", 36, False),
    ("tracking_events", "message_id", 36, True),
    ("tracking_events", "provider_event_id", 191, False),
    ("tracking_events", "smtp2go_message_id", 128, True),
    ("tracking_events", "tracking_ref", 64, True),
    ("suppressions", "source_message_id", 36, True),
)
#: Tables whose foreign key references messages.id: MariaDB refuses to change the collation of either side of a
#: foreign key while it exists (and both sides must agree), so these are dropped and re-created around the ALTERs.
_REFERENCING = ("recipients", "attachments", "tracking_events")


def _set_collation(collation: str) -> None:
    """Give every identifier ``collation`` on MariaDB, the foreign keys to messages.id lifted meanwhile."""
    bind = op.get_bind()
    if bind.dialect.name not in {"mysql", "mariadb"}:
        return  # SQLite compares BINARY already; there is no per-column collation to change
    inspector = sa.inspect(bind)
    foreign_keys = [(table, str(fk["name"]), fk) for table in _REFERENCING
                    for fk in inspector.get_foreign_keys(table) if fk["referred_table"] == "messages"]
    for table, name, _fk in foreign_keys:
        op.drop_constraint(name, table, type_="foreignkey")
    # One ALTER per table: MariaDB rebuilds a table for each, and messages holds every body.
    for table in dict.fromkeys(t for t, *_ in _IDENTIFIERS):
        changes = ", ".join(
            f"MODIFY `{column}` VARCHAR({length}) CHARACTER SET utf8mb4 COLLATE {collation}"
            f" {'NULL' if nullable else 'NOT NULL'}"
            for t, column, length, nullable in _IDENTIFIERS if t == table)
        op.execute(f"ALTER TABLE `{table}` {changes}")
    for table, name, fk in foreign_keys:
        op.create_foreign_key(name, table, "messages", fk["constrained_columns"], fk["referred_columns"],
                              ondelete=fk.get("options", {}).get("ondelete"))


def upgrade() -> None:
    _set_collation("utf8mb4_bin")
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("held_since", _DT, nullable=True))
        batch.create_index("ix_messages_held_since", ["held_since"])


def downgrade() -> None:
    """Back to ``utf8mb4_unicode_ci``. Fails (duplicate entry) if two idempotency keys, provider ids or event
    ids now differ only in case: decide which one to keep before downgrading."""
    op.drop_index("ix_messages_held_since", table_name="messages")
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 has it): batch mode would rebuild messages on SQLite,
    # and dropping the old table with foreign keys on cascades into recipients and attachments.
    op.drop_column("messages", "held_since")
    _set_collation("utf8mb4_unicode_ci")
