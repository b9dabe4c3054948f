"""Alembic: one head, numbered revisions, upgrade/downgrade/upgrade on MariaDB and SQLite, models in sync
(columns, indexes and, on MariaDB, the collation of every column: autogenerate's comparison ignores it), and
0003's exact identifiers on a database holding data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, Engine, String, create_engine, inspect, text
from sqlalchemy.dialects import mysql

from tests.conftest import MARIADB_ADMIN_URL, MARIADB_HOST
from worker.infrastructure.migrate import MIGRATIONS_DIR, downgrade, heads, upgrade
from worker.infrastructure.models import Base

pytestmark = pytest.mark.integration  # every test here migrates a real MariaDB or SQLite database

TABLES = {"messages", "recipients", "attachments", "tracking_events", "suppressions", "integration_modules"}


def test_single_head_and_numbered_files() -> None:
    assert len(heads()) == 1
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert names and all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.py", n) for n in names)


@pytest.fixture
def scratch_mariadb() -> Iterator[str]:
    name = "mwtest_migrations"
    admin = create_engine(MARIADB_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield f"mysql+pymysql://root@{MARIADB_HOST}:3306/{name}?charset=utf8mb4"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(params=["mariadb", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "mariadb":
        return str(request.getfixturevalue("scratch_mariadb"))
    return f"sqlite:///{tmp_path}/m.db"


def test_upgrade_downgrade_upgrade(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    assert TABLES <= set(inspect(engine).get_table_names())
    downgrade(url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    if engine.dialect.name in {"mysql", "mariadb"}:
        with engine.connect() as conn:
            ddl = conn.execute(text("SHOW CREATE TABLE messages")).one()[1]
        assert "utf8mb4" in ddl and "datetime(6)" in ddl and "longtext" in ddl
        assert _collations(engine) == _model_collations()
    engine.dispose()


def _model_collations() -> dict[tuple[str, str], str]:
    """What the models say every text column's collation is on MariaDB (the table's, unless the column's own)."""
    dialect = mysql.dialect()
    expected = {}
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            impl = column.type.dialect_impl(dialect)
            if isinstance(impl, JSON):  # MariaDB's JSON is LONGTEXT COLLATE utf8mb4_bin (its choice, not ours)
                expected[(table.name, column.name)] = "utf8mb4_bin"
            elif isinstance(impl, String):
                expected[(table.name, column.name)] = impl.collation or table.kwargs["mysql_collate"]
    return expected


def _collations(engine: Engine) -> dict[tuple[str, str], str]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND collation_name IS NOT NULL AND table_name <> 'alembic_version'"
        )).all()
    return {(t, c): coll for t, c, coll in rows}


#: The identifier columns 0003 (0006: attempts, 0007: list and batch) make exact (the docs list them; keep in step).
EXACT = {("messages", "id"), ("messages", "reference"), ("messages", "idempotency_key"),
         ("messages", "smtp2go_message_id"), ("messages", "message_id_header"), ("recipients", "message_id"),
         ("attachments", "message_id"), ("tracking_events", "message_id"), ("tracking_events", "provider_event_id"),
         ("tracking_events", "smtp2go_message_id"), ("tracking_events", "tracking_ref"),
         ("suppressions", "source_message_id"), ("attempts", "message_id"), ("attempts", "provider_message_id"),
         ("messages", "list_id"), ("messages", "batch_id")}


def test_models_name_exactly_the_identifier_columns_as_binary() -> None:
    """Addresses stay case-insensitive; every identifier (and nothing else) is utf8mb4_bin."""
    binary = {key for key, coll in _model_collations().items()
              if coll == "utf8mb4_bin" and not isinstance(Base.metadata.tables[key[0]].c[key[1]].type, JSON)}
    assert binary == EXACT
    assert _model_collations()[("recipients", "address")] == "utf8mb4_unicode_ci"


def _seed(engine: Engine) -> None:
    """One message at revision 0002 with a recipient, an attachment, an event and a suppression naming it."""
    now = datetime(2026, 11, 20, 9, 0)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO messages (id, status, sender, idempotency_key, smtp2go_message_id, size_bytes, attempts,"
            " api_attempts, smtp_attempts, crashes, api_abandoned, queued_at, updated_at) VALUES ('Tid-1', 'sent',"
            " 's@example.org', 'Order-1', 'Em-1', 0, 1, 1, 0, 0, 0, :now, :now)"), {"now": now})
        conn.execute(text(
            "INSERT INTO recipients (message_id, address, kind, status, open_count, click_count)"
            " VALUES ('Tid-1', 'A@example.com', 'to', 'sent', 0, 0)"))
        conn.execute(text(
            "INSERT INTO attachments (message_id, filename, mimetype, size_bytes) VALUES ('Tid-1', 'a.txt',"
            " 'text/plain', 1)"))
        conn.execute(text(
            "INSERT INTO tracking_events (provider_event_id, message_id, smtp2go_message_id, event_type,"
            " occurred_at, received_at) VALUES ('Ev-1', 'Tid-1', 'Em-1', 'delivered', :now, :now)"), {"now": now})
        conn.execute(text(
            "INSERT INTO suppressions (address, reason, source_message_id, created_at)"
            " VALUES ('b@example.com', 'bounce', 'Tid-1', :now)"), {"now": now})


def _count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def test_0003_on_a_database_with_data(url: str) -> None:
    """Rows survive 0003 both ways; afterwards identifiers differing only in case are distinct, the foreign
    keys still cascade, and held_since exists (and is gone again after a downgrade)."""
    upgrade(url, "0002")
    engine = create_engine(url)
    _seed(engine)
    upgrade(url, "0003")
    assert _count(engine, "SELECT COUNT(*) FROM recipients WHERE message_id = 'Tid-1'") == 1
    assert _count(engine, "SELECT COUNT(*) FROM messages WHERE idempotency_key = 'order-1'") == 0
    assert _count(engine, "SELECT COUNT(*) FROM messages WHERE idempotency_key = 'Order-1'") == 1
    assert _count(engine, "SELECT COUNT(*) FROM tracking_events WHERE provider_event_id = 'ev-1'") == 0
    assert _count(engine, "SELECT COUNT(*) FROM recipients WHERE address = 'a@example.com'") == (
        1 if engine.dialect.name in {"mysql", "mariadb"} else 0)  # addresses: still case-insensitive on MariaDB
    assert "held_since" in {c["name"] for c in inspect(engine).get_columns("messages")}
    with engine.begin() as conn:  # a second key differing only in case is now a second message
        conn.execute(text(
            "INSERT INTO messages (id, status, sender, idempotency_key, size_bytes, attempts, api_attempts,"
            " smtp_attempts, crashes, api_abandoned, queued_at, updated_at) VALUES ('tid-1', 'queued',"
            " 's@example.org', 'order-1', 0, 0, 0, 0, 0, 0, :now, :now)"), {"now": datetime.now(UTC)})
        conn.execute(text("DELETE FROM messages WHERE id = 'tid-1'"))
    if engine.dialect.name in {"mysql", "mariadb"}:
        fks = {t: inspect(engine).get_foreign_keys(t) for t in ("recipients", "attachments", "tracking_events")}
        assert {t: [(f["referred_table"], f["options"].get("ondelete")) for f in fk] for t, fk in fks.items()} == {
            "recipients": [("messages", "CASCADE")], "attachments": [("messages", "CASCADE")],
            "tracking_events": [("messages", "SET NULL")]}
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM messages WHERE id = 'Tid-1'"))
        assert _count(engine, "SELECT COUNT(*) FROM recipients") == 0
        assert _count(engine, "SELECT COUNT(*) FROM attachments") == 0
        assert _count(engine, "SELECT COUNT(*) FROM tracking_events WHERE message_id IS NULL") == 1
    downgrade(url, "0002")
    assert "held_since" not in {c["name"] for c in inspect(engine).get_columns("messages")}
    assert _count(engine, "SELECT COUNT(*) FROM tracking_events") == 1
    if engine.dialect.name in {"mysql", "mariadb"}:
        assert _count(engine, "SELECT COUNT(*) FROM tracking_events WHERE provider_event_id = 'ev-1'") == 1
    else:
        assert _count(engine, "SELECT COUNT(*) FROM recipients WHERE message_id = 'Tid-1'") == 1
    engine.dispose()


def test_idempotency_keys_differing_in_case_are_two_emails_on_mariadb(db: str, redis_client: Any) -> None:
    """Regression: on MariaDB ``Order-1`` and ``order-1`` were one key and the second email was
    never sent; they are two emails now, and the same key twice is still one."""
    from worker import enqueue_email

    upper = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="Order-1")
    lower = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="order-1")
    again = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="Order-1")
    assert upper != lower
    assert again == upper


def test_db_upgrade_cli(tmp_path: object) -> None:
    from click.testing import CliRunner

    from worker.cli import main

    url = f"sqlite:///{tmp_path}/cli.db"
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert TABLES <= set(inspect(create_engine(url)).get_table_names())
