"""requeue and purge, through the CLI, against MariaDB (the status-callback purge on SQLite too)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from worker import enqueue_email, get_email_status
from worker.cli import main
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Attachment,
    CallbackAttempt,
    CallbackDelivery,
    CallbackEndpoint,
    Message,
    MessageStatus,
    StatusEvent,
    TrackingEvent,
    utcnow,
)
from worker.operations.maintenance import purge
from worker.sending.delivery import deliver


def _run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_requeue_failed_message_sends_it(fake_api: Any, db: str, redis_client: Any) -> None:
    fake_api.script(Scripted.error_400_data())  # permanent; no SMTP relay configured -> failed
    tid = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(tid, owner="w").kind == "failed"
    dry = _run("requeue", "--failed", "--dry-run", "--json")
    assert dry["requeued"] == [tid] and dry["dry_run"] is True
    assert get_email_status(tid)["status"] == "failed"  # type: ignore[index]
    done = _run("requeue", tid, "--json")
    assert done["requeued"] == [tid]
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued" and status["recipients"][0]["status"] == "queued"
    assert deliver(tid, owner="w").kind == "sent"
    assert fake_api.count_for(tid) == 1


def test_requeue_refuses_sent_and_ambiguous(fake_api: Any, db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(tid, owner="w").kind == "sent"
    out = _run("requeue", tid, "nope", "--json")
    assert out["requeued"] == [] and out["skipped"] == {tid: "status is sent", "nope": "unknown id"}
    result = CliRunner().invoke(main, ["requeue"])
    assert result.exit_code == 2 and "--failed" in result.output


def test_requeue_stuck_expired_lease(fake_api: Any, db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(
            status=MessageStatus.SENDING, lease_owner="dead", lease_expires_at=utcnow() - timedelta(minutes=1)))
    out = _run("requeue", "--stuck", "--json")
    assert out["requeued"] == [tid]
    assert deliver(tid, owner="w").kind == "sent"


def test_purge_drops_content_keeps_status(fake_api: Any, db: str, redis_client: Any) -> None:
    from worker.tracking.events import process_event

    old = enqueue_email("a@example.com", "old", text_body="secret body", attachments=[("a.txt", b"x", "text/plain")])
    new = enqueue_email("b@example.com", "new", text_body="keep me")
    for tid in (old, new):
        assert deliver(tid, owner="w").kind == "sent"
    email_id = get_email_status(old)["smtp2go_message_id"]  # type: ignore[index]
    process_event({"event": "delivered", "id": "e-old", "email_id": email_id, "rcpt": "a@example.com",
                   "time": "2020-01-01T00:00:00Z"})
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == old).values(queued_at=utcnow() - timedelta(days=100)))
    dry = _run("purge", "--older-than", "90d", "--dry-run", "--json")
    assert dry == {"messages": 1, "attachments": 1, "events": 1, "status_events": 0, "callback_deliveries": 0,
                   "callback_attempts": 0, "dry_run": True}
    done = _run("purge", "--older-than", "90d", "--json")
    assert done["messages"] == 1 and done["attachments"] == 1 and done["events"] == 1
    with session_scope() as session:
        row = session.get(Message, old)
        assert row is not None and row.text_body is None and row.purged_at is not None
        assert row.status == MessageStatus.DELIVERED
        assert session.get(Message, new).text_body == "keep me"  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Attachment)) == 0
        assert session.scalar(select(func.count()).select_from(TrackingEvent)) == 0
    bad = CliRunner().invoke(main, ["purge", "--older-than", "ninety"])
    assert bad.exit_code == 2 and "duration" in bad.output


# ------------------------------------------------------------------------------ status callbacks


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _event(days_ago: float, states: list[str], *, attempts: int = 1, dispatched: bool = True,
           endpoint_id: int = 1) -> tuple[int, str]:
    """A status event of our own created ``days_ago``, with one delivery per state (to endpoints
    ``endpoint_id``, ``endpoint_id`` + 1, ...), each with ``attempts`` attempts; returns (pk, event_id)."""
    when = utcnow() - timedelta(days=days_ago)
    with session_scope() as session:
        event = StatusEvent(event_id=f"evt_{uuid.uuid4().hex}", message_id=str(uuid.uuid4()), seq=1,
                            type="email.delivered", status="delivered", occurred_at=when, created_at=when,
                            dispatched_at=when if dispatched else None)
        session.add(event)
        session.flush()
        for n, state in enumerate(states):
            delivery = CallbackDelivery(event_pk=event.id, kind="http", endpoint_id=endpoint_id + n, state=state,
                                        attempts=attempts, next_attempt_at=when if state == "pending" else None,
                                        created_at=when)
            session.add(delivery)
            session.flush()
            session.add_all(CallbackAttempt(delivery_id=delivery.id, attempted_at=when, duration_ms=5,
                                            status_code=200 if state == "delivered" else 503)
                            for _ in range(attempts))
        return event.id, event.event_id


def _callback_rows() -> dict[str, set[int]]:
    with session_scope() as session:
        return {"events": set(session.scalars(select(StatusEvent.id))),
                "deliveries": set(session.scalars(select(CallbackDelivery.event_pk))),
                "attempts": set(session.scalars(select(CallbackAttempt.delivery_id)))}


def test_purge_deletes_settled_status_events_with_their_deliveries_and_attempts(database: str) -> None:
    delivered, _ = _event(100, ["delivered", "delivered"], attempts=3)
    dead, _ = _event(100, ["dead", "delivered"], attempts=2)  # a dead letter older than the window
    nobody, _ = _event(100, [])  # dispatched, no endpoint wanted it
    pending, _ = _event(100, ["delivered", "pending"])  # still retrying: kept, its delivered one too
    undispatched, _ = _event(100, [], dispatched=False)  # the dispatcher has not seen it yet
    recent, _ = _event(10, ["dead"], attempts=8)  # inside the window: replay still reaches it
    before = _callback_rows()

    dry = purge(timedelta(days=90), dry_run=True).as_dict()
    assert (dry["status_events"], dry["callback_deliveries"], dry["callback_attempts"]) == (3, 4, 10)
    assert _callback_rows() == before

    done = purge(timedelta(days=90), batch=2).as_dict()  # small batches: several transactions and statements
    assert (done["status_events"], done["callback_deliveries"], done["callback_attempts"]) == (3, 4, 10)
    assert done["dry_run"] is False
    with session_scope() as session:
        assert set(session.scalars(select(StatusEvent.id))) == {pending, undispatched, recent}
        assert sorted(session.scalars(select(CallbackDelivery.event_pk))) == [pending, pending, recent]
        assert session.scalar(select(func.count()).select_from(CallbackAttempt)) == 1 + 1 + 8
    assert not {delivered, dead, nobody} & _callback_rows()["deliveries"]

    again = purge(timedelta(days=90)).as_dict()
    assert (again["status_events"], again["callback_deliveries"], again["callback_attempts"]) == (0, 0, 0)


def test_replay_reaches_back_to_the_retention_window(database: str) -> None:
    from worker.callbacks.dispatcher import replay

    with session_scope() as session:
        endpoint = CallbackEndpoint(url="https://app.example.invalid/hooks/mail", secret_encrypted="unused",
                                    enabled=True)
        session.add(endpoint)
        session.flush()
        endpoint_id = endpoint.id
    _, old = _event(100, ["dead"], attempts=2, endpoint_id=endpoint_id)
    _, recent = _event(10, ["dead"], attempts=2, endpoint_id=endpoint_id)
    out = _run("purge", "--older-than", "90d")
    assert "1 status event(s), 1 callback delivery(ies), 2 callback attempt(s)" in out
    assert replay(event_ids=[old]) == 0  # purged: beyond RETENTION_DAYS
    assert replay(event_ids=[recent]) == 1
    with session_scope() as session:
        assert session.scalar(select(CallbackDelivery.state)) == "pending"
    kept = _run("purge", "--older-than", "5d", "--json")  # the replayed dead letter is pending again: kept
    assert (kept["status_events"], kept["callback_deliveries"], kept["callback_attempts"]) == (0, 0, 0)
