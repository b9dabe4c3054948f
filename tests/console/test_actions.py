"""Actions: CSRF enforced, a reason required, the lifecycle's transitions used, the audit row written and shown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.console.conftest import Console, make_message
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    AuditEntry,
    Message,
    MessageStatus,
    RecipientStatus,
    Suppression,
    utcnow,
)


def _message(tid: str) -> Message:
    with session_scope() as session:
        m = session.get(Message, tid)
        assert m is not None
        session.expunge(m)
        return m


def _audit() -> list[AuditEntry]:
    with session_scope() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        for row in rows:
            session.expunge(row)
        return rows


def test_forms_without_a_valid_csrf_token_change_nothing(console: Console) -> None:
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    path = f"/messages/{tid}/retry"
    token = console.token(path)
    assert console.post(path, {"reason": "customer asked"}).status_code == 400
    assert console.post(path, {"reason": "customer asked", "csrf_token": token + "x"}).status_code == 400
    assert console.post(path, {"reason": "customer asked", "csrf_token": "forged"}).status_code == 400
    cross = console.post(path, {"reason": "customer asked", "csrf_token": token},
                         headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert console.post("/suppressions", {"address": "x@example.com", "reason": "r"}).status_code == 400
    assert console.post("/suppressions/release", {"address": "x@example.com", "reason": "r"}).status_code == 400
    assert _message(tid).status == MessageStatus.FAILED and console.published == [] and _audit() == []


def test_a_token_signed_with_another_key_is_refused(console_factory: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_SECRET_KEY", "key of another deployment")
    other = console_factory()  # type: ignore[operator]
    monkeypatch.setenv("CONSOLE_SECRET_KEY", "our key, long enough to sign with")
    console = console_factory()  # type: ignore[operator]
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    token = other.token(f"/messages/{tid}/retry")
    assert console.post(f"/messages/{tid}/retry", {"reason": "r", "csrf_token": token}).status_code == 400


def test_retry_a_failed_message(console: Console) -> None:
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow(), last_error="550 relay refused",
                       attempts=9, api_abandoned=True)
    path = f"/messages/{tid}/retry"
    confirm = console.get(path).text
    assert "status: failed -&gt; queued" in confirm and "alice@example.com" in confirm  # what it will change
    token = console.token(path)
    empty = console.post(path, {"reason": "  ", "csrf_token": token})
    assert empty.status_code == 400 and "a reason is required" in empty.text
    assert _message(tid).status == MessageStatus.FAILED and _audit() == []

    done = console.post(path, {"reason": "relay fixed, ticket 123", "csrf_token": token})
    assert done.status_code == 303
    m = _message(tid)
    assert m.status == MessageStatus.QUEUED and m.attempts == 0 and m.failed_at is None
    assert "retried from the console by operator: relay fixed, ticket 123" in (m.last_error or "")
    with session_scope() as session:
        statuses = [r.status for r in session.get(Message, tid).recipients]  # type: ignore[union-attr]
    assert statuses == [RecipientStatus.QUEUED]
    assert console.published == [tid]
    (entry,) = _audit()
    assert (entry.actor, entry.action, entry.message_id, entry.reason, entry.outcome) == (
        "operator", "retry", tid, "relay fixed, ticket 123", "requeued")
    assert entry.changes
    assert entry.changes["before"]["status"] == "failed" and entry.changes["after"]["status"] == "queued"
    page = console.get(done.headers["Location"]).text
    assert "Done: retry: requeued" in page and "relay fixed, ticket 123" in page and "Operator operator: retry" in page


def test_retry_a_held_message_makes_it_due_now(console: Console) -> None:
    tid = make_message(MessageStatus.HELD, held_since=utcnow() - timedelta(minutes=5),
                       next_attempt_at=utcnow() + timedelta(minutes=10), last_error="held: API key refused")
    path = f"/messages/{tid}/retry"
    assert "next attempt: now" in console.get(path).text
    assert console.post(path, {"reason": "new key set", "csrf_token": console.token(path)}).status_code == 303
    m = _message(tid)
    assert m.status == MessageStatus.HELD and m.next_attempt_at is None
    assert console.published == [tid] and _audit()[0].outcome == "requeued"


@pytest.mark.parametrize("status, extra", [
    (MessageStatus.PARKED, {"ambiguous_since": True}),
    (MessageStatus.DELIVERED, {}),
    (MessageStatus.QUEUED, {}),
])
def test_parked_and_other_messages_are_never_resent_from_the_console(console: Console, status: MessageStatus,
                                                                     extra: dict[str, object]) -> None:
    values: dict[str, Any] = {"ambiguous_since": utcnow()} if extra else {}
    tid = make_message(status, **values)
    path = f"/messages/{tid}/retry"
    confirm = console.get(path).text
    assert "Not possible" in confirm and "Retry…" not in console.get(f"/messages/{tid}").text
    token = console.token("/suppressions")  # any page's token: the form is not offered, post anyway
    answer = console.post(path, {"reason": "just do it", "csrf_token": token})
    assert answer.status_code == 303
    assert _message(tid).status == status and console.published == []
    (entry,) = _audit()
    assert entry.outcome.startswith("refused:")
    if extra:
        assert "parked" in entry.outcome and _message(tid).ambiguous_since is not None


def test_add_search_and_release_a_suppression(console: Console) -> None:
    token = console.token("/suppressions")
    bad = console.post("/suppressions", {"address": "not an address", "reason": "r", "csrf_token": token})
    assert bad.status_code == 400 and "address" in bad.text
    added = console.post("/suppressions", {"address": "Mallory@Example.com", "kind": "manual",
                                           "reason": "asked us by phone", "csrf_token": token})
    assert added.status_code == 303
    with session_scope() as session:
        reason = session.scalar(select(Suppression.reason).where(Suppression.address == "mallory@example.com"))
    assert reason == "manual"
    tid = make_message(MessageStatus.SUPPRESSED, to="mallory@example.com")
    page = console.get(f"/messages/{tid}").text
    assert "manual since" in page
    release = f"/suppressions/release?address=mallory@example.com&message={tid}"
    confirm = console.get(release).text
    assert "comes off the suppression list" in confirm
    done = console.post("/suppressions/release", {"address": "mallory@example.com", "message": tid,
                                                   "reason": "customer confirmed the address",
                                                   "csrf_token": console.token(release)})
    assert done.status_code == 303 and f"/messages/{tid}" in done.headers["Location"]
    with session_scope() as session:
        assert session.scalar(select(Suppression.id).where(Suppression.address == "mallory@example.com")) is None
    entries = _audit()
    assert [(e.action, e.target, e.outcome) for e in entries] == [
        ("add suppression", "mallory@example.com", "suppressed"),
        ("release suppression", "mallory@example.com", "released")]
    assert entries[1].message_id == tid and entries[1].changes and entries[1].changes["removed"]["reason"] == "manual"
    assert "customer confirmed the address" in console.get(f"/messages/{tid}").text
    assert "customer confirmed the address" in console.get("/audit").text
    again = console.post("/suppressions/release", {"address": "mallory@example.com", "reason": "r",
                                                    "csrf_token": console.token("/suppressions")})
    assert again.status_code == 400 and "not on the suppression list" in again.text


def test_cancel_a_queued_message_through_the_lifecycle_with_an_audit_row(console: Console) -> None:
    tid = make_message(MessageStatus.QUEUED)
    path = f"/messages/{tid}/cancel"
    confirm = console.get(path).text
    assert "status: queued -&gt; cancelled" in confirm and "alice@example.com" in confirm
    done = console.post(path, {"reason": "customer withdrew the order", "csrf_token": console.token(path)})
    assert done.status_code == 303
    m = _message(tid)
    assert m.status == MessageStatus.CANCELLED and "customer withdrew the order" in (m.last_error or "")
    (entry,) = _audit()
    assert (entry.action, entry.outcome, entry.reason) == ("cancel", "cancelled", "customer withdrew the order")
    assert console.published == []
    assert "Done: cancel: cancelled" in console.get(done.headers["Location"]).text


def test_cancel_is_refused_once_a_transport_may_have_it(console: Console) -> None:
    tid = make_message(MessageStatus.PARKED, ambiguous_since=utcnow())
    path = f"/messages/{tid}/cancel"
    page = console.get(path).text
    assert "too late" in page and 'name="csrf_token"' not in page  # no form to submit
    from console_app import actions  # a request forged past the page is refused by the action itself

    assert actions.cancel(tid, actor="operator", reason="please stop it").startswith("refused")
    assert _message(tid).status == MessageStatus.PARKED
    (entry,) = _audit()
    assert entry.action == "cancel" and entry.outcome.startswith("refused: a transport may already have it")
