"""The attempt row is written by the transition that applies its outcome, and deliver() stays cheap."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from worker import enqueue_email
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Attempt, AttemptOutcome, Message, MessageStatus, utcnow
from worker.sending import lifecycle
from worker.sending.delivery import OutcomeKind, deliver
from worker.sending.lifecycle import AttemptEnd, LeaseLost


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _attempts(tid: str) -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(select(Attempt.__table__).where(Attempt.__table__.c.message_id == tid)))


def test_an_attempt_that_outlived_its_lease_leaves_both_the_message_and_its_attempt_row(
        fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "slow attempt", text_body="x")
    with get_engine().connect() as slow_conn, get_engine().connect() as new_conn:
        slow = lifecycle.claim(slow_conn, tid, owner="host:slow", lease_seconds=0.3)
        assert slow is not None
        attempt_id = lifecycle.mark_in_flight(slow_conn, slow, "smtp2go", lease_seconds=0.3)
        time.sleep(0.4)
        assert lifecycle.claim(new_conn, tid, owner="host:new", lease_seconds=60) is not None
        new_conn.commit()
        with pytest.raises(LeaseLost, match="host:slow"):
            lifecycle.record_accepted(slow_conn, slow, "smtp2go", "email-id-late", attempt=AttemptEnd(
                attempt_id, AttemptOutcome.ACCEPTED, provider_message_id="email-id-late", started=utcnow()))
    (row,) = _attempts(tid)
    assert row.outcome == AttemptOutcome.IN_FLIGHT and row.finished_at is None and row.provider_message_id is None
    with get_engine().connect() as conn:
        message = conn.execute(select(Message.__table__).where(Message.__table__.c.id == tid)).one()
    assert message.status == MessageStatus.SENDING and message.lease_owner == "host:new"
    assert message.smtp2go_message_id is None


def test_deliver_finishes_its_attempt_row_with_the_outcome(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "one attempt", text_body="x")
    result = deliver(tid, owner="host:a")
    assert result.kind == OutcomeKind.SENT
    (row,) = _attempts(tid)
    assert row.outcome == AttemptOutcome.ACCEPTED and row.provider_message_id == result.detail
    assert row.finished_at is not None and row.latency_ms is not None and row.error is None


def test_one_delivery_costs_at_most_ten_statements_on_mariadb(fake_api: Any, db: str, redis_client: Any) -> None:
    """Claim, load (message and queued recipients together), in-flight mark with its attempt row, the outcome
    with the attempt's end in one UPDATE, the recipients, the callback, early events: ten round trips."""
    deliver(enqueue_email("warm@example.com", "warm up", text_body="x"), owner="host:a")
    tid = enqueue_email("a@example.com", "counted", text_body="x", html_body="<p>x</p>")
    engine = get_engine()
    verbs: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM integration_modules" not in statement:  # the module's stored settings (tests enable it so)
            verbs[statement.split(None, 1)[0].upper()] += 1

    def commit(conn: Any) -> None:
        verbs["COMMIT"] += 1

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "commit", commit)
    try:
        assert deliver(tid, owner="host:a").kind == OutcomeKind.SENT
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "commit", commit)
    assert sum(verbs.values()) <= 10, dict(verbs)
    assert verbs["SELECT"] <= 2 and verbs["UPDATE"] <= 4, dict(verbs)
