"""SMTP2Go event processing against real MariaDB (and SQLite): every fixture payload, idempotency, ordering,
orphans, linking, suppressions and concurrent workers."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import func, select, update

from tests.conftest import FIXTURES_DIR
from tests.threads import run_threads
from worker.api.enqueue import get_email_status
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    EventType,
    Message,
    MessageStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Suppression,
    TrackingEvent,
    Transport,
)
from worker.providers.smtp2go.webhooks import EVENT_MAP, parse_time
from worker.providers.smtp2go.webhooks import normalise_webhook as normalize_event
from worker.tracking.events import link_orphan_events, link_pending_events, process_event
from worker.tracking.suppressions import is_suppressed

FIXTURES = FIXTURES_DIR

EMAIL_ID = "1t9QkX-4Rb2Wm8YzK-Q7aP"  # delivered/open/click/spam/hard bounce/processed fixtures
SOFT_ID = "1t9QmC-2Kd8Lp5WxN-S3eH"  # soft bounce (carol) and unsubscribe (dave)
REJECT_ID = "1t9QnD-9Fj4Rt6ZyP-T2fK"  # reject (erin)


def fixture(name: str) -> dict[str, Any]:
    raw = (FIXTURES / name).read_text()
    if name.endswith(".form"):
        return dict(parse_qsl(raw.strip(), keep_blank_values=True))
    data: dict[str, Any] = json.loads(raw)
    return data


def make_message(*addresses: str, smtp2go_id: str | None = EMAIL_ID,
                 status: MessageStatus = MessageStatus.SENT) -> str:
    """A message as the send path leaves it: accepted by SMTP2Go, every recipient ``sent``."""
    tracking_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    sent = status not in (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.RETRYING)
    with session_scope() as session:
        message = Message(id=tracking_id, status=status, transport=Transport.SMTP2GO if sent else None,
                          sender="support@example.org", subject="Your ticket #1042", text_body="hi",
                          smtp2go_message_id=smtp2go_id, message_id_header=f"<{tracking_id}@example.org>",
                          queued_at=now, sent_at=now if sent else None)
        for addr in addresses:
            message.recipients.append(Recipient(
                address=addr, kind=RecipientKind.TO, open_count=0, click_count=0,
                status=RecipientStatus.SENT if sent else RecipientStatus.QUEUED, sent_at=now if sent else None))
        session.add(message)
    return tracking_id


def status_of(tracking_id: str) -> dict[str, Any]:
    status = get_email_status(tracking_id)
    assert status is not None
    return status


def rcpt(status: dict[str, Any], address: str) -> dict[str, Any]:
    return next(r for r in status["recipients"] if r["address"] == address)


def variant(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**payload, **changes}


def event_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count(TrackingEvent.id))) or 0)


# --------------------------------------------------------------------------------------------- normalising


def test_normalize_every_fixture() -> None:
    expected = {
        "webhook_delivered.json": (EventType.DELIVERED, "alice@example.com", "2026-11-20T09:14:05+00:00"),
        "webhook_delivered.form": (EventType.DELIVERED, "alice@example.com", "2026-11-20T09:14:05+00:00"),
        "webhook_open.json": (EventType.OPEN, "alice@example.com", "2026-11-20T09:31:18+00:00"),
        "webhook_click.json": (EventType.CLICK, "alice@example.com", "2026-11-20T09:32:02+00:00"),
        "webhook_bounce_hard.json": (EventType.BOUNCE, "bob@example.net", "2026-11-20T09:14:07+00:00"),
        "webhook_bounce_soft.json": (EventType.BOUNCE, "carol@example.com", "2026-11-20T10:02:41+00:00"),
        "webhook_spam.json": (EventType.SPAM, "alice@example.com", "2026-11-21T14:05:09+00:00"),
        "webhook_unsubscribe.json": (EventType.UNSUBSCRIBE, "dave@example.com", "2026-11-21T15:40:00+00:00"),
        "webhook_reject.json": (EventType.REJECT, "erin@example.com", "2026-11-21T16:00:12+00:00"),
        "webhook_processed.json": (EventType.PROCESSED, None, "2026-11-20T09:14:02+00:00"),
    }
    for name, (kind, recipient, when) in expected.items():
        ev = normalize_event(fixture(name))
        assert (ev.event_type, ev.recipient, ev.occurred_at.isoformat()) == (kind, recipient, when), name
        assert ev.provider_event_id == fixture(name)["id"]
        assert ev.time_source == "time"
    assert normalize_event(fixture("webhook_bounce_hard.json")).bounce_type == "hard"
    assert normalize_event(fixture("webhook_bounce_soft.json")).bounce_type == "soft"
    processed = normalize_event(fixture("webhook_processed.json"))
    assert processed.recipients == ("alice@example.com", "bob@example.net")
    assert processed.message_id_header == "<E1t9QkX-4Rb2Wm8YzK-Q7aP@message-id.smtpcorp.com>"
    click = normalize_event(fixture("webhook_click.json"))
    assert click.url == "https://portal.example.org/tickets/1042"
    assert (click.user_agent or "").startswith("Mozilla")
    form = normalize_event(fixture("webhook_delivered.form"))
    as_json = normalize_event(fixture("webhook_delivered.json"))
    assert form.message_id_header == "<E1t9QkX-4Rb2Wm8YzK-Q7aP@message-id.smtpcorp.com>"
    # The same delivery in either output format (the fixtures carry different event ids).
    assert replace(form, message_id_header=None, provider_event_id=as_json.provider_event_id) == as_json


def test_event_map_aliases_and_unknown() -> None:
    for name, kind in {"open": "open", "opened": "open", "click": "click", "clicked": "click", "spam": "spam",
                       "spam_complaint": "spam", "unsubscribe": "unsubscribe", "unsubscribed": "unsubscribe",
                       "resubscribe": "resubscribe", "reject": "reject", "processed": "processed",
                       "delivered": "delivered", "bounce": "bounce"}.items():
        assert EVENT_MAP[name] == kind
        assert normalize_event({"event": name.upper(), "id": "x"}).event_type == kind
    ev = normalize_event({"event": "deferred", "id": "x"})
    assert (ev.event_type, ev.raw_event) == (EventType.UNKNOWN, "deferred")


@pytest.mark.parametrize(("raw", "expected"), [
    ("2026-11-20T09:14:05Z", "2026-11-20T09:14:05+00:00"),
    ("2026-11-20T11:14:05+02:00", "2026-11-20T09:14:05+00:00"),
    ("2026-11-20T09:14:02.118204+00:00", "2026-11-20T09:14:02.118204+00:00"),
    ("2026-11-20 09:14:05", "2026-11-20T09:14:05+00:00"),
    (1795166045, "2026-11-20T09:14:05+00:00"),
    ("1795166045", "2026-11-20T09:14:05+00:00"),
    (["1795166045"], "2026-11-20T09:14:05+00:00"),
    ("Fri, 20 Nov 2026 09:14:05 +0000", "2026-11-20T09:14:05+00:00"),
    ("yesterday", None),
    ("", None),
    (None, None),
])
def test_parse_time(raw: Any, expected: str | None) -> None:
    parsed = parse_time(raw)
    assert (parsed.isoformat() if parsed else None) == expected


def test_time_falls_back_to_sendtime_then_now() -> None:
    ev = normalize_event({"event": "delivered", "id": "a", "time": "garbage",
                          "sendtime": "2026-11-20T09:14:02.118204+00:00"})
    assert ev.time_source == "sendtime" and ev.occurred_at.isoformat() == "2026-11-20T09:14:02.118204+00:00"
    before = datetime.now(UTC)
    ev = normalize_event({"event": "delivered", "id": "b"})
    assert ev.time_source == "received" and before <= ev.occurred_at <= datetime.now(UTC)


def test_dedup_key_without_id_is_stable_and_distinct() -> None:
    base = {"event": "open", "email_id": EMAIL_ID, "rcpt": "alice@example.com", "time": "2026-11-20T09:31:18Z"}
    key = normalize_event(base).provider_event_id
    assert key.startswith("sha256:") and len(key) == 71
    assert normalize_event(dict(base)).provider_event_id == key
    assert normalize_event({**base, "rcpt": "ALICE@example.com"}).provider_event_id == key
    assert normalize_event({**base, "event": "opened"}).provider_event_id == key
    assert normalize_event({**base, "time": "2026-11-20T09:31:19Z"}).provider_event_id != key
    assert normalize_event({**base, "rcpt": "bob@example.net"}).provider_event_id != key


def test_form_lists_recipient_strings_and_tracking_header() -> None:
    ev = normalize_event({"event": ["delivered"], "id": ["e1"], "email_id": [EMAIL_ID],
                          "rcpt": ["Alice <Alice@Example.com>"], "time": ["1795166045"]})
    assert (ev.event_type, ev.provider_event_id, ev.email_id, ev.recipient) == (
        EventType.DELIVERED, "e1", EMAIL_ID, "alice@example.com")
    assert normalize_event({"event": "processed", "recipients": "a@x.org, b@y.org"}).recipients == (
        "a@x.org", "b@y.org")
    tid = str(uuid.uuid4())
    for payload in ({"X-Mailworker-Id": tid}, {"x-mailworker-id": [tid]},
                    {"custom_headers": [{"header": "X-Mailworker-Id", "value": tid}]},
                    {"headers": {"X-MAILWORKER-ID": tid}},
                    {"headers": json.dumps([{"name": "x-mailworker-id", "value": tid}])},
                    {"headers": [f"X-Mailworker-Id: {tid}"]}):
        assert normalize_event({"event": "open", **payload}).tracking_ref == tid, payload


def test_bounce_type_inferred_from_smtp_code_else_unknown() -> None:
    assert normalize_event({"event": "bounce", "message": "550 5.1.1 no such user"}).bounce_type == "hard"
    assert normalize_event({"event": "bounce", "message": "452 4.2.2 Mailbox full"}).bounce_type == "soft"
    assert normalize_event({"event": "bounce", "message": "mailbox unavailable"}).bounce_type is None


# --------------------------------------------------------------------------------------------- applying (MariaDB)


@pytest.mark.parametrize("name", ["webhook_delivered.json", "webhook_delivered.form"])
def test_delivered_uses_the_events_own_time(db: str, name: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    result = process_event(fixture(name))
    assert result["status"] == "applied" and result["message_id"] == tid
    status = status_of(tid)
    assert status["status"] == "delivered"
    assert status["delivered_at"] == "2026-11-20T09:14:05+00:00"
    alice, bob = rcpt(status, "alice@example.com"), rcpt(status, "bob@example.net")
    assert (alice["status"], alice["delivered_at"]) == ("delivered", "2026-11-20T09:14:05+00:00")
    assert bob["status"] == "sent"
    assert status["events"] == [{"type": "delivered", "recipient": "alice@example.com",
                                 "occurred_at": "2026-11-20T09:14:05+00:00", "bounce_type": None, "url": None,
                                 "detail": "250 2.0.0 Ok: queued as 4Xk2pQ (Unavailable; "
                                           "mx1.example.com [203.0.113.25])"}]
    with session_scope() as session:
        row = session.scalars(select(TrackingEvent)).one()
        assert row.smtp2go_data is not None and row.smtp2go_data["email_id"] == EMAIL_ID
        assert row.applied_at is not None and row.smtp2go_message_id == EMAIL_ID


def test_hard_bounce_bounces_and_suppresses(db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    process_event(fixture("webhook_delivered.json"))
    result = process_event(fixture("webhook_bounce_hard.json"))
    assert result["suppression"] == "suppressed"
    status = status_of(tid)
    bob = rcpt(status, "bob@example.net")
    assert (bob["status"], bob["bounce_type"], bob["bounced_at"]) == ("bounced", "hard", "2026-11-20T09:14:07+00:00")
    assert "User unknown" in bob["error"]
    assert status["status"] == "bounced" and status["bounced_at"] == "2026-11-20T09:14:07+00:00"
    assert rcpt(status, "alice@example.com")["status"] == "delivered"
    with session_scope() as session:
        sup = session.scalars(select(Suppression)).one()
        assert (sup.address, sup.reason, sup.source_message_id) == ("bob@example.net", "hard_bounce", tid)
        assert sup.detail and "User unknown" in sup.detail


def test_soft_bounce_does_not_suppress_and_a_later_delivery_wins(db: str) -> None:
    tid = make_message("carol@example.com", smtp2go_id=SOFT_ID)
    assert "suppression" not in process_event(fixture("webhook_bounce_soft.json"))
    status = status_of(tid)
    carol = rcpt(status, "carol@example.com")
    assert (carol["status"], carol["bounce_type"]) == ("bounced", "soft")
    assert status["status"] == "bounced"  # every recipient bounced
    with session_scope() as session:
        assert not is_suppressed(session, "carol@example.com")
    process_event({"event": "delivered", "id": "late-delivery", "email_id": SOFT_ID,
                   "rcpt": "carol@example.com", "time": "2026-11-20T11:00:00Z"})
    status = status_of(tid)
    carol = rcpt(status, "carol@example.com")
    assert (status["status"], carol["status"], carol["bounce_type"], carol["error"]) == (
        "delivered", "delivered", "soft", None)


def test_spam_complaint_complains_and_suppresses(db: str) -> None:
    tid = make_message("alice@example.com")
    process_event(fixture("webhook_delivered.json"))
    process_event(fixture("webhook_spam.json"))
    status = status_of(tid)
    assert status["status"] == "complained" and status["complained_at"] == "2026-11-21T14:05:09+00:00"
    assert rcpt(status, "alice@example.com")["status"] == "complained"
    with session_scope() as session:
        assert session.scalars(select(Suppression.reason)).one() == "spam_complaint"


def test_unsubscribe_suppresses_resubscribe_removes(db: str) -> None:
    tid = make_message("dave@example.com", smtp2go_id=SOFT_ID)
    assert process_event(fixture("webhook_unsubscribe.json"))["suppression"] == "suppressed"
    status = status_of(tid)
    assert status["status"] == "sent" and rcpt(status, "dave@example.com")["status"] == "sent"
    with session_scope() as session:
        recipient = session.scalars(select(Recipient)).one()
        assert recipient.unsubscribed_at == datetime(2026, 11, 21, 15, 40, tzinfo=UTC)
        assert is_suppressed(session, "Dave@Example.com")
    resub = variant(fixture("webhook_unsubscribe.json"), event="resubscribe", id="resub-1",
                    time="2026-11-22T08:00:00Z")
    assert process_event(resub)["suppression"] == "unsuppressed"
    with session_scope() as session:
        assert not is_suppressed(session, "dave@example.com")
    assert status_of(tid)["status"] == "sent"


def test_out_of_order_unsubscribe_after_newer_resubscribe_does_not_suppress(db: str) -> None:
    make_message("dave@example.com", smtp2go_id=SOFT_ID)
    resub = variant(fixture("webhook_unsubscribe.json"), event="resubscribe", id="resub-1",
                    time="2026-11-22T08:00:00Z")
    process_event(resub)
    assert "suppression" not in process_event(fixture("webhook_unsubscribe.json"))  # older: 2026-11-21
    with session_scope() as session:
        assert not is_suppressed(session, "dave@example.com")


def _suppression_row(address: str) -> tuple[str, str | None, str | None]:
    with session_scope() as session:
        row = session.scalars(select(Suppression).where(Suppression.address == address)).one()
        return row.reason, row.detail, row.source_message_id


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_reject_suppresses_and_keeps_smtp2gos_text(backend: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(backend)
    tid = make_message("erin@example.com", smtp2go_id=REJECT_ID)
    assert process_event(fixture("webhook_reject.json"))["suppression"] == "suppressed"
    status = status_of(tid)
    assert status["status"] == "rejected"
    assert rcpt(status, "erin@example.com")["status"] == "rejected"
    assert _suppression_row("erin@example.com") == (
        "reject", f"smtp2go reject {REJECT_ID}: Recipient address is on the suppression list (submission)", tid)


@pytest.mark.parametrize("text", [
    {"message": "Sender domain not verified"},  # wording that does not mention suppression
    {"message": "550 5.7.1 Recipient refused", "reason": "unsubscribed", "context": "submission"},
    {"reason": "previously hard bounced"},
    {},  # no text at all: the reject is still the fact
])
def test_reject_suppresses_whatever_its_text_says(db: str, text: dict[str, str]) -> None:
    """SMTP2Go rejects only addresses on its own suppression list; the text is the detail, not the trigger."""
    base = {key: value for key, value in fixture("webhook_reject.json").items()
            if key not in ("message", "context")}
    tid = make_message("erin@example.com", smtp2go_id=REJECT_ID)
    assert process_event({**base, **text})["suppression"] == "suppressed"
    assert status_of(tid)["status"] == "rejected"
    reason, detail, source = _suppression_row("erin@example.com")
    assert (reason, source) == ("reject", tid)
    assert detail is not None and detail.startswith(f"smtp2go reject {REJECT_ID}")
    for value in text.values():
        assert value in detail
    with session_scope() as session:  # and the send path now skips the address
        assert is_suppressed(session, "Erin@Example.com")


def test_reject_for_an_unknown_message_still_suppresses(db: str) -> None:
    payload = variant(fixture("webhook_reject.json"), message="Recipient refused", context=None)
    result = process_event(payload)
    assert (result["status"], result["suppression"]) == ("orphan", "suppressed")
    assert _suppression_row("erin@example.com") == ("reject", f"smtp2go reject {REJECT_ID}: Recipient refused",
                                                    None)


def test_resubscribe_older_than_a_reject_keeps_the_suppression(db: str) -> None:
    process_event(variant(fixture("webhook_reject.json"), message="Recipient refused"))  # 2026-11-21T16:00:12Z
    resub = {"event": "resubscribe", "id": "resub-old", "rcpt": "erin@example.com", "time": "2026-11-21T15:00:00Z"}
    assert "suppression" not in process_event(resub)
    with session_scope() as session:
        assert is_suppressed(session, "erin@example.com")


def test_opens_and_clicks_count_once_per_distinct_event(db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    opened, clicked = fixture("webhook_open.json"), fixture("webhook_click.json")
    process_event(variant(opened, id="open-2", time="2026-11-20T10:00:00Z"))
    process_event(opened)  # earlier open delivered later: its time wins
    process_event(opened)  # a retry of the same event
    process_event(clicked)
    status = status_of(tid)
    alice = rcpt(status, "alice@example.com")
    assert (alice["open_count"], alice["click_count"]) == (2, 1)
    assert alice["opened_at"] == "2026-11-20T09:31:18+00:00" and status["opened_at"] == alice["opened_at"]
    assert alice["clicked_at"] == "2026-11-20T09:32:02+00:00" and alice["status"] == "clicked"
    assert status["status"] == "delivered"  # opened/clicked recipients count as delivered
    assert [e["url"] for e in status["events"] if e["type"] == "click"] == ["https://portal.example.org/tickets/1042"]


def test_the_same_event_twenty_times_changes_nothing(db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    for name in ("webhook_delivered.json", "webhook_open.json", "webhook_bounce_hard.json"):
        payload = fixture(name)
        assert process_event(payload)["status"] == "applied"
        first = status_of(tid)
        for _ in range(19):
            assert process_event(dict(payload))["status"] == "duplicate"
        assert status_of(tid) == first
    assert event_count() == 3
    assert rcpt(status_of(tid), "alice@example.com")["open_count"] == 1


def test_late_delivered_does_not_undo_bounce_and_first_times_win(db: str) -> None:
    tid = make_message("bob@example.net")
    process_event(fixture("webhook_bounce_hard.json"))
    process_event({"event": "delivered", "id": "late", "email_id": EMAIL_ID, "rcpt": "bob@example.net",
                   "time": "2026-11-20T09:14:05Z"})
    process_event(variant(fixture("webhook_bounce_hard.json"), id="second-bounce", time="2026-11-20T12:00:00Z"))
    status = status_of(tid)
    bob = rcpt(status, "bob@example.net")
    assert (status["status"], bob["status"]) == ("bounced", "bounced")
    assert bob["delivered_at"] == "2026-11-20T09:14:05+00:00"  # recorded, but does not move status back
    assert bob["bounced_at"] == "2026-11-20T09:14:07+00:00"
    assert [e["type"] for e in status["events"]] == ["delivered", "bounce", "bounce"]  # by event time


def test_unknown_event_is_stored_as_unknown(db: str) -> None:
    tid = make_message("alice@example.com")
    result = process_event({"event": "deferred", "id": "u1", "email_id": EMAIL_ID, "rcpt": "alice@example.com",
                            "time": "2026-11-20T09:20:00Z"})
    assert result["status"] == "applied" and result["type"] == "unknown"
    with session_scope() as session:
        row = session.scalars(select(TrackingEvent)).one()
        assert (row.event_type, row.raw_event, row.message_id) == (EventType.UNKNOWN, "deferred", tid)
    assert status_of(tid)["status"] == "sent"


def test_processed_is_one_row_and_changes_no_status(db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    assert process_event(fixture("webhook_processed.json"))["status"] == "applied"
    status = status_of(tid)
    assert status["status"] == "sent" and {r["status"] for r in status["recipients"]} == {"sent"}
    assert status["events"][0]["type"] == "processed" and status["events"][0]["recipient"] is None
    assert event_count() == 1


def test_event_for_unknown_recipient_is_kept_and_linked(db: str) -> None:
    tid = make_message("alice@example.com")
    result = process_event({"event": "delivered", "id": "x1", "email_id": EMAIL_ID,
                            "rcpt": "stranger@example.com", "time": "2026-11-20T09:20:00Z"})
    assert result["status"] == "applied" and result["message_id"] == tid
    status = status_of(tid)
    assert rcpt(status, "alice@example.com")["status"] == "sent"
    assert status["events"][0]["recipient"] == "stranger@example.com"


def test_recipient_matched_case_insensitively(db: str) -> None:
    tid = make_message("Alice@Example.COM")
    process_event(variant(fixture("webhook_delivered.json"), rcpt="alice@EXAMPLE.com"))
    assert status_of(tid)["recipients"][0]["status"] == "delivered"


# --------------------------------------------------------------------------------------------- orphans


def test_orphan_is_kept_and_applied_by_link_pending_events(db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net", smtp2go_id=None)
    assert process_event(fixture("webhook_delivered.json"))["status"] == "orphan"
    assert process_event(fixture("webhook_bounce_hard.json"))["status"] == "orphan"
    with session_scope() as session:  # address facts apply at once, even for an orphan
        assert is_suppressed(session, "bob@example.net")
    assert status_of(tid)["events"] == []
    with session_scope() as session:  # what record_sent does inside its transaction
        message = session.get(Message, tid)
        assert message is not None
        message.smtp2go_message_id = EMAIL_ID
        session.flush()
        assert link_pending_events(session, message) == 2
        assert link_pending_events(session, message) == 0
    status = status_of(tid)
    assert status["status"] == "bounced"
    assert rcpt(status, "alice@example.com")["delivered_at"] == "2026-11-20T09:14:05+00:00"
    assert len(status["events"]) == 2
    assert link_orphan_events() == 0


def test_linking_by_tracking_header(db: str) -> None:
    tid = make_message("alice@example.com", smtp2go_id=None)
    result = process_event(variant(fixture("webhook_delivered.json"), email_id="1t9QzZ-unknown-Q7aP",
                                   **{"X-Mailworker-Id": tid}))
    assert result["status"] == "applied" and result["message_id"] == tid
    assert status_of(tid)["status"] == "delivered"


def test_event_for_message_still_sending_is_deferred_until_sent(db: str) -> None:
    tid = make_message("alice@example.com", smtp2go_id=None, status=MessageStatus.SENDING)
    result = process_event(variant(fixture("webhook_delivered.json"), **{"x-mailworker-id": tid}))
    assert result["status"] == "deferred"
    assert status_of(tid)["status"] == "sending"
    assert link_orphan_events() == 0  # the send path still owns it
    with session_scope() as session:
        message = session.get(Message, tid)
        assert message is not None
        message.status = MessageStatus.SENT
        message.smtp2go_message_id = EMAIL_ID
        for r in message.recipients:
            r.status = RecipientStatus.SENT
        session.flush()
        assert link_pending_events(session, message) == 1
    assert status_of(tid)["status"] == "delivered"


def test_record_accepted_applies_events_that_beat_it(db: str) -> None:
    """The real send path: events that arrived while the message was being sent are applied when the send's
    acceptance is recorded (lifecycle.record_accepted)."""
    from worker.infrastructure.db import get_engine
    from worker.sending.lifecycle import ClaimKind, Lease, record_accepted

    tid = make_message("alice@example.com", "bob@example.net", smtp2go_id=None, status=MessageStatus.SENDING)
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(lease_owner="host:w"))
    assert process_event(variant(fixture("webhook_open.json"), **{"X-Mailworker-Id": tid}))["status"] == "deferred"
    assert process_event(fixture("webhook_delivered.json"))["status"] == "orphan"  # no header, id unknown yet
    assert process_event(fixture("webhook_bounce_hard.json"))["status"] == "orphan"
    with get_engine().connect() as conn:
        lease = Lease(tid, "host:w", ClaimKind.FRESH)
        assert record_accepted(conn, lease, Transport.SMTP2GO, EMAIL_ID) == 3
        conn.commit()
    status = status_of(tid)
    alice, bob = rcpt(status, "alice@example.com"), rcpt(status, "bob@example.net")
    assert (status["status"], alice["status"], alice["open_count"], bob["status"]) == (
        "bounced", "opened", 1, "bounced")
    assert alice["delivered_at"] == "2026-11-20T09:14:05+00:00"
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(TrackingEvent.applied_at.is_(None))) == 0
    assert link_orphan_events() == 0


def test_link_orphan_events_repairs_later(db: str) -> None:
    tid = make_message("alice@example.com", smtp2go_id=None)
    process_event(fixture("webhook_open.json"))
    process_event(fixture("webhook_delivered.json"))
    assert link_orphan_events() == 0
    with session_scope() as session:
        message = session.get(Message, tid)
        assert message is not None
        message.smtp2go_message_id = EMAIL_ID
    assert link_orphan_events() == 2
    assert link_orphan_events() == 0
    status = status_of(tid)
    alice = rcpt(status, "alice@example.com")
    assert (status["status"], alice["status"], alice["open_count"]) == ("delivered", "opened", 1)


# --------------------------------------------------------------------------------------------- concurrency


def test_concurrent_distinct_opens_are_all_counted(db: str) -> None:
    tid = make_message("alice@example.com")
    base = fixture("webhook_open.json")
    start = datetime(2026, 11, 20, 9, 31, tzinfo=UTC)
    events = [variant(base, id=f"open-{i}", time=(start + timedelta(seconds=i)).isoformat()) for i in range(50)]

    def work(i: int) -> None:
        for ev in events[i::8]:
            assert process_event(ev)["status"] == "applied"

    run_threads(8, work)
    alice = rcpt(status_of(tid), "alice@example.com")
    assert alice["open_count"] == 50 and alice["opened_at"] == "2026-11-20T09:31:00+00:00"


def test_concurrent_deliveries_of_the_same_events_count_once(db: str) -> None:
    tid = make_message("alice@example.com")
    base = fixture("webhook_click.json")
    events = [variant(base, id=f"click-{i}") for i in range(10)]
    results: list[str] = []

    def work(_: int) -> None:
        for ev in events:
            results.append(process_event(ev)["status"])

    run_threads(8, work)
    assert results.count("applied") == 10 and results.count("duplicate") == 70
    assert rcpt(status_of(tid), "alice@example.com")["click_count"] == 10
    assert event_count() == 10


# --------------------------------------------------------------------------------------------- SQLite


def test_events_on_sqlite(sqlite_db: str) -> None:
    tid = make_message("alice@example.com", "bob@example.net")
    for name in ("webhook_processed.json", "webhook_delivered.form", "webhook_open.json", "webhook_click.json",
                 "webhook_bounce_hard.json"):
        assert process_event(fixture(name))["status"] == "applied", name
    assert process_event(fixture("webhook_open.json"))["status"] == "duplicate"
    status = status_of(tid)
    assert status["status"] == "bounced"
    alice = rcpt(status, "alice@example.com")
    assert (alice["status"], alice["open_count"], alice["click_count"]) == ("clicked", 1, 1)
    assert alice["delivered_at"] == "2026-11-20T09:14:05+00:00"
    with session_scope() as session:
        assert is_suppressed(session, "bob@example.net")


def test_status_read_is_one_snapshot_while_an_event_is_applied(db: str) -> None:
    """``get_email_status`` reads the message, its recipients and its events in three SELECTs; an event applied
    between the recipients and the events SELECT must not appear with its recipient still unchanged (MariaDB's
    READ COMMITTED gave exactly that, seen as a flaky ``open_count`` of 0 beside a listed ``open`` event). The
    event is applied, and committed, while the reader is paused just before its events SELECT."""
    import threading

    from sqlalchemy import event

    from worker.infrastructure.db import get_engine

    tid = make_message("alice@example.com", smtp2go_id="snap-1")
    engine = get_engine()
    reader = threading.get_ident()
    applied = threading.Event()

    def apply_open() -> None:
        process_event({"event": "open", "id": "snap-open", "email_id": "snap-1", "rcpt": "alice@example.com",
                       "time": "2026-11-20T11:00:00Z"})
        applied.set()

    def pause_before_events(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == reader and "FROM tracking_events" in statement and not applied.is_set():
            threading.Thread(target=apply_open).start()
            assert applied.wait(30), "the open event was not applied"

    event.listen(engine, "before_cursor_execute", pause_before_events)
    try:
        torn = status_of(tid)
    finally:
        event.remove(engine, "before_cursor_execute", pause_before_events)
    assert applied.is_set()
    # the snapshot was taken at the first SELECT, before the event: neither the event nor its effect
    listed = [e["type"] for e in torn["events"]]
    assert (listed, rcpt(torn, "alice@example.com")["open_count"]) == ([], 0), torn
    after = status_of(tid)
    assert [e["type"] for e in after["events"]] == ["open"] and rcpt(after, "alice@example.com")["open_count"] == 1
