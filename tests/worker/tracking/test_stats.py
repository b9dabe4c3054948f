"""``get_email_stats`` on real MariaDB (and SQLite): exact counts, per-message rates, the time window."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from worker import get_email_stats as public_get_email_stats
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import Message, MessageStatus, Transport
from worker.tracking.stats import get_email_stats

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def add_message(status: MessageStatus, *, transport: Transport | None = Transport.SMTP2GO,
                queued_at: datetime = T0, **fields: Any) -> str:
    tracking_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(Message(id=tracking_id, status=status, transport=transport, sender="support@example.org",
                            subject="s", text_body="b", queued_at=queued_at, **fields))
    return tracking_id


def populate() -> None:
    """Ten messages in the window [T0, T0+1h) and two outside it."""
    delivered: dict[str, Any] = {"email_delivered_at": T0}
    add_message(MessageStatus.SENT)
    add_message(MessageStatus.DELIVERED, **delivered)
    add_message(MessageStatus.DELIVERED, **delivered, email_opened_at=T0)
    add_message(MessageStatus.DELIVERED, **delivered, email_clicked_at=T0)  # a click counts as an open
    add_message(MessageStatus.BOUNCED, email_bounced_at=T0)
    add_message(MessageStatus.BOUNCED, **delivered, email_bounced_at=T0)  # one recipient got it
    add_message(MessageStatus.COMPLAINED, **delivered, email_complained_at=T0, email_opened_at=T0)
    add_message(MessageStatus.SENT, transport=Transport.SMTP, fallback_reason="api 400")
    add_message(MessageStatus.QUEUED, transport=None, queued_at=T0 + timedelta(minutes=59))
    add_message(MessageStatus.FAILED, transport=None, last_error="smtp 550")
    add_message(MessageStatus.DELIVERED, **delivered, queued_at=T0 - timedelta(seconds=1))
    add_message(MessageStatus.SUPPRESSED, transport=None, queued_at=T0 + timedelta(hours=1))


def test_empty_database(db: str) -> None:
    stats = get_email_stats()
    assert stats["total"] == 0 and stats["fallback_count"] == 0 and stats["sent_total"] == 0
    assert stats["by_status"] == {s.value: 0 for s in MessageStatus}
    assert stats["by_transport"] == {"smtp2go": 0, "smtp": 0, "none": 0}
    for rate in ("delivery_rate", "open_rate", "click_rate", "bounce_rate", "spam_rate"):
        assert stats[rate] == 0.0


def test_counts_and_rates_in_a_window(db: str) -> None:
    populate()
    stats = get_email_stats(since=T0, until=T0 + timedelta(hours=1))
    assert stats["total"] == 10
    assert stats["by_status"] == {"queued": 1, "sending": 0, "retrying": 0, "parked": 0, "held": 0, "sent": 2,
                                  "delivered": 3, "bounced": 2, "complained": 1, "rejected": 0, "failed": 1,
                                  "suppressed": 0, "cancelled": 0, "expired": 0}
    assert stats["by_transport"] == {"smtp2go": 7, "smtp": 1, "none": 2}
    assert stats["fallback_count"] == 1
    assert stats["sent_total"] == 8
    assert stats["delivery_rate"] == pytest.approx(5 / 8)
    assert stats["open_rate"] == pytest.approx(3 / 8)
    assert stats["click_rate"] == pytest.approx(1 / 8)
    assert stats["bounce_rate"] == pytest.approx(2 / 8)
    assert stats["spam_rate"] == pytest.approx(1 / 8)
    assert stats["since"] == T0.isoformat() and stats["until"] == (T0 + timedelta(hours=1)).isoformat()


def test_since_until_bounds_and_no_bounds(db: str) -> None:
    populate()
    everything = get_email_stats()
    assert everything["total"] == 12 and everything["sent_total"] == 9
    assert everything["by_status"]["suppressed"] == 1
    assert get_email_stats(since=T0 + timedelta(hours=1))["total"] == 1  # since is inclusive
    assert get_email_stats(until=T0)["total"] == 1  # until is exclusive
    naive = get_email_stats(since=T0.replace(tzinfo=None), until=(T0 + timedelta(hours=1)).replace(tzinfo=None))
    assert naive["total"] == 10  # naive datetimes are UTC
    other_zone = get_email_stats(since=T0.astimezone(datetime.now().astimezone().tzinfo))
    assert other_zone["total"] == 11
    assert public_get_email_stats(since=T0, until=T0 + timedelta(hours=1)) == get_email_stats(
        since=T0, until=T0 + timedelta(hours=1))


def test_stats_use_aggregate_queries_only(db: str) -> None:
    for _ in range(30):
        add_message(MessageStatus.DELIVERED, email_delivered_at=T0)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        stats = get_email_stats()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert stats["delivery_rate"] == 1.0
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2
    assert "GROUP BY" in selects[0].upper() and "text_body" not in " ".join(selects)


def test_stats_on_sqlite(sqlite_db: str) -> None:
    populate()
    stats = get_email_stats(since=T0, until=T0 + timedelta(hours=1))
    assert (stats["total"], stats["sent_total"], stats["fallback_count"]) == (10, 8, 1)
    assert stats["delivery_rate"] == pytest.approx(5 / 8) and stats["bounce_rate"] == pytest.approx(0.25)


def test_rejects_non_datetimes(db: str) -> None:
    with pytest.raises(TypeError):
        get_email_stats(since="2026-11-20")  # type: ignore[arg-type]
