"""Every page on MariaDB and SQLite: authentication, security headers, what each page shows, the search."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner

from tests.console.conftest import BAD_AUTH, Console, add_attachment, add_event, make_message
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import EventType, MessageStatus, Suppression, utcnow


def test_the_console_refuses_to_start_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from console_app import ConsoleConfigError, create_app

    monkeypatch.delenv("CONSOLE_BASIC_AUTH", raising=False)
    with pytest.raises(ConsoleConfigError, match="CONSOLE_BASIC_AUTH"):
        create_app()
    monkeypatch.setenv("CONSOLE_BASIC_AUTH", "nopassword")
    with pytest.raises(ConsoleConfigError, match="user:password"):
        create_app()


def test_mailworker_console_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.cli import main

    result = CliRunner().invoke(main, ["console", "--port", "1"], env={"CONSOLE_BASIC_AUTH": ""})
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("note:")]
    assert lines == ["Error: CONSOLE_BASIC_AUTH is not set: the console refuses to start without "
                     "CONSOLE_BASIC_AUTH=user:password"]


def test_every_page_is_behind_basic_auth(console: Console) -> None:
    tid = make_message(MessageStatus.FAILED)
    paths = ["/", "/messages", "/messages?q=status:failed", f"/messages/{tid}", f"/messages/{tid}/retry",
             "/suppressions", "/suppressions/release?address=a@example.com", "/audit", "/metrics",
             "/static/console.css"]
    for path in paths:
        for headers in ({}, BAD_AUTH):
            answer = console.client.get(path, headers=headers)
            assert answer.status_code == 401, path
            assert answer.headers["WWW-Authenticate"].startswith("Basic")
            assert tid not in answer.text
        assert console.get(path).status_code in (200, 400), path  # 400: release of an address not suppressed
    assert console.client.post(f"/messages/{tid}/retry", data={"reason": "x"}).status_code == 401


def test_security_headers(console: Console) -> None:
    answer = console.get("/")
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "same-origin"  # no-referrer makes browsers post Origin: null
    assert answer.headers["Cache-Control"] == "no-store"
    assert "<script" not in answer.text


def test_overview_tiles_rates_chart_and_state(console: Console) -> None:
    for _ in range(3):
        make_message(MessageStatus.DELIVERED, email_delivered_at=utcnow())
    make_message(MessageStatus.BOUNCED)
    make_message(MessageStatus.PARKED, ambiguous_since=utcnow())
    make_message(MessageStatus.HELD, held_since=utcnow(), last_error="held: SMTP2Go refused the API key")
    make_message(MessageStatus.FAILED, failed_at=utcnow())
    old = make_message(MessageStatus.QUEUED, queued_at=utcnow() - timedelta(hours=30))
    console.app.extensions["test_protection"].update(breaker="open", problem="API key refused", paused_for=12.0)
    page = console.get("/").text

    def tile(label: str) -> list[str]:
        return re.findall(r'<span class="n">(\d+)</span><span class="l">' + re.escape(label) + "</span>", page)

    assert tile("Delivered") == ["3", "3"]
    assert tile("Parked (waiting for reconciliation)") == ["1", "1"]
    assert tile("Held (operator problem)") == ["1", "1"]
    assert tile("Retrying") == ["0", "0"]
    assert tile("Queued") == ["0", "1"]  # queued 30 h ago: in the week, not the day
    assert tile("Failed") == ["1", "1"]
    # 1 bounce out of 4 sent: 25 % is past the 5 % default threshold -> the warning colour
    assert re.search(r'<div class="rate bad"><span class="n">25.0 %</span> bounced', page)
    assert f"/messages/{old}" in page and "30 h" in page  # the oldest waiting email and its age
    assert 'id="breaker"' in page and ">open<" in page and "API key refused" in page
    assert "12.0 s left" in page
    assert page.count('<rect class="o-delivered"') >= 1 and "<svg" in page


def test_rate_thresholds_are_configurable(console_factory: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_WARN_BOUNCE_ABOVE", "30")  # percent
    console = console_factory()  # type: ignore[operator]
    make_message(MessageStatus.DELIVERED)
    make_message(MessageStatus.BOUNCED)
    make_message(MessageStatus.DELIVERED)
    make_message(MessageStatus.DELIVERED)
    page = console.get("/").text
    assert '<div class="rate "><span class="n">25.0 %</span> bounced' in page


def _ids(page: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r'href="/messages/([0-9a-f-]{36})"', page)))


def test_search_grammar(console: Console) -> None:
    now = utcnow()
    alice = make_message(MessageStatus.DELIVERED, to="alice@example.com", subject="Your password reset",
                         reference="ticket_reply:42", queued_at=now - timedelta(hours=1))
    bob = make_message(MessageStatus.FAILED, to="Bob@Example.com", subject="Welcome", queued_at=now - timedelta(days=2))
    parked = make_message(MessageStatus.PARKED, to="carol@example.com", ambiguous_since=now,
                          queued_at=now - timedelta(minutes=3))
    held = make_message(MessageStatus.HELD, to="dan@example.com", held_since=now,
                        queued_at=now - timedelta(minutes=2))
    cases = {
        "to:alice@example.com": [alice],
        "to:bob@example.com": [bob],
        "Bob@Example.com": [bob],
        "status:failed": [bob],
        "status:parked": [parked],
        "status:held": [held],
        "status:parked,held": [held, parked],
        "reference:ticket_reply:42": [alice],
        f"id:{bob}": [bob],
        bob: [bob],
        "email_id:em-" + alice[:8]: [alice],
        'subject:"password reset"': [alice],
        "welcome": [bob],
        "after:1d": [held, parked, alice],
        "before:1d": [bob],
        "status:delivered to:bob@example.com": [],
        "": [held, parked, alice, bob],
    }
    for text, expected in cases.items():
        answer = console.get("/messages", query_string={"q": text})
        assert answer.status_code == 200, text
        assert _ids(answer.text) == expected, text
    bad = console.get("/messages", query_string={"q": "status:lost"})
    assert "not a status" in bad.text


def test_keyset_pages_newest_first(console_factory: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_PAGE_SIZE", "4")
    console = console_factory()  # type: ignore[operator]
    start = utcnow() - timedelta(hours=1)
    same_time = start + timedelta(minutes=30)
    ids = [make_message(MessageStatus.SENT, queued_at=start + timedelta(minutes=i)) for i in range(7)]
    ids += [make_message(MessageStatus.SENT, queued_at=same_time) for _ in range(3)]  # ties broken by id
    expected = [i for _, i in sorted(((m, i) for m, i in zip(
        [start + timedelta(minutes=i) for i in range(7)] + [same_time] * 3, ids, strict=True)), reverse=True)]
    seen: list[str] = []
    pages = []
    answer = console.get("/messages")
    while True:
        page_ids = _ids(answer.text)
        pages.append(page_ids)
        seen += page_ids
        older = re.search(r'<a href="([^"]+)" rel="next">', answer.text)
        if not older:
            break
        answer = console.get(older.group(1).replace("&amp;", "&"))
    assert seen == expected and [len(p) for p in pages] == [4, 4, 2]
    newer = re.search(r'<a href="([^"]+)" rel="prev">', answer.text)
    assert newer
    back = console.get(newer.group(1).replace("&amp;", "&"))
    assert _ids(back.text) == pages[1]


def test_one_message_tells_its_story(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    monkeypatch.setenv("SMTP2GO_API_KEY", "api-SECRET-KEY-0000000000")
    reset_settings()
    html = '<p>Reset your password</p><script>parent.document.title = "pwned"</script><img src="https://t.example/p.gif">'
    tid = make_message(MessageStatus.BOUNCED, to="alice@example.com", html_body=html, reference="ticket:7",
                       idempotency_key="order-7", fallback_reason="SMTP2Go 500 x3",
                       headers={"X-Campaign": "reset"},
                       last_error="SMTP2Go said: key api-SECRET-KEY-0000000000 refused")
    add_event(tid, EventType.DELIVERED, "alice@example.com", at=utcnow() - timedelta(minutes=2),
              payload={"event": "delivered", "rcpt": "alice@example.com", "email_id": "em-1"})
    add_event(tid, EventType.BOUNCE, "alice@example.com", bounce_type="hard", detail="550 no such user",
              payload={"event": "bounce", "bounce": "hard", "context": "RCPT TO"})
    add_attachment(tid, "invoice.pdf", b"%PDF" + b"0" * 2044)
    with session_scope() as session:
        session.add(Suppression(address="alice@example.com", reason="hard_bounce", source_message_id=tid,
                                created_at=utcnow()))
    page = console.get(f"/messages/{tid}").text
    for text in ("Enqueued", "reference ticket:7", "idempotency key order-7", "Accepted by smtp2go",
                 "fell back to the relay because: SMTP2Go 500 x3", "hard bounce; 550 no such user",
                 "&#34;context&#34;: &#34;RCPT TO&#34;", "X-Campaign", "invoice.pdf", "2,048 bytes",
                 "hard_bounce since", "This message caused 1 suppression(s)", "Release…"):
        assert text in page, text
    assert page.index(">delivered<") < page.index(">bounce<")  # the timeline runs in time order
    assert "api-SECRET-KEY" not in page and "[REDACTED]" in page
    iframe = re.search(r'<iframe class="html-body"[^>]*>', page)
    assert iframe and 'sandbox=""' in iframe.group(0)
    assert "<script>" not in page and "&lt;script&gt;" in iframe.group(0)  # escaped into srcdoc, never inline
    assert console.get("/messages/no-such-id").status_code == 404


def test_suppressions_list_and_search(console: Console) -> None:
    with session_scope() as session:
        for address in ("a@example.com", "b@example.org", "c_d@example.com"):
            session.add(Suppression(address=address, reason="manual", created_at=utcnow()))
    page = console.get("/suppressions").text
    assert all(a in page for a in ("a@example.com", "b@example.org", "c_d@example.com"))
    page = console.get("/suppressions", query_string={"q": "example.org"}).text
    assert "b@example.org" in page and "a@example.com" not in page
