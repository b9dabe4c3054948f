"""One message's page and the action pages tell it straight: causal timeline order, a cancel that is not an error,
no stale notes, clear buttons, every send attempt, one timestamp format everywhere."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.console.conftest import Console, add_event, make_message
from worker.infrastructure import models
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Attempt,
    AttemptOutcome,
    EventType,
    MessageStatus,
    RecipientStatus,
    Suppression,
    utcnow,
)


def _timeline(page: str) -> list[str]:
    block = page[page.index('<ol class="timeline">'):page.index("</ol>")]
    return re.findall(r"<strong>([^<]+)</strong>", block)


def test_the_timeline_runs_in_causal_order_not_by_the_second(console: Console) -> None:
    """A provider stamps its events to the whole second: 'delivered' at 10:00:00 reports on an email enqueued at
    10:00:00.700 and accepted at 10:00:01.200; it is shown after both, and an open of the same second after it."""
    t = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
    tid = make_message(MessageStatus.DELIVERED, queued_at=t + timedelta(milliseconds=700),
                       sent_at=t + timedelta(milliseconds=1200), email_delivered_at=t)
    add_event(tid, EventType.OPEN, "alice@example.com", at=t + timedelta(seconds=1))
    add_event(tid, EventType.DELIVERED, "alice@example.com", at=t)
    add_event(tid, EventType.CLICK, "alice@example.com", at=t + timedelta(seconds=1))
    titles = _timeline(console.get(f"/messages/{tid}").text)
    assert titles == ["Enqueued", "Accepted by smtp2go", "delivered", "open", "click"], titles


def test_a_queued_message_offers_cancel_without_the_stale_note(console: Console) -> None:
    tid = make_message(MessageStatus.QUEUED)
    page = console.get(f"/messages/{tid}").text
    assert f'href="/messages/{tid}/cancel">Cancel…</a>' in page
    assert "Cancel is not offered yet" not in page and "has no <code>cancelled</code> status" not in page


def test_the_confirm_page_says_what_each_button_does(console: Console) -> None:
    tid = make_message(MessageStatus.QUEUED)
    page = console.get(f"/messages/{tid}/cancel").text
    assert '<button type="submit">Cancel this email</button>' in page
    assert re.search(r'<a class="button secondary" href="/messages/[^"]+">Keep it</a>', page)
    assert ">Confirm<" not in page and ">Cancel</a>" not in page
    failed = make_message(MessageStatus.FAILED, failed_at=utcnow())
    assert '<button type="submit">Retry this email</button>' in console.get(f"/messages/{failed}/retry").text


def test_a_cancelled_email_is_not_an_error_and_has_no_future_send_time(console: Console) -> None:
    send_at = utcnow() + timedelta(days=2)
    tid = make_message(MessageStatus.QUEUED, send_at=send_at, next_attempt_at=send_at)
    path = f"/messages/{tid}/cancel"
    done = console.post(path, {"reason": "customer withdrew the order", "csrf_token": console.token(path)})
    assert done.status_code == 303
    page = console.get(f"/messages/{tid}").text
    assert "Last error" not in page and 'class="err"' not in page.split("<h2>Timeline</h2>")[0]
    assert re.search(r"<dt>Cancelled</dt><dd>cancelled from the console by operator: customer withdrew", page)
    titles = _timeline(page)
    assert "Scheduled send time" not in titles and "Cancelled" in titles
    assert titles.index("Enqueued") < titles.index("Cancelled")
    assert f"it was scheduled for {send_at.strftime('%Y-%m-%d %H:%M:%S')} UTC and was never sent" in page
    assert '<span class="badge s-cancelled">cancelled</span>' in page


def test_a_held_message_names_its_state(console: Console) -> None:
    tid = make_message(MessageStatus.HELD, held_since=utcnow(), last_error="held: SMTP2Go refused the API key")
    page = console.get(f"/messages/{tid}").text
    assert '<span class="badge s-held">held</span>' in page and "(an operator problem holds it)" in page
    assert "<dt>Held because</dt>" in page and "Last error" not in page


# ------------------------------------------------------------------------------------------- attempts


def test_the_message_page_lists_every_send_attempt(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    monkeypatch.setenv("SMTP2GO_API_KEY", "api-SECRET-KEY-0000000000")
    reset_settings()
    t = utcnow() - timedelta(minutes=3)
    tid = make_message(MessageStatus.SENT, transport="smtp", queued_at=t,
                       sent_at=t + timedelta(seconds=9))
    rows = [
        dict(provider="smtp2go", outcome=AttemptOutcome.NOT_SENT, started_at=t + timedelta(seconds=1),
             finished_at=t + timedelta(seconds=2),
             error="500 from https://api.smtp2go.com key api-SECRET-KEY-0000000000", latency_ms=1000),
        dict(provider="smtp2go:eu", outcome=AttemptOutcome.REFUSED, started_at=t + timedelta(seconds=4),
             finished_at=t + timedelta(seconds=5), error="E_ApiResponseCodes.API_EXCEPTION", latency_ms=812),
        dict(provider="smtp", outcome=AttemptOutcome.ACCEPTED, started_at=t + timedelta(seconds=8),
             finished_at=t + timedelta(seconds=9), provider_message_id="<relay-42@example.org>", latency_ms=64),
    ]
    with session_scope() as session:
        for row in rows:
            session.add(Attempt(message_id=tid, **row))
    page = console.get(f"/messages/{tid}").text
    table = page[page.index('<table class="list attempts">'):]
    table = table[:table.index("</table>")]
    body = re.findall(r"<tr><td>(\d)</td><td class=\"t\">([^<]+)</td><td>([^<]+)</td>", table)
    assert [(n, provider) for n, _when, provider in body] == [("1", "smtp2go"), ("2", "smtp2go:eu"), ("3", "smtp")]
    assert body[0][1] == (t + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S UTC")
    for text in ("not sent", "refused", "accepted", "1,000 ms", "812 ms", "64 ms", "&lt;relay-42@example.org&gt;",
                 "API_EXCEPTION"):
        assert text in table, text
    assert "api-SECRET-KEY" not in page and "[REDACTED]" in table
    assert "not a row per attempt" not in page and "keeps no row per attempt" not in page


def test_without_an_attempts_table_the_page_says_what_it_keeps(console: Console,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(models, "Attempt", raising=False)
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow(), attempts=4, api_attempts=3, smtp_attempts=1)
    page = console.get(f"/messages/{tid}").text
    assert re.search(r"4 attempt\(s\)( \(SMTP2Go API 3, relay 1\))?; this database keeps no row per attempt", page)


# ------------------------------------------------------------------------------------------ timestamps

_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}| UTC)?")
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")


def test_every_page_shows_times_in_one_format(console: Console) -> None:
    now = utcnow()
    failed = make_message(MessageStatus.FAILED, failed_at=now, last_error="550 mailbox unavailable")
    held = make_message(MessageStatus.HELD, held_since=now, next_attempt_at=now + timedelta(minutes=5),
                        last_error="held: no transport")
    sent = make_message(MessageStatus.DELIVERED, email_delivered_at=now, to="carol@example.com")
    add_event(sent, EventType.DELIVERED, "carol@example.com", at=now)
    with session_scope() as session:
        session.add(Suppression(address="carol@example.com", reason="hard_bounce", source_message_id=sent,
                                created_at=now))
    retry = f"/messages/{failed}/retry"
    console.post(retry, {"reason": "relay fixed", "csrf_token": console.token(retry)})
    pages = ["/", "/messages", f"/messages/{failed}", f"/messages/{held}", f"/messages/{sent}",
             f"/messages/{held}/retry", "/suppressions", "/suppressions/release?address=carol@example.com",
             "/audit"]
    seen = 0
    for path in pages:
        page = console.get(path).text
        page = re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)  # raw provider payloads keep their own format
        page = re.sub(r"(?:after|before):[^<\s]+", "", page)  # the search syntax's examples are input, not output
        for found in _STAMP.finditer(page):
            assert _CANONICAL.fullmatch(found.group(0)), (path, found.group(0))
            seen += 1
    assert seen > 20


def test_suppression_rows_show_the_canonical_time(console: Console) -> None:
    with session_scope() as session:
        session.add(Suppression(address="dan@example.com", reason="manual",
                                created_at=datetime(2026, 11, 20, 9, 30, 5, tzinfo=UTC)))
    assert '<td class="t">2026-11-20 09:30:05 UTC</td>' in console.get("/suppressions").text


def test_recipient_status_cancelled_shows(console: Console) -> None:
    tid = make_message(MessageStatus.CANCELLED, recipient_status=RecipientStatus.CANCELLED,
                       last_error="cancelled by the application")
    page = console.get(f"/messages/{tid}").text
    assert "<dt>Cancelled</dt><dd>cancelled by the application</dd>" in page and "Last error" not in page
