"""The bulk lane's ``mailworker.send_batch``: a real Celery worker on Redis, the fake SMTP2Go over HTTP (its
``/email/batch`` answers as ``tests/fixtures/smtp2go/email_batch_*.json`` show), MariaDB and SQLite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import wait_until
from worker import enqueue_email
from worker import get_email_status as _get_email_status
from worker.celery_app import app
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.config import reset_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, utcnow

FINAL = {"sent", "failed", "suppressed", "expired"}


def stored(n: int, *, prefix: str = "bulk") -> list[str]:
    """``n`` stored emails that are due but were never published (as the bulk enqueue leaves them before it
    publishes its chunks): stored with a far ``send_at`` (nothing is published), then made due."""
    later = utcnow() + timedelta(days=1)
    ids = [enqueue_email(f"{prefix}{i}@example.com", f"Newsletter {i}", text_body=f"Hello {i}", send_at=later)
           for i in range(n)]
    with session_scope() as session:
        session.execute(update(Message).where(Message.id.in_(ids)).values(
            next_attempt_at=utcnow() - timedelta(seconds=1), send_at=None))
    return ids


def get_email_status(tracking_id: str) -> dict[str, Any]:
    status = _get_email_status(tracking_id)
    assert status is not None, tracking_id
    return status


def publish(ids: list[str], size: int = 100) -> None:
    for start in range(0, len(ids), size):
        app.send_task("mailworker.send_batch", args=[ids[start:start + size]])


def statuses(ids: list[str]) -> dict[str, str]:
    with session_scope() as session:
        return {i: s.value for i, s in session.execute(select(Message.id, Message.status)
                                                       .where(Message.id.in_(ids)))}


def all_final(ids: list[str], timeout: float = 60.0) -> dict[str, str]:
    def done() -> dict[str, str] | None:
        now = statuses(ids)
        return now if all(s in FINAL for s in now.values()) and len(now) == len(ids) else None

    return wait_until(done, timeout=timeout, message="every email of the batch to reach a final state")


def batch_requests(fake: Any) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r.get("path") == "/email/batch"]


# ------------------------------------------------------------------------------------------------ sending


def test_250_in_chunks_each_sent_once_with_its_own_email_id(fake_api: Any, celery_worker: Any) -> None:
    ids = stored(250)
    publish(ids)
    assert set(all_final(ids).values()) == {"sent"}
    requests = batch_requests(fake_api)
    assert sorted(len(r["payload"]["emails"]) for r in requests) == [50, 100, 100]
    assert not [r for r in fake_api.requests if r.get("path") != "/email/batch"]  # no single sends
    assert fake_api.duplicates() == {} and all(fake_api.count_for(t) == 1 for t in ids)
    # each email's own id, in request order, matched by its X-Mailworker-Id header
    by_tracking = {s["tracking_id"]: s["email_id"] for s in fake_api.sends}
    for request in requests:
        sent_ids = [next(h["value"] for h in e["custom_headers"] if h["header"] == "X-Mailworker-Id")
                    for e in request["payload"]["emails"]]
        assert [by_tracking[t] for t in sent_ids] == request["email_ids"]
    for tid in ids[:3] + ids[-3:]:
        status = get_email_status(tid)
        assert status["smtp2go_message_id"] == by_tracking[tid]
        assert [(a["provider"], a["outcome"]) for a in status["attempts"]] == [("smtp2go", "accepted")]
        assert status["attempts"][0]["provider_message_id"] == by_tracking[tid]
        assert [r["status"] for r in status["recipients"]] == ["sent"]
    assert len(set(by_tracking.values())) == 250


def test_refused_item_fails_alone_while_its_mates_are_sent(fake_api: Any, celery_worker: Any) -> None:
    ids = stored(5)
    bad = ids[2]
    with session_scope() as session:  # a body SMTP2Go refuses (no text_body, html_body or template_id)
        session.execute(update(Message).where(Message.id == bad).values(text_body=None))
    publish(ids)
    final = all_final(ids)
    assert final[bad] == "failed"
    assert {final[t] for t in ids if t != bad} == {"sent"}
    first = batch_requests(fake_api)[0]
    assert first["status"] == 400 and first["email_ids"] == []
    assert all(fake_api.count_for(t) == 1 for t in ids if t != bad) and fake_api.count_for(bad) == 0
    status = get_email_status(bad)
    assert [a["outcome"] for a in status["attempts"]] == ["not_sent", "refused"]
    assert "text_body" in (status["last_error"] or "")
    mate = get_email_status(ids[0])
    assert [a["outcome"] for a in mate["attempts"]] == ["not_sent", "accepted"]


@pytest.mark.parametrize("answer", ["server_error", "timeout"])
def test_ambiguous_batch_parks_and_one_search_settles_it(fake_api: Any, celery_worker: Any,
                                                         base_env: pytest.MonkeyPatch, answer: str) -> None:
    base_env.setenv("RECONCILE_RESEND_AFTER", "0")  # the fake's activity has no lag: a negative search is final
    reset_settings()
    ids = stored(6)
    scripted = (Scripted.server_error(502) if answer == "server_error" else Scripted.slow(5))
    scripted.accept_items = 4  # the request took the first four before it failed: they must never go again
    fake_api.script_batch(scripted)
    publish(ids)
    assert set(all_final(ids).values()) == {"sent"}
    assert fake_api.duplicates() == {}
    assert all(fake_api.count_for(t) == 1 for t in ids)
    assert len(fake_api.activity_queries) == 1  # one search for the whole batch, not one per email
    assert "search_recipient" not in fake_api.activity_queries[0]
    accepted_first = {s["tracking_id"]: s["email_id"] for s in fake_api.sends[:4]}
    for tid in ids[:4]:
        status = get_email_status(tid)
        assert status["smtp2go_message_id"] == accepted_first[tid]
        assert [a["outcome"] for a in status["attempts"]] == ["accepted"]
        assert "settled by reconciliation" in (status["attempts"][0]["error"] or "")
    for tid in ids[4:]:
        assert [a["outcome"] for a in get_email_status(tid)["attempts"]] == ["not_sent", "accepted"]
    assert [len(r["payload"]["emails"]) for r in batch_requests(fake_api)] == [6, 2]


def test_rate_limited_batch_pauses_and_is_sent_later(fake_api: Any, celery_worker: Any) -> None:
    fake_api.script_batch(Scripted.rate_limited(reset_seconds=1))
    ids = stored(3)
    publish(ids)
    assert set(all_final(ids).values()) == {"sent"}
    requests = batch_requests(fake_api)
    assert [r["status"] for r in requests] == [429, 200]
    assert requests[1]["time"] - requests[0]["time"] >= 0.9  # the pause SMTP2Go asked for was kept
    assert all(fake_api.count_for(t) == 1 for t in ids)
    assert [a["outcome"] for a in get_email_status(ids[0])["attempts"]] == ["not_sent", "accepted"]


def test_suppressed_not_due_and_expired_are_handled_per_email(fake_api: Any, celery_worker: Any) -> None:
    from worker.infrastructure.models import Suppression

    ids = stored(4)
    suppressed, later, expired = ids[0], ids[1], ids[2]
    with session_scope() as session:
        session.add(Suppression(address="bulk0@example.com", reason="unsubscribe"))
        session.execute(update(Message).where(Message.id == later).values(
            next_attempt_at=utcnow() + timedelta(hours=1)))
        session.execute(update(Message).where(Message.id == expired).values(
            expires_at=utcnow() - timedelta(seconds=1)))
    publish(ids)
    wait_until(lambda: statuses([ids[3]])[ids[3]] == "sent", message="the due email to be sent")
    wait_until(lambda: statuses([suppressed, expired]) == {suppressed: "suppressed", expired: "expired"},
               message="suppressed and expired emails to be settled")
    assert statuses([later]) == {later: "queued"}  # left for the sweeper at its send time
    assert fake_api.count_for(ids[3]) == 1
    assert all(fake_api.count_for(t) == 0 for t in (suppressed, later, expired))


def test_relay_batch_uses_one_smtp_connection(smtp_sink: Any, celery_worker: Any,
                                              base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("MAIL_PROVIDERS", "smtp")
    reset_settings()
    ids = stored(20)
    publish(ids, size=20)
    assert set(all_final(ids).values()) == {"sent"}
    assert all(smtp_sink.count_for(t) == 1 for t in ids)
    assert smtp_sink.connections == 1


# ------------------------------------------------------------------------------------------ the claim itself


@pytest.mark.parametrize("database", ["db", "sqlite_db"])
def test_claim_batch_takes_due_rows_once(request: pytest.FixtureRequest, database: str) -> None:
    request.getfixturevalue(database)
    from worker.infrastructure.db import get_engine
    from worker.sending import lifecycle

    ids = stored(5)
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == ids[4]).values(
            next_attempt_at=utcnow() + timedelta(hours=1)))
    with get_engine().connect() as first, get_engine().connect() as second:
        leases = lifecycle.claim_batch(first, ids, owner="a", lease_seconds=60)
        first.commit()
        again = lifecycle.claim_batch(second, ids, owner="b", lease_seconds=60)
        second.commit()
        assert [lease.tracking_id for lease in leases] == ids[:4]
        assert again == []
        marks = lifecycle.mark_batch_in_flight(first, leases, "smtp2go", lease_seconds=60)
        assert sorted(marks) == sorted(ids[:4]) and len(set(marks.values())) == 4
    assert statuses(ids) == {**{t: "sending" for t in ids[:4]}, ids[4]: "queued"}
