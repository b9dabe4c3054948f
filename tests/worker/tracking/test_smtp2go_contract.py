"""Contract of the receiving side: every SMTP2Go fixture normalises to the expected :class:`NormalizedEvent`.

Pure (no services). ``worker.providers.smtp2go.webhooks`` is the one module that reads SMTP2Go's event names and fields,
webhooks and ``/activity/search`` alike; a second provider would be one module plus a test like this one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import FIXTURES_DIR
from worker.infrastructure.models import EventType
from worker.providers.smtp2go.webhooks import (
    ACTIVITY_EVENT_NAMES,
    EVENT_MAP,
    NormalizedEvent,
    activity_event_names,
    is_event,
    normalise_activity,
    normalise_stored,
    normalise_webhook,
)

EMAIL_ID = "1t9QkX-4Rb2Wm8YzK-Q7aP"


def fixture(name: str) -> Any:
    text = (FIXTURES_DIR / name).read_text()
    if name.endswith(".form"):
        from webhook_app.parsing import parse_form

        return parse_form(text.encode())[0]
    return json.loads(text)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


#: fixture -> the fields that matter (every field of NormalizedEvent not listed keeps its default).
WEBHOOKS: dict[str, dict[str, Any]] = {
    "webhook_delivered.json": dict(
        provider_event_id="c2f1d8e3ab5f4f7e9d4c3b2a1f0e9d8c", event_type=EventType.DELIVERED, raw_event="delivered",
        occurred_at=at("2026-11-20T09:14:05+00:00"), email_id=EMAIL_ID, recipient="alice@example.com",
        message="250 2.0.0 Ok: queued as 4Xk2pQ", context="Unavailable", host="mx1.example.com [203.0.113.25]"),
    "webhook_delivered.form": dict(
        provider_event_id="d3a2e9f4bc6a4a8f8e5d4c3b2a1f0e9d", event_type=EventType.DELIVERED, raw_event="delivered",
        occurred_at=at("2026-11-20T09:14:05+00:00"), email_id=EMAIL_ID, recipient="alice@example.com",
        message="250 2.0.0 Ok: queued as 4Xk2pQ", context="Unavailable", host="mx1.example.com [203.0.113.25]",
        message_id_header="<E1t9QkX-4Rb2Wm8YzK-Q7aP@message-id.smtpcorp.com>"),
    "webhook_open.json": dict(
        provider_event_id="a6d5bc27ef9d4db1b18a7f6e5d4c3b2a", event_type=EventType.OPEN, raw_event="open",
        occurred_at=at("2026-11-20T09:31:18+00:00"), email_id=EMAIL_ID, recipient="alice@example.com",
        user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
    "webhook_click.json": dict(
        provider_event_id="b7e6cd38f0ae4ec2c29b8a7f6e5d4c3b", event_type=EventType.CLICK, raw_event="click",
        occurred_at=at("2026-11-20T09:32:02+00:00"), email_id=EMAIL_ID, recipient="alice@example.com",
        user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64)", url="https://portal.example.org/tickets/1042"),
    "webhook_bounce_hard.json": dict(
        provider_event_id="e4b3fa05cd7b4b9a9f6e5d4c3b2a1f0e", event_type=EventType.BOUNCE, raw_event="bounce",
        occurred_at=at("2026-11-20T09:14:07+00:00"), email_id=EMAIL_ID, recipient="bob@example.net",
        bounce_type="hard", message="550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
        context="RCPT TO:<bob@example.net>", host="mx.example.net [192.0.2.44]"),
    "webhook_bounce_soft.json": dict(
        provider_event_id="f5c4ab16de8c4ca0a07f6e5d4c3b2a1f", event_type=EventType.BOUNCE, raw_event="bounce",
        occurred_at=at("2026-11-20T10:02:41+00:00"), email_id="1t9QmC-2Kd8Lp5WxN-S3eH",
        recipient="carol@example.com", bounce_type="soft", message="452 4.2.2 Mailbox full", context="DATA",
        host="mx2.example.com [203.0.113.26]"),
    "webhook_spam.json": dict(
        provider_event_id="c8f7de49a1bf4fd3d3ac9b8a7f6e5d4c", event_type=EventType.SPAM, raw_event="spam",
        occurred_at=at("2026-11-21T14:05:09+00:00"), email_id=EMAIL_ID, recipient="alice@example.com"),
    "webhook_unsubscribe.json": dict(
        provider_event_id="d9a8ef5ab2c04ae4e4bdac9b8a7f6e5d", event_type=EventType.UNSUBSCRIBE,
        raw_event="unsubscribe", occurred_at=at("2026-11-21T15:40:00+00:00"), email_id="1t9QmC-2Kd8Lp5WxN-S3eH",
        recipient="dave@example.com"),
    "webhook_reject.json": dict(
        provider_event_id="eab9fa6bc3d14bf5f5cebdac9b8a7f6e", event_type=EventType.REJECT, raw_event="reject",
        occurred_at=at("2026-11-21T16:00:12+00:00"), email_id="1t9QnD-9Fj4Rt6ZyP-T2fK", recipient="erin@example.com",
        message="Recipient address is on the suppression list", context="submission"),
    "webhook_processed.json": dict(
        provider_event_id="b1e0c7d29a4f4e6d8c3b2a1f0e9d8c7b", event_type=EventType.PROCESSED, raw_event="processed",
        occurred_at=at("2026-11-20T09:14:02+00:00"), email_id=EMAIL_ID, recipient=None,
        recipients=("alice@example.com", "bob@example.net"),
        message_id_header="<E1t9QkX-4Rb2Wm8YzK-Q7aP@message-id.smtpcorp.com>"),
}


@pytest.mark.parametrize("name", sorted(WEBHOOKS))
def test_every_webhook_fixture_normalises_to_the_expected_event(name: str) -> None:
    body = fixture(name)
    ev = normalise_webhook(body)
    assert ev == NormalizedEvent(**{"provider": "smtp2go", **WEBHOOKS[name]})
    assert ev.provider == "smtp2go" and ev.raw == body  # kept as sent: stored with the event
    assert is_event(body)


def _activity(event: str) -> dict[str, Any]:
    [found] = [e for e in fixture("activity_search.json")["data"]["events"] if e["event"] == event]
    return dict(found)


#: activity event -> (type, recipient, bounce type, text in the detail)
ACTIVITY: dict[str, tuple[EventType, str | None, str | None, str | None]] = {
    "processed": (EventType.PROCESSED, None, None, None),
    "delivered": (EventType.DELIVERED, "alice@example.com", None, "250 2.0.0 OK"),
    "hard-bounced": (EventType.BOUNCE, "bob@example.net", "hard", "User unknown"),
    "soft-bounced": (EventType.BOUNCE, "carol@example.net", "soft", "Mailbox full"),
    "rejected": (EventType.REJECT, "dave@example.com", None, "suppression list"),
}


@pytest.mark.parametrize("name", sorted(ACTIVITY))
def test_every_activity_fixture_event_normalises_to_the_expected_event(name: str) -> None:
    raw = _activity(name)
    kind, recipient, bounce, text = ACTIVITY[name]
    ev = normalise_activity(raw)
    assert (ev.event_type, ev.recipient, ev.bounce_type, ev.raw_event) == (kind, recipient, bounce, name)
    assert ev.email_id == raw["email_id"]
    assert ev.occurred_at == at(raw["date"]) and ev.time_source == "time"
    assert ev.provider_event_id == f"activity:{raw['email_id']}:{name}:{raw['recipient']}"  # the same every search
    assert ev.tracking_ref == raw["custom_headers"]["X-Mailworker-Id"]
    if text:
        assert text in (ev.detail or "")
    assert ev.raw == {**raw, "source": "activity_search"}
    assert normalise_stored(ev.raw) == ev


def test_one_map_of_event_names_for_both_sources() -> None:
    for name in ACTIVITY_EVENT_NAMES:
        assert name in EVENT_MAP, name
    assert normalise_webhook({"event": "bounce", "bounce": "hard"}).event_type == \
        normalise_activity({"event": "hard-bounced"}).event_type == EventType.BOUNCE
    fill = {EventType.DELIVERED, EventType.BOUNCE, EventType.REJECT, EventType.SPAM, EventType.UNSUBSCRIBE}
    assert activity_event_names(fill) == ["delivered", "hard-bounced", "rejected", "soft-bounced", "spam",
                                          "unsubscribed"]
    assert activity_event_names({EventType.OPEN, EventType.CLICK}) == ["clicked", "opened"]


def test_what_is_an_event() -> None:
    assert is_event({"email_id": "x"}) and is_event({"event": "open"})
    assert not is_event({"foo": 1}) and not is_event(["event"]) and not is_event("event")


def test_normalising_never_raises_on_odd_bodies() -> None:
    for body in ({}, {"event": None}, {"event": ["open", "x"], "time": "garbage"}, {"custom_headers": 3}):
        assert normalise_webhook(body).event_type in set(EventType)
        assert normalise_activity(body).event_type in set(EventType)
