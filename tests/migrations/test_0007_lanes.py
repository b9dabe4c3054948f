"""Migration 0007 on a database holding data, on MariaDB and SQLite: existing messages are transactional with no
list or batch; list_id and batch_id compare exactly; the downgrade drops the columns and keeps the rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.migrations.test_migrations import scratch_mariadb, url  # noqa: F401 - fixtures
from worker.infrastructure.migrate import downgrade, upgrade

pytestmark = pytest.mark.integration

NEW = {"lane", "list_id", "batch_id"}


def test_0007_adds_lane_list_and_batch(url: str) -> None:  # noqa: F811 - the fixture
    upgrade(url, "0006")
    engine = create_engine(url)
    now = datetime(2026, 12, 1, 9, 0)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO messages (id, status, sender, size_bytes, attempts, crashes, queued_at, updated_at)"
            " VALUES ('old-1', 'sent', 's@example.org', 0, 1, 0, :now, :now)"), {"now": now})
    assert not NEW & {c["name"] for c in inspect(engine).get_columns("messages")}

    upgrade(url, "0007")
    inspector = inspect(engine)
    assert NEW <= {c["name"] for c in inspector.get_columns("messages")}
    assert "ix_messages_batch_id" in {i["name"] for i in inspector.get_indexes("messages")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT lane, list_id, batch_id FROM messages WHERE id = 'old-1'")).one() == (
            "transactional", None, None)
        conn.execute(text(
            "INSERT INTO messages (id, status, sender, size_bytes, attempts, crashes, queued_at, updated_at, lane,"
            " list_id, batch_id) VALUES ('new-1', 'queued', 's@example.org', 0, 0, 0, :now, :now, 'bulk',"
            " 'News-Letter', 'B-1')"), {"now": datetime.now(UTC).replace(tzinfo=None)})
        # Identifiers: a list or batch differing only in case is another one (MariaDB's table collation would
        # otherwise fold them together).
        assert conn.execute(text("SELECT COUNT(*) FROM messages WHERE list_id = 'news-letter'")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM messages WHERE batch_id = 'b-1'")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM messages WHERE batch_id = 'B-1'")).scalar_one() == 1

    downgrade(url, "0006")
    assert not NEW & {c["name"] for c in inspect(engine).get_columns("messages")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM messages")).scalar_one() == 2
    upgrade(url)
    assert NEW <= {c["name"] for c in inspect(engine).get_columns("messages")}
    engine.dispose()
