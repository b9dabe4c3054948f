"""Reconciliation through SMTP2Go's activity search: ambiguous sends are settled without a second send."""

from __future__ import annotations

from typing import Any

from tests.conftest import wait_until
from worker import enqueue_email, get_email_status
from worker.delivery import deliver
from worker.fake_smtp2go import Scripted
from worker.reconcile import reconcile
from worker.sweeper import sweep


def _ambiguous_send(fake_api: Any) -> str:
    fake_api.script(Scripted.slow(3))  # SMTP2GO_TIMEOUT is 2 s in tests: the client gives up, the API accepted
    tid = enqueue_email("amb@example.com", "ambiguous", text_body="x")
    assert deliver(tid, owner="w1").kind == "ambiguous"
    return tid


def test_ambiguous_send_found_in_activity_is_sent_without_resend(fake_api: Any, db: str) -> None:
    tid = _ambiguous_send(fake_api)
    wait_until(lambda: fake_api.count_for(tid) == 1, timeout=10)
    report = reconcile(settle=0, resend_after=600)
    assert report.resolved_sent == 1 and report.requests == 1
    status = get_email_status(tid)
    assert status is not None
    assert status["status"] == "sent" and status["ambiguous"] is False
    assert status["smtp2go_message_id"] == fake_api.sends[0]["email_id"]
    sweep(grace=0)
    assert deliver(tid, owner="w2").kind == "skipped"
    assert fake_api.count_for(tid) == 1
    assert len([r for r in fake_api.requests if r["payload"].get("to")]) == 1


def test_ambiguous_send_not_found_is_released_once_overdue(fake_api: Any, db: str) -> None:
    fake_api.script(Scripted(status=200, body={"request_id": "r-1", "data": {"succeeded": 1}}, accept=False))
    tid = enqueue_email("lost@example.com", "lost", text_body="x")
    assert deliver(tid, owner="w1").kind == "ambiguous"  # a 200 without email_id: never trusted, never resent
    not_yet = reconcile(settle=0, resend_after=600)
    assert not_yet.still_ambiguous == 1 and not_yet.released == 0
    assert deliver(tid, owner="w1").kind == "skipped"
    done = reconcile(settle=0, resend_after=0)
    assert done.released == 1
    assert deliver(tid, owner="w2").kind == "sent"
    assert fake_api.count_for(tid) == 1


def test_webhook_echo_settles_without_an_api_request(fake_api: Any, db: str) -> None:
    from worker.events import process_event

    tid = _ambiguous_send(fake_api)
    wait_until(lambda: fake_api.count_for(tid) == 1, timeout=10)
    email_id = fake_api.sends[0]["email_id"]
    process_event({"event": "delivered", "id": "evt-1", "email_id": email_id, "rcpt": "amb@example.com",
                   "time": "2026-11-20T09:14:05Z", "X-Mailworker-Id": tid})
    report = reconcile(settle=0)
    assert report.resolved_sent == 1 and report.requests == 0
    status = get_email_status(tid)
    assert status is not None and status["smtp2go_message_id"] == email_id
    assert status["status"] == "delivered"


def test_missing_webhooks_are_filled_from_activity(fake_api: Any, db: str) -> None:
    tid = enqueue_email("quiet@example.com", "no webhooks", text_body="x")
    assert deliver(tid, owner="w1").kind == "sent"
    report = reconcile(fill_after=0)
    assert report.filled_events == 1
    status = get_email_status(tid)
    assert status is not None and status["status"] == "delivered"
    assert status["recipients"][0]["status"] == "delivered"
    again = reconcile(fill_after=3600)
    assert again.filled_events == 0 and again.requests == 0  # checked recently: no new request


def test_activity_rate_limit_pauses_the_run(fake_api: Any, db: str) -> None:
    fake_api.activity_rate_per_minute = 1
    a = _ambiguous_send(fake_api)
    b = _ambiguous_send(fake_api)
    report = reconcile(settle=0, resend_after=600)
    assert report.requests == 2  # second answered 429
    assert report.resolved_sent == 1 and report.still_ambiguous == 1
    statuses = {get_email_status(t)["status"] for t in (a, b)}  # type: ignore[index]
    assert statuses == {"sent", "retrying"}
