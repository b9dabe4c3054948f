"""The 7-day spam complaint rate (complaints / recipients accepted) and the sweeper's once-a-day WARNING, on
MariaDB and SQLite."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from tests.conftest import SEND_QUEUE
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    EventType,
    Message,
    MessageStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    TrackingEvent,
    utcnow,
)
from worker.operations import sweeper
from worker.tracking.complaints import ComplaintWatch, complaint_rate, warning_key


@pytest.fixture(params=["mariadb", "sqlite"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("db" if request.param == "mariadb" else "sqlite_db"))


def spam_event(message_id: str | None, address: str, at: datetime) -> None:
    with session_scope() as session:
        session.add(TrackingEvent(provider_event_id=str(uuid.uuid4()), message_id=message_id,
                                  event_type=EventType.SPAM, raw_event="spam", recipient=address,
                                  occurred_at=at, received_at=at, applied_at=at if message_id else None))


def seed(accepted: int, complained: int = 0, *, sent_at: datetime | None = None,
         complained_at: datetime | None = None) -> str:
    """One message accepted for ``accepted`` recipients; the first ``complained`` of them complained (their
    recipient row says so and the spam event that did it is stored, applied)."""
    sent = sent_at or utcnow() - timedelta(days=2)
    when = complained_at or utcnow() - timedelta(days=1)
    tracking_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(Message(id=tracking_id, status=MessageStatus.COMPLAINED if complained else MessageStatus.SENT,
                            sender="Support <support@example.org>", subject="News", text_body="b",
                            queued_at=sent - timedelta(seconds=2), sent_at=sent))
        session.flush()
        session.execute(insert(Recipient), [
            {"message_id": tracking_id, "address": f"r{i}@example.com", "kind": RecipientKind.TO,
             "status": RecipientStatus.COMPLAINED if i < complained else RecipientStatus.SENT, "sent_at": sent,
             "complained_at": when if i < complained else None, "open_count": 0, "click_count": 0}
            for i in range(accepted)])
    for i in range(complained):
        spam_event(tracking_id, f"R{i}@Example.com", when)  # the provider's spelling: counted once all the same
    return tracking_id


def test_no_mail_is_rate_zero_not_a_division_error(database: str) -> None:
    empty = complaint_rate()
    assert (empty.complaints, empty.delivered_base, empty.rate, empty.over) == (0, 0, 0.0, False)
    assert empty.threshold == 0.003
    spam_event(None, "someone@example.com", utcnow() - timedelta(hours=1))  # about mail older than the window
    only_complaints = complaint_rate()
    assert (only_complaints.complaints, only_complaints.delivered_base, only_complaints.rate) == (1, 0, 0.0)
    assert not only_complaints.over


def test_what_counts_and_what_does_not(database: str) -> None:
    now = utcnow()
    seed(10, complained=1)  # 10 accepted; 1 complained (row + its applied event: one complaint)
    seed(5, sent_at=now - timedelta(days=8))  # accepted before the window: not in the base
    spam_event(None, "unmatched@example.com", now - timedelta(hours=3))  # not matched to its message yet: counts
    spam_event(None, "old@example.com", now - timedelta(days=8))  # before the window
    seed(2, complained=1, sent_at=now - timedelta(days=10), complained_at=now - timedelta(days=9))
    result = complaint_rate(now=now)
    assert (result.complaints, result.delivered_base) == (2, 10)
    assert result.rate == pytest.approx(0.2)
    # The window moves with ``now``: a week later nothing of this is in it.
    later = complaint_rate(now=now + timedelta(days=8))
    assert (later.complaints, later.delivered_base, later.rate) == (0, 0, 0.0)


def test_over_and_under_the_line(database: str) -> None:
    seed(1000, complained=1)
    under = complaint_rate()
    assert (under.complaints, under.delivered_base) == (1, 1000)
    assert under.rate == pytest.approx(0.001) and not under.over
    seed(1000, complained=6)  # 7 / 2000 = 0.35 %
    over = complaint_rate()
    assert over.rate == pytest.approx(0.0035) and over.over
    assert not complaint_rate(threshold=0.004).over
    assert complaint_rate(threshold=0.0035).over  # at the line is over it


def test_the_threshold_is_a_setting(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    seed(1000, complained=4)
    assert complaint_rate().over
    monkeypatch.setenv("COMPLAINT_RATE_THRESHOLD", "0.005")
    reset_settings()
    result = complaint_rate()
    assert result.threshold == 0.005 and not result.over


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="window must be a positive timedelta"):
        complaint_rate(window=timedelta(0))
    with pytest.raises(TypeError, match="now must be a datetime"):
        complaint_rate(now="yesterday")  # type: ignore[arg-type]


def _complaint_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "spam complaint rate" in r.getMessage()]


def test_the_sweeper_warns_once_a_day_across_processes(database: str, redis_client: Any,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    seed(1000, complained=4)  # 0.40 %
    first = ComplaintWatch()
    monkeypatch.setattr(sweeper, "_COMPLAINTS", first)
    caplog.set_level(logging.INFO)
    sweeper.sweep()
    warnings = _complaint_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "0.40 %" in warnings[0] and "4 complaint(s) / 1,000 recipient(s)" in warnings[0]
    assert "0.30 %" in warnings[0]
    key = warning_key(SEND_QUEUE)
    assert 86000 < redis_client.ttl(key) <= 86400

    # Another process (its own watch, nothing computed yet) sweeps: it computes the rate, but stays quiet.
    second = ComplaintWatch()
    monkeypatch.setattr(sweeper, "_COMPLAINTS", second)
    sweeper.sweep()
    assert second.last is not None and second.last.over
    assert len(_complaint_warnings(caplog)) == 1

    # The same process sweeps again within 10 minutes: nothing is computed.
    checked_until, computed = second.next_check, second.last
    sweeper.sweep()
    assert second.next_check == checked_until and second.last is computed

    # A day later (the marker expired) the next computation warns again.
    redis_client.delete(key)
    monkeypatch.setattr(sweeper, "_COMPLAINTS", ComplaintWatch())
    sweeper.sweep()
    assert len(_complaint_warnings(caplog)) == 2


def test_no_warning_under_the_line(database: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    seed(1000, complained=2)  # 0.20 %
    watch = ComplaintWatch()
    monkeypatch.setattr(sweeper, "_COMPLAINTS", watch)
    caplog.set_level(logging.INFO)
    sweeper.sweep()
    assert watch.last is not None and watch.last.complaints == 2 and not watch.last.over
    assert _complaint_warnings(caplog) == []
    assert redis_client.exists(warning_key(SEND_QUEUE)) == 0


def test_without_redis_a_process_warns_once_a_day_by_itself(database: str, caplog: pytest.LogCaptureFixture) -> None:
    seed(100, complained=1)
    ticks = iter([0.0, 700.0, 1400.0, 86401.0])
    watch = ComplaintWatch(clock=lambda: next(ticks))
    caplog.set_level(logging.INFO)
    results = [watch.check() for _ in range(4)]
    assert all(r is not None and r.over for r in results)
    assert len(_complaint_warnings(caplog)) == 2  # at 0 s and after a day


def test_stats_shows_the_complaint_rate(database: str) -> None:
    from worker.cli import main

    seed(1000, complained=4)
    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["complaint_rate_7d"] == {"complaints": 4, "delivered_base": 1000, "rate": 0.004,
                                         "threshold": 0.003, "over": True}
    text = CliRunner().invoke(main, ["stats"]).output
    assert "complaints 7d   0.40% (4 of 1000 recipients accepted in the last 7 days" in text
    assert "line 0.30%)  OVER THE LINE" in text
