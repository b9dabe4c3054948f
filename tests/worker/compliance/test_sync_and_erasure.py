"""Suppressions in sync with SMTP2Go (the fake over HTTP: paged pull, push, release, permission denied), erasure
(stats unchanged, the address gone, its suppression kept as a hash that the send path still matches) and the
retention tiers of the purge. MariaDB and SQLite."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

SECRET = "test-unsubscribe-secret-0123456789"


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, base_env: pytest.MonkeyPatch) -> str:
    base_env.setenv("UNSUBSCRIBE_SECRET", SECRET)
    return str(request.getfixturevalue(request.param))


def _suppressions() -> dict[tuple[str, str], Any]:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Suppression

    with session_scope() as session:
        return {(s.address, s.scope): (s.reason, s.origin, s.pushed_at is not None)
                for s in session.scalars(select(Suppression))}


def test_sync_pulls_pages_and_pushes_global_entries(database: str, fake_api: Any) -> None:
    from worker.cli.main import main
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import add_suppression

    fake_api.suppression_page_size = 1  # three pages: continue_token is followed
    fake_api.suppress("angry@example.net", "spam")
    fake_api.suppress("temp@example.com", "manual", "No longer a customer.")
    fake_api.suppress("gone@example.com", "bounce")
    with session_scope() as session:
        add_suppression(session, "bounced@example.org", "hard_bounce")
        add_suppression(session, "left@example.org", "unsubscribe", list_id="news")
    result = CliRunner().invoke(main, ["suppressions", "sync"])
    assert result.exit_code == 0, result.output
    assert "pulled from SMTP2Go: 3" in result.output and "pushed to SMTP2Go: 1" in result.output
    rows = _suppressions()
    assert rows[("angry@example.net", "")] == ("spam_complaint", "smtp2go", True)
    assert rows[("gone@example.com", "")][0] == "hard_bounce"
    assert rows[("left@example.org", "news")][2] is False  # a list's unsubscribe is never pushed
    assert "bounced@example.org" in fake_api.suppressions and "left@example.org" not in fake_api.suppressions
    views = [p for path, p in fake_api.suppression_requests if path == "/suppression/view"]
    assert len(views) == 3 and views[1]["continue_token"] == "1"
    again = CliRunner().invoke(main, ["suppressions", "sync", "--json"])  # nothing moves the second time
    assert '"pulled": []' in again.output and '"pushed": []' in again.output


def test_release_lifts_both_lists(database: str, fake_api: Any) -> None:
    from worker.cli.main import main
    from worker.compliance.sync import sync

    fake_api.suppress("temp@example.com", "manual")
    sync()
    result = CliRunner().invoke(main, ["suppressions", "remove", "temp@example.com"])
    assert result.exit_code == 0, result.output
    assert "released on SMTP2Go too" in result.output
    assert "temp@example.com" not in fake_api.suppressions and not _suppressions()
    assert ("/suppression/remove", {"email_address": "temp@example.com",
                                    "reasons": ["manual", "spam", "unsubscribe", "bounce", "compliance"]}) \
        in fake_api.suppression_requests


def test_permission_denied_is_reported_once_and_mail_goes_on(database: str, fake_api: Any, redis_client: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from worker.api.enqueue import enqueue_email
    from worker.compliance.sync import last_status, sync
    from worker.sending.delivery import deliver

    fake_api.suppression_denied = True
    with caplog.at_level(logging.WARNING, logger="worker.compliance.sync"):
        first, second = sync(), sync()
    assert first.state == second.state == "permission_denied"
    assert sum("ENDPOINT_PERMISSION_DENIED" in r.getMessage() for r in caplog.records) == 1
    status = last_status()
    assert status is not None and "ENDPOINT_PERMISSION_DENIED" in status["note"]
    assert deliver(enqueue_email("ok@example.com", "hi", text_body="x"), owner="t").kind == "sent"


def _one_message(to: list[str], **extra: Any) -> str:
    from worker.api.enqueue import enqueue_email

    return str(enqueue_email(to, "Secret subject", text_body="Hello",
                             attachments=[("a.txt", b"private", "text/plain")], **extra))


def test_erase_removes_the_address_and_keeps_counts(database: str, fake_api: Any) -> None:
    from worker.cli.main import main
    from worker.compliance.keys import address_hash
    from worker.infrastructure.db import get_engine, session_scope
    from worker.infrastructure.models import Attachment, AuditEntry, Message, Recipient, TrackingEvent
    from worker.sending.delivery import deliver
    from worker.tracking.events import process_event
    from worker.tracking.stats import get_email_stats
    from worker.tracking.suppressions import add_suppression

    alone = _one_message(["Alice@Example.com"])
    shared = _one_message(["alice@example.com", "bob@example.com"])
    for tracking_id in (alone, shared):
        assert deliver(tracking_id, owner="t").kind == "sent"
    email_id = fake_api.sends[0]["email_id"]
    process_event({"event": "spam", "id": "sp-1", "email_id": email_id, "time": "2026-11-21T15:40:00Z",
                   "rcpt": "alice@example.com"})
    with session_scope() as session:
        add_suppression(session, "alice@example.com", "manual")  # kept (complaint came first): still one row
        session.add(AuditEntry(actor="op", action="add suppression", target="alice@example.com",
                               reason="asked by alice@example.com", outcome="suppressed"))
    before = get_email_stats()
    result = CliRunner().invoke(main, ["erase", "alice@example.com", "--yes"])
    assert result.exit_code == 0, result.output
    hashed = address_hash("alice@example.com")
    assert get_email_stats() == before
    with get_engine().connect() as conn:
        dump = " ".join(str(row) for table in ("messages", "recipients", "attachments", "tracking_events",
                                               "status_events", "audit_log", "suppressions", "attempts")
                        for row in conn.execute(text(f"SELECT * FROM {table}")))  # noqa: S608 - fixed names
    assert "alice@example.com" not in dump.lower(), [w for w in dump.split(", ") if "alice@" in w.lower()]
    with session_scope() as session:
        scrubbed = session.get(Message, alone)
        assert scrubbed is not None and scrubbed.text_body is None and scrubbed.subject is None
        assert session.scalar(select(Attachment.id).where(Attachment.message_id == alone)) is None
        kept = session.get(Message, shared)
        assert kept is not None and kept.text_body is not None  # bob's copy stays
        assert session.scalar(select(Attachment.id).where(Attachment.message_id == shared)) is not None
        assert sorted(session.scalars(select(Recipient.address).where(Recipient.message_id == shared))) == \
            sorted(["bob@example.com", hashed])
        event = session.scalar(select(TrackingEvent))
        assert event is not None and event.recipient == hashed and event.smtp2go_data is None
    assert (hashed, "") in _suppressions()
    again = _one_message(["alice@example.com", "carol@example.com"])  # the hash still suppresses her
    deliver(again, owner="t")
    with session_scope() as session:
        statuses = {row.address: row.status for row in session.execute(
            select(Recipient.address, Recipient.status).where(Recipient.message_id == again))}
    assert statuses["alice@example.com"].value == "suppressed" and statuses["carol@example.com"].value != "suppressed"


def test_erase_refuses_bad_input(database: str) -> None:
    from worker.cli.main import main

    result = CliRunner().invoke(main, ["erase", "not an address", "--yes"])
    assert result.exit_code != 0 and "address" in result.output


def test_retention_tiers(database: str) -> None:
    from worker.infrastructure.db import get_engine, session_scope
    from worker.infrastructure.models import Message, TrackingEvent, utcnow
    from worker.operations.maintenance import purge

    old = _one_message(["x@example.com"])
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET status = 'sent', queued_at = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(days=40), "i": old})
    with session_scope() as session:
        session.add(TrackingEvent(provider_event_id="ev-40", event_type="delivered", recipient="x@example.com",
                                  occurred_at=utcnow() - timedelta(days=40), message_id=old))
    result = purge(timedelta(days=90), body_older_than=timedelta(days=30))
    assert result.messages == 1 and result.attachments == 1 and result.events == 0
    with session_scope() as session:
        message = session.get(Message, old)
        assert message is not None and message.text_body is None
        assert session.scalar(select(TrackingEvent.id)) is not None  # the rest stays until RETENTION_DAYS
