"""The bulk lane records a batch's accepted emails per batch, not per email: a statement per table, while every
email keeps its own row, attempt, recipients, callback and early events, and the lease still fences each row."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update

from worker import enqueue_email
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import (
    Attempt,
    AttemptOutcome,
    EventType,
    Message,
    MessageStatus,
    Recipient,
    RecipientStatus,
    StatusEvent,
    TrackingEvent,
    utcnow,
)
from worker.sending import lifecycle
from worker.sending.batch import send_batch
from worker.sending.delivery import OutcomeKind

M, T, R, SE = Message.__table__, Attempt.__table__, Recipient.__table__, StatusEvent.__table__


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def stored(n: int, prefix: str) -> list[str]:
    """``n`` due emails that were never published (as the bulk enqueue leaves them before publishing)."""
    later = utcnow() + timedelta(days=1)
    ids = [enqueue_email(f"{prefix}{i}@example.com", f"Newsletter {i}", text_body=f"Hello {i}", send_at=later)
           for i in range(n)]
    with session_scope() as session:
        session.execute(update(Message).where(Message.id.in_(ids)).values(
            next_attempt_at=utcnow() - timedelta(seconds=1), send_at=None))
    return ids


def test_a_batch_is_recorded_with_a_statement_per_table_and_each_email_keeps_its_own_records(
        fake_api: Any, db: str, redis_client: Any) -> None:
    send_batch(stored(3, "warm"), owner="host:warm")
    ids = stored(40, "bulk")
    verbs: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM integration_modules" not in statement:  # the module's stored settings (tests enable it so)
            verbs[statement.split(None, 1)[0].upper()] += 1

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        report = send_batch(ids, owner="host:batch")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert report.outcomes == {OutcomeKind.SENT: 40}
    # claim (3), load (1), in-flight mark (3 + commit), record: messages, attempts, recipients, events, early events
    assert sum(verbs.values()) <= 14, dict(verbs)
    assert verbs["UPDATE"] <= 5 and verbs["INSERT"] <= 2 and verbs["SELECT"] <= 5, dict(verbs)
    with get_engine().connect() as conn:
        messages = {r.id: r for r in conn.execute(select(M).where(M.c.id.in_(ids)))}
        attempts = {r.message_id: r for r in conn.execute(select(T).where(T.c.message_id.in_(ids)))}
        recipients = {r.message_id: r for r in conn.execute(select(R).where(R.c.message_id.in_(ids)))}
        events = list(conn.execute(select(SE).where(SE.c.message_id.in_(ids))))
    provider_ids = {m.smtp2go_message_id for m in messages.values()}
    assert len(provider_ids) == 40 and None not in provider_ids
    for tid, m in messages.items():
        assert m.status == MessageStatus.SENT and m.lease_owner is None and m.inflight_since is None, tid
        assert m.sent_at is not None and m.transport == "smtp2go" and m.attempts == 1
        a = attempts[tid]
        assert a.outcome == AttemptOutcome.ACCEPTED and a.provider_message_id == m.smtp2go_message_id
        assert a.finished_at is not None and a.latency_ms is not None
        assert recipients[tid].status == RecipientStatus.SENT and recipients[tid].sent_at is not None
    assert sorted(e.message_id for e in events) == sorted(ids)
    assert len({e.event_id for e in events}) == 40
    for e in events:
        assert e.type == "email.sent" and e.status == "sent" and e.seq == 1 and e.data == {"transport": "smtp2go"}
        assert e.smtp2go_message_id == messages[e.message_id].smtp2go_message_id


def _in_flight(ids: list[str], owner: str) -> dict[str, int]:
    with get_engine().connect() as conn:
        leases = lifecycle.claim_batch(conn, ids, owner=owner, lease_seconds=60)
        assert len(leases) == len(ids)
        return lifecycle.mark_batch_in_flight(conn, leases, "smtp2go", lease_seconds=60)


def test_a_row_whose_lease_was_lost_is_not_written_while_its_mates_are(fake_api: Any, database: str) -> None:
    ids = stored(3, "lost")
    attempt_ids = _in_flight(ids, "host:old")
    with session_scope() as session:  # another worker took the second one over
        session.execute(update(Message).where(Message.id == ids[1]).values(lease_owner="host:new"))
    accepted = [lifecycle.BatchAccepted(lifecycle.Lease(t, "host:old", lifecycle.ClaimKind.FRESH), f"pid-{t}",
                                        attempt_ids[t]) for t in ids]
    with get_engine().connect() as conn:
        lost = lifecycle.record_batch_accepted(conn, accepted, "smtp2go", started=utcnow())
        conn.commit()
    assert [a.lease.tracking_id for a in lost] == [ids[1]]
    with get_engine().connect() as conn:
        messages = {r.id: r for r in conn.execute(select(M).where(M.c.id.in_(ids)))}
        attempts = {r.message_id: r for r in conn.execute(select(T).where(T.c.message_id.in_(ids)))}
        events = [r.message_id for r in conn.execute(select(SE.c.message_id).where(SE.c.message_id.in_(ids)))]
    taken = messages[ids[1]]
    assert taken.status == MessageStatus.SENDING and taken.lease_owner == "host:new"
    assert taken.smtp2go_message_id is None
    assert attempts[ids[1]].outcome == AttemptOutcome.IN_FLIGHT and attempts[ids[1]].finished_at is None
    for t in (ids[0], ids[2]):
        assert messages[t].status == MessageStatus.SENT and messages[t].smtp2go_message_id == f"pid-{t}"
        assert attempts[t].outcome == AttemptOutcome.ACCEPTED and attempts[t].provider_message_id == f"pid-{t}"
    assert sorted(events) == sorted([ids[0], ids[2]])


def test_events_that_arrived_before_the_batch_was_recorded_are_applied_to_their_email_only(
        fake_api: Any, database: str) -> None:
    ids = stored(3, "early")
    attempt_ids = _in_flight(ids, "host:a")
    now = utcnow()
    with session_scope() as session:
        session.add(TrackingEvent(provider_event_id=str(uuid.uuid4()), smtp2go_message_id=f"pid-{ids[2]}",
                                  event_type=EventType.DELIVERED, raw_event="delivered", recipient="early2@example.com",
                                  occurred_at=now, received_at=now))
    accepted = [lifecycle.BatchAccepted(lifecycle.Lease(t, "host:a", lifecycle.ClaimKind.FRESH), f"pid-{t}",
                                        attempt_ids[t]) for t in ids]
    with get_engine().connect() as conn:
        assert lifecycle.record_batch_accepted(conn, accepted, "smtp2go", started=now) == []
        conn.commit()
    with get_engine().connect() as conn:
        status: dict[str, Any] = {r.id: r.status for r in conn.execute(select(M.c.id, M.c.status)
                                                                     .where(M.c.id.in_(ids)))}
        types: Counter[tuple[str, str]] = Counter(
            (r.message_id, r.type) for r in conn.execute(select(SE.c.message_id, SE.c.type)
                                                         .where(SE.c.message_id.in_(ids))))
        applied = conn.scalar(select(TrackingEvent.applied_at)
                              .where(TrackingEvent.smtp2go_message_id == f"pid-{ids[2]}"))
    assert status == {ids[0]: MessageStatus.SENT, ids[1]: MessageStatus.SENT, ids[2]: MessageStatus.DELIVERED}
    assert applied is not None
    assert types[(ids[2], "email.delivered")] == 1 and types[(ids[2], "email.sent")] == 1
    assert not any(t == "email.delivered" for (m, t) in types if m != ids[2])
