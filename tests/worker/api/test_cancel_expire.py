"""cancel_email and expires_at, on MariaDB and SQLite, with the real fake SMTP2Go."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import wait_until
from worker import InvalidEmail, cancel_email, enqueue_email, get_email_status
from worker.infrastructure.config import reset_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Transport
from worker.providers import breaker as protection
from worker.sending import lifecycle
from worker.sending.delivery import OutcomeKind, deliver


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _status(tid: str) -> dict[str, Any]:
    status = get_email_status(tid)
    assert status is not None
    return status


def test_cancel_a_queued_email_and_nothing_is_sent(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="order-7")
    assert cancel_email(tid) is True
    status = _status(tid)
    assert status["status"] == "cancelled" and status["recipients"][0]["status"] == "cancelled"
    assert deliver(tid, owner="w:1").kind == OutcomeKind.SKIPPED
    assert fake_api.count_for(tid) == 0
    assert cancel_email(tid) is False  # already cancelled: nothing to take back
    assert cancel_email(idempotency_key="order-7") is False
    assert cancel_email("no-such-id") is False and cancel_email(idempotency_key="nope") is False


def test_cancel_by_idempotency_key_a_scheduled_email(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="k-1",
                        send_at=datetime.now(UTC) + timedelta(hours=2))
    assert cancel_email(idempotency_key="k-1") is True
    assert _status(tid)["status"] == "cancelled"


def test_cancel_is_refused_once_a_transport_has_it(fake_api: Any, database: str) -> None:
    sent = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(sent, owner="w:1").kind == OutcomeKind.SENT
    assert cancel_email(sent) is False and _status(sent)["status"] == "sent"
    # claimed and marked in flight (the worker is calling the API right now): too late
    flying = enqueue_email("a@example.com", "s", text_body="b")
    with get_engine().connect() as conn:
        lease = lifecycle.claim(conn, flying, owner="w:2", lease_seconds=60)
        assert lease is not None
        lifecycle.mark_in_flight(conn, lease, Transport.SMTP2GO, lease_seconds=60)
        assert cancel_email(flying) is False
        lifecycle.park_unknown(conn, lease, "read timeout")
        conn.commit()
    assert cancel_email(flying) is False  # parked: it may have been accepted
    assert _status(flying)["status"] == "parked"


def test_cancel_argument_errors() -> None:
    with pytest.raises(InvalidEmail, match="tracking_id"):
        cancel_email()
    with pytest.raises(InvalidEmail, match="tracking_id"):
        cancel_email("a", idempotency_key="b")


def test_cancel_races_a_claiming_worker_exactly_one_wins(fake_api: Any, database: str) -> None:
    """Cancel and a worker's delivery of the same email at once: either it is cancelled and never sent, or it
    was sent once and the cancel said False."""
    outcomes = []
    for i in range(12):
        tid = enqueue_email("a@example.com", f"race {i}", text_body="b")
        start = threading.Barrier(2)
        result: dict[str, Any] = {}

        def send(tid: str = tid, result: dict[str, Any] = result, start: threading.Barrier = start) -> None:
            start.wait()
            result["delivery"] = deliver(tid, owner=f"w:{tid}").kind

        thread = threading.Thread(target=send)
        thread.start()
        start.wait()
        cancelled = cancel_email(tid)
        thread.join(30)
        status = _status(tid)["status"]
        if cancelled:
            assert status == "cancelled" and result["delivery"] == OutcomeKind.SKIPPED
            assert fake_api.count_for(tid) == 0
        else:
            assert status == "sent" and result["delivery"] == OutcomeKind.SENT
            assert fake_api.count_for(tid) == 1
        outcomes.append(cancelled)
    assert len(outcomes) == 12


def test_expired_before_the_claim_is_never_sent(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "code 123456", text_body="b",
                        expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    time.sleep(0.4)
    assert deliver(tid, owner="w:1").kind == OutcomeKind.SKIPPED
    status = _status(tid)
    assert status["status"] == "expired" and status["recipients"][0]["status"] == "expired"
    assert status["expires_at"] is not None
    assert fake_api.count_for(tid) == 0
    assert cancel_email(tid) is False


def test_not_yet_expired_is_sent(fake_api: Any, database: str) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert deliver(tid, owner="w:1").kind == OutcomeKind.SENT


def test_expiry_while_the_breaker_is_open(fake_api: Any, base_env: pytest.MonkeyPatch, database: str) -> None:
    """SMTP2Go's breaker is open (a revoked key): the email waits, held; its expiry passes meanwhile, and the
    next claim expires it instead of sending it once the breaker closes."""
    base_env.setenv("SMTP2GO_BREAKER_COOLDOWN", "1")
    reset_settings()
    protection.reset()
    protection.open_for_problem("SMTP2Go refused the API key (test)")
    try:
        tid = enqueue_email("a@example.com", "code", text_body="b",
                            expires_at=datetime.now(UTC) + timedelta(seconds=1))
        first = deliver(tid, owner="w:1")
        assert first.kind in (OutcomeKind.HELD, OutcomeKind.RETRY), first
        assert _status(tid)["status"] == ("held" if first.kind == OutcomeKind.HELD else "retrying")
        wait_until(lambda: deliver(tid, owner="w:2").kind == OutcomeKind.SKIPPED
                   and _status(tid)["status"] == "expired", timeout=15, interval=0.3, message="expiry")
        assert fake_api.count_for(tid) == 0
    finally:
        protection.reset()


def test_expires_at_must_be_aware(database: str) -> None:
    with pytest.raises(InvalidEmail, match="expires_at"):
        enqueue_email("a@example.com", "s", text_body="b", expires_at=datetime.now())


def test_cli_cancel(fake_api: Any, database: str) -> None:
    from worker.cli import main

    tid = enqueue_email("a@example.com", "s", text_body="b")
    result = CliRunner().invoke(main, ["cancel", tid])
    assert result.exit_code == 0, result.output
    assert "cancelled" in result.output
    again = CliRunner().invoke(main, ["cancel", tid])
    assert again.exit_code == 1 and "not cancelled" in again.output
