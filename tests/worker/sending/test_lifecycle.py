"""The state machine's fences, on MariaDB and SQLite, with the real fake SMTP2Go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from worker import enqueue_email, get_email_status
from worker.errors import ConfigurationError
from worker.infrastructure.config import get_settings, load_settings, reset_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Message, MessageStatus, Transport, utcnow
from worker.operations.maintenance import requeue
from worker.operations.reconcile import reconcile
from worker.providers.base import OutgoingEmail
from worker.providers.smtp2go import transport as smtp2go_provider
from worker.sending import lifecycle
from worker.sending.jobs import load_job
from worker.sending.lifecycle import ClaimKind, LeaseLost


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _row(tid: str) -> Message:
    with get_engine().connect() as conn:
        row = conn.execute(select(Message.__table__).where(Message.__table__.c.id == tid)).one()
    return row  # type: ignore[return-value]


def test_an_attempt_that_outlived_its_lease_cannot_overwrite_the_takeover(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "slow attempt", text_body="x")
    with get_engine().connect() as slow_conn, get_engine().connect() as new_conn:
        slow = lifecycle.claim(slow_conn, tid, owner="host:slow", lease_seconds=0.2)
        assert slow is not None and slow.kind == ClaimKind.FRESH
        slow_conn.commit()
        time.sleep(0.3)
        takeover = lifecycle.claim(new_conn, tid, owner="host:new", lease_seconds=60)
        assert takeover is not None and takeover.kind == ClaimKind.TAKEOVER
        new_conn.commit()
        with pytest.raises(LeaseLost, match="host:slow"):
            lifecycle.retry_later(slow_conn, slow, "late answer", utcnow())
        with pytest.raises(LeaseLost):
            lifecycle.record_accepted(slow_conn, slow, Transport.SMTP2GO, "email-id-late")
    row = _row(tid)
    assert row.status == MessageStatus.SENDING and row.lease_owner == "host:new" and row.crashes == 1
    assert row.smtp2go_message_id is None
    status = get_email_status(tid)
    assert status is not None and status["recipients"][0]["status"] == "queued"


def test_requeue_stuck_parks_a_message_that_died_in_flight_and_reconciliation_settles_it(
        fake_api: Any, database: str) -> None:
    """A worker killed while SMTP2Go accepted the message: `requeue --stuck` must not send it a second time."""
    tid = enqueue_email("a@example.com", "killed mid-send", text_body="x")
    settings = get_settings()
    with get_engine().connect() as conn:
        lease = lifecycle.claim(conn, tid, owner="host:dies", lease_seconds=0.2)
        assert lease is not None
        lifecycle.mark_in_flight(conn, lease, Transport.SMTP2GO, lease_seconds=0.2)
        job = load_job(conn, tid)
        assert settings.smtp2go_api_key
        email_id = smtp2go_provider.send(email=OutgoingEmail.from_message(job), api_key=settings.smtp2go_api_key,
                                         api_url=settings.smtp2go_api_url, timeout=5, connect_timeout=1)
        # ... and the worker is killed here: the answer is never recorded.
    time.sleep(0.3)
    result = requeue(stuck=True, stuck_after=timedelta(0))
    assert result.parked == [tid] and result.requeued == []
    status = get_email_status(tid)
    assert status is not None and status["status"] == "parked" and status["ambiguous"] is True
    assert status["attempts"][-1]["provider"] == "smtp2go"  # reconciliation needs to know where to look
    reconcile(settle=0)
    status = get_email_status(tid)
    assert status is not None and status["status"] == "sent" and status["smtp2go_message_id"] == email_id
    assert fake_api.count_for(tid) == 1


def test_parked_messages_are_left_alone_unless_the_operator_says_so(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "parked", text_body="x")
    with get_engine().connect() as conn:
        lease = lifecycle.claim(conn, tid, owner="host:a", lease_seconds=60)
        assert lease is not None
        lifecycle.mark_in_flight(conn, lease, Transport.SMTP, lease_seconds=60)
        lifecycle.park_unknown(conn, lease, "relay took the DATA and never answered")
        conn.commit()
    skipped = requeue([tid])
    assert skipped.requeued == [] and "parked" in skipped.skipped[tid]
    forced = requeue(include_ambiguous=True)
    assert forced.requeued == [tid]
    status = get_email_status(tid)
    assert status is not None and status["status"] == "retrying" and status["ambiguous"] is False
    assert "may deliver twice" in status["last_error"]


def test_settings_refuse_a_lease_shorter_than_the_worst_case_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_TIMEOUT", "30")
    monkeypatch.setenv("SEND_LEASE_SECONDS", "60")
    with pytest.raises(ConfigurationError, match="SEND_LEASE_SECONDS=60 .*4 x SMTP_TIMEOUT"):
        load_settings()
    monkeypatch.setenv("SEND_LEASE_SECONDS", "180")
    assert load_settings().send_lease_seconds == 180
    reset_settings()
