"""compliance: suppressions scoped to a list, synced with the provider, kept as a keyed hash after erasure

``suppressions`` gains ``list_id`` (NULL: every list and transactional mail; else that list only), ``scope``
(``list_id`` or ``""``: the unique key becomes (address, scope), as NULL cannot be part of a unique key that
deduplicates), ``origin`` (``smtp2go`` for entries pulled from SMTP2Go's list) and ``pushed_at`` (when a global
entry was added to SMTP2Go's list). The table is small, so it is rebuilt (new table, copy, swap) the same way on
MariaDB and SQLite: SQLite cannot drop the unnamed unique constraint on ``address`` in place. Existing rows
become global suppressions. The downgrade keeps one row per address (the global one, else the oldest).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}
#: An exact identifier: byte-for-byte on MariaDB (as 0003 made it), plain on SQLite.
_EXACT36 = sa.String(36).with_variant(mysql.VARCHAR(36, collation="utf8mb4_bin"), "mysql", "mariadb")
_OLD = "id, address, reason, detail, source_message_id, created_at"


def _base_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source_message_id", _EXACT36, nullable=True),
        sa.Column("created_at", _DT, nullable=False),
    ]


def _swap(new: str) -> None:
    op.drop_table("suppressions")
    op.rename_table(new, "suppressions")


def upgrade() -> None:
    op.create_table(
        "suppressions_new", *_base_columns(),
        sa.Column("list_id", sa.String(64), nullable=True),
        sa.Column("scope", sa.String(64), nullable=False, server_default=""),
        sa.Column("origin", sa.String(16), nullable=True),
        sa.Column("pushed_at", _DT, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address", "scope", name="uq_suppressions_address_scope"),
        **_TABLE)
    op.execute(f"INSERT INTO suppressions_new ({_OLD}, scope) SELECT {_OLD}, '' FROM suppressions")  # noqa: S608 - constant names
    _swap("suppressions_new")


def downgrade() -> None:
    op.create_table("suppressions_old", *_base_columns(), sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("address"), **_TABLE)
    op.execute(f"INSERT INTO suppressions_old ({_OLD}) SELECT {_OLD} FROM suppressions s WHERE s.id = "  # noqa: S608
               "(SELECT MIN(t.id) FROM suppressions t WHERE t.address = s.address AND t.scope = "
               "(SELECT MIN(u.scope) FROM suppressions u WHERE u.address = s.address))")
    _swap("suppressions_old")
