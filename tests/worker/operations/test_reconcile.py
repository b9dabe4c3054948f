"""Reconciliation against SMTP2Go's documented activity search: parked sends are settled from what SMTP2Go
says, released only after a completed negative search, and every failure is reported as what it is.

The SMTP2Go side is the simulator, which answers in the documented shapes (tests/worker/test_fake_smtp2go.py
compares it with fixtures/smtp2go/activity_search.json), so a reconciler that reads our own shapes fails here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import wait_until
from worker import enqueue_email, get_email_status
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.config import reset_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Attempt, AttemptOutcome, Message, MessageStatus, TrackingEvent, utcnow
from worker.operations.reconcile import reconcile
from worker.operations.sweeper import sweep
from worker.sending.delivery import deliver
from worker.tracking.suppressions import add_suppression


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, fake_api: Any) -> Iterator[str]:
    """Both backends: MariaDB and the embedded SQLite default (after fake_api, so its settings are in place)."""
    url = request.getfixturevalue(request.param)
    reset_settings()
    yield url


def _ambiguous_send(fake_api: Any, to: Any = "amb@example.com") -> str:
    """A real send the simulator accepts but answers too late: the client gives up, SMTP2Go has the mail."""
    fake_api.script(Scripted.slow(3))  # SMTP2GO_TIMEOUT is 2 s in tests
    tid = enqueue_email(to, "ambiguous", text_body="x")
    assert deliver(tid, owner="w1").kind == "ambiguous"
    wait_until(lambda: fake_api.count_for(tid) == 1, timeout=10)
    return tid


def _lost_send(fake_api: Any) -> str:
    """A send SMTP2Go did not take, but whose answer (a 200 without email_id) proves nothing: parked."""
    fake_api.script(Scripted(status=200, body={"request_id": "r-1", "data": {"succeeded": 1}}, accept=False))
    tid = enqueue_email("lost@example.com", "lost", text_body="x")
    assert deliver(tid, owner="w1").kind == "ambiguous"
    return tid


def _status(tid: str) -> dict[str, Any]:
    status = get_email_status(tid)
    assert status is not None
    return status


def _parked(tid: str) -> bool:
    status = _status(tid)
    return bool(status["status"] == "parked" and status["ambiguous"])


def test_ambiguous_send_is_settled_sent_with_its_email_id(fake_api: Any, database: str) -> None:
    tid = _ambiguous_send(fake_api)
    report = reconcile(settle=0)
    assert report.resolved_sent == 1 and report.requests == 1 and report.released == 0
    status = _status(tid)
    assert status["status"] == "sent" and status["ambiguous"] is False
    assert status["smtp2go_message_id"] == fake_api.sends[0]["email_id"]
    [query] = fake_api.activity_queries
    assert query["search_recipient"] == "amb@example.com" and query["custom_headers"] == ["X-Mailworker-Id"]
    assert query["start_date"].endswith("Z") and query["end_date"] > query["start_date"]
    sweep(grace=0)
    assert deliver(tid, owner="w2").kind == "skipped"
    assert fake_api.count_for(tid) == 1


def test_match_on_the_second_activity_page(fake_api: Any, database: str) -> None:
    earlier = enqueue_email("amb@example.com", "earlier mail to the same address", text_body="x")
    assert deliver(earlier, owner="w1").kind == "sent"
    tid = _ambiguous_send(fake_api)
    report = reconcile(settle=0, page_size=2)  # 2 events per page: the earlier mail fills page 1
    assert report.resolved_sent == 1 and report.requests == 2
    assert "continue_token" not in fake_api.activity_queries[0]
    assert fake_api.activity_queries[1]["continue_token"]
    assert _status(tid)["smtp2go_message_id"] == fake_api.sends[-1]["email_id"]


def test_window_covers_a_send_long_before_it_was_parked(fake_api: Any, database: str) -> None:
    """A worker that died mid-send can be parked (sweeper, ``requeue``) long after the attempt: the search
    must still cover the attempt, or its negative answer would resend a delivered mail."""
    tid = _ambiguous_send(fake_api)
    fake_api.sends[0]["time"] -= 3 * 3600  # SMTP2Go took it three hours ago ...
    now = utcnow()
    with session_scope() as session:  # ... and the message was parked only now
        session.execute(update(Message).where(Message.id == tid).values(
            queued_at=now - timedelta(hours=3, minutes=1), ambiguous_since=now - timedelta(seconds=1)))
    assert reconcile(settle=0).resolved_sent == 1
    assert _status(tid)["smtp2go_message_id"] == fake_api.sends[0]["email_id"]


def test_search_uses_the_recipient_actually_sent_not_a_suppressed_first_one(fake_api: Any, database: str) -> None:
    with session_scope() as session:
        add_suppression(session, "gone@example.com", "hard_bounce")
    tid = _ambiguous_send(fake_api, to=["gone@example.com", "here@example.com"])
    assert [r for r in fake_api.sends[0]["payload"]["to"]] == ["here@example.com"]
    report = reconcile(settle=0)
    assert report.resolved_sent == 1
    assert [q["search_recipient"] for q in fake_api.activity_queries] == ["here@example.com"]
    assert _status(tid)["status"] == "sent"


def test_negative_search_releases_only_after_reconcile_resend_after(fake_api: Any, database: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tid = _lost_send(fake_api)
    not_yet = reconcile(settle=0)  # RECONCILE_RESEND_AFTER defaults to 600 s: activity may still lag
    assert (not_yet.requests, not_yet.still_ambiguous, not_yet.released) == (1, 1, 0)
    assert _parked(tid) and deliver(tid, owner="w1").kind == "skipped"

    monkeypatch.setenv("RECONCILE_RESEND_AFTER", "0")
    reset_settings()
    done = reconcile(settle=0)
    assert done.released == 1 and done.requests == 1  # a fresh, completed search before the release
    assert "no send with our X-Mailworker-Id" in (_status(tid)["last_error"] or "")
    assert deliver(tid, owner="w2").kind == "sent"
    assert fake_api.count_for(tid) == 1


def _make_module_unusable(problem: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Break SMTP2Go on this (the reconciling) host only; returns words the warning must contain."""
    from worker.infrastructure.crypto import generate_key
    from worker.infrastructure.modules import update_module_settings

    if problem == "no_key":
        monkeypatch.delenv("SMTP2GO_API_KEY")
        reset_settings()
        return "no SMTP2Go API key"
    if problem == "disabled":
        from worker.infrastructure.modules import SMTP2GO, set_module_enabled

        with session_scope() as session:
            set_module_enabled(session, SMTP2GO, False)
        return "disabled"
    monkeypatch.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())  # the key lives in the database ...
    reset_settings()
    with session_scope() as session:
        update_module_settings(session, "smtp2go", {"api_key": "api-test-key-0123456789"})
    monkeypatch.delenv("SETTINGS_ENCRYPTION_KEY")  # ... and this host cannot read it
    reset_settings()
    return "SETTINGS_ENCRYPTION_KEY"


@pytest.mark.parametrize("problem", ["no_key", "disabled", "missing_encryption_key"])
def test_unusable_module_on_this_host_releases_nothing(fake_api: Any, database: str, problem: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    tid = _lost_send(fake_api)
    words = _make_module_unusable(problem, monkeypatch)
    monkeypatch.setenv("RECONCILE_RESEND_AFTER", "0")
    reset_settings()
    with caplog.at_level(logging.WARNING, logger="worker.operations.reconcile"):
        report = reconcile(settle=0)
    assert (report.released, report.held_unusable, report.requests) == (0, 1, 0)
    assert _parked(tid)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "worker.operations.reconcile"]
    assert len(warnings) == 1 and words in warnings[0] and "api-test-key" not in warnings[0]
    assert fake_api.activity_queries == []


def test_activity_500_is_reported_as_a_server_error_and_releases_nothing(fake_api: Any, database: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tid = _lost_send(fake_api)
    monkeypatch.setenv("RECONCILE_RESEND_AFTER", "0")
    reset_settings()
    fake_api.script_activity(Scripted.server_error(500))
    report = reconcile(settle=0)
    assert report.stopped == "server_error" and report.error == "SMTP2Go activity search failed with 500"
    assert (report.released, report.still_ambiguous) == (0, 1) and _parked(tid)
    assert reconcile(settle=0).released == 1  # the next run searches again, completes, and releases


def test_activity_401_is_reported_as_credentials_and_stops_the_run(fake_api: Any, database: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _lost_send(fake_api), _lost_send(fake_api)
    monkeypatch.setenv("RECONCILE_RESEND_AFTER", "0")
    reset_settings()
    fake_api.api_key = "rotated-at-smtp2go"  # our key was revoked
    report = reconcile(settle=0)
    assert report.stopped == "credentials" and report.requests == 1  # one refusal is enough: the run stops
    assert report.error is not None and "refused" in report.error and "api_key=" in report.error
    assert "api-test-key" not in report.error
    assert (report.released, report.still_ambiguous) == (0, 2)
    assert _parked(first) and _parked(second)


def test_activity_rate_limit_is_reported_and_pauses_the_run(fake_api: Any, database: str) -> None:
    fake_api.activity_rate_per_minute = 1
    a = _ambiguous_send(fake_api)
    b = _ambiguous_send(fake_api)
    report = reconcile(settle=0)
    assert report.requests == 2 and report.stopped == "rate_limited" and "rate limited" in (report.error or "")
    assert report.resolved_sent == 1 and report.still_ambiguous == 1
    assert {_status(t)["status"] for t in (a, b)} == {"sent", "parked"}


def test_request_budget_counts_every_page(fake_api: Any, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(3):
        assert deliver(enqueue_email("lost@example.com", f"earlier {n}", text_body="x"), owner="w1").kind == "sent"
    tid = _lost_send(fake_api)
    monkeypatch.setenv("RECONCILE_RESEND_AFTER", "0")
    reset_settings()
    report = reconcile(settle=0, page_size=2, max_requests=2)  # 6 events: 3 pages to be sure
    assert report.stopped == "budget" and report.requests == 2 and report.released == 0 and _parked(tid)
    assert reconcile(settle=0, page_size=2, max_requests=5).released == 1


def test_webhook_echo_settles_without_an_api_request(fake_api: Any, database: str) -> None:
    from worker.tracking.events import process_event

    tid = _ambiguous_send(fake_api)
    email_id = fake_api.sends[0]["email_id"]
    process_event({"event": "delivered", "id": "evt-1", "email_id": email_id, "rcpt": "amb@example.com",
                   "time": "2026-11-20T09:14:05Z", "X-Mailworker-Id": tid})
    report = reconcile(settle=0)
    assert report.resolved_sent == 1 and report.requests == 0
    status = _status(tid)
    assert status["smtp2go_message_id"] == email_id and status["status"] == "delivered"


def _park_smtp(tid: str, seconds_ago: float) -> None:
    """The state the send path leaves when the relay took the DATA and its answer never came."""
    at = utcnow() - timedelta(seconds=seconds_ago)
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(
            status=MessageStatus.PARKED, ambiguous_since=at, provider="smtp", inflight_since=at,
            next_attempt_at=None, last_error="smtp: no answer after DATA"))
        session.add(Attempt(message_id=tid, provider="smtp", started_at=at, outcome=AttemptOutcome.UNKNOWN))


def test_smtp_parked_is_released_only_after_smtp_unknown_resend_after(fake_api: Any, database: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    tid = enqueue_email("relay@example.com", "relay", text_body="x", send_at=utcnow() + timedelta(hours=1))
    _park_smtp(tid, seconds_ago=120)
    early = reconcile(settle=0)  # SMTP_UNKNOWN_RESEND_AFTER defaults to 600 s
    assert (early.released, early.still_ambiguous, early.requests) == (0, 1, 0) and _parked(tid)
    monkeypatch.setenv("SMTP_UNKNOWN_RESEND_AFTER", "60")
    reset_settings()
    with caplog.at_level(logging.WARNING):
        late = reconcile(settle=0)
    assert late.released == 1 and late.requests == 0 and not _parked(tid)
    assert "at least once" in (_status(tid)["last_error"] or "")
    assert any("at least once" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert fake_api.activity_queries == []  # no API can tell: none was asked


def test_missing_webhooks_are_filled_from_activity(fake_api: Any, database: str) -> None:
    tid = enqueue_email("quiet@example.com", "no webhooks", text_body="x")
    assert deliver(tid, owner="w1").kind == "sent"
    report = reconcile(fill_after=0)
    assert report.filled_events == 1
    [query] = fake_api.activity_queries
    assert query["search_email_id"] == _status(tid)["smtp2go_message_id"]  # one id, as documented
    status = _status(tid)
    assert status["status"] == "delivered" and status["recipients"][0]["status"] == "delivered"
    again = reconcile(fill_after=3600)
    assert again.filled_events == 0 and again.requests == 0  # checked recently: no new request


def test_filled_hard_bounce_keeps_smtp2go_detail(fake_api: Any, database: str) -> None:
    fake_api.activity_events = ("processed",)
    tid = enqueue_email("gone@example.com", "bounces", text_body="x")
    assert deliver(tid, owner="w1").kind == "sent"
    email_id = _status(tid)["smtp2go_message_id"]
    fake_api.add_activity(email_id, "hard-bounced", "gone@example.com",
                          smtp_response="550 5.1.1 <gone@example.com>: User unknown")
    report = reconcile(fill_after=0)
    assert report.filled_events == 1
    recipient = _status(tid)["recipients"][0]
    assert recipient["status"] == "bounced" and recipient["bounce_type"] == "hard"
    with session_scope() as session:
        event = session.scalars(select(TrackingEvent).where(TrackingEvent.message_id == tid)).one()
        assert event.provider_event_id == f"activity:{email_id}:hard-bounced:gone@example.com"
        assert event.detail is not None and "User unknown" in event.detail
        assert (event.smtp2go_data or {}).get("source") == "activity_search"
    assert reconcile(fill_after=0).filled_events == 0  # the same event again is a duplicate
