"""Event order independence, distilled from the webhook storm: the same events applied in event-time order and in
reverse order must leave the same final state (SMTP2Go retries for 48 h, so arrival order is arbitrary).

These are the minimal cases behind the storm's mismatches, applied directly with ``process_event`` so each
failure names one rule.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus, Recipient, RecipientKind, RecipientStatus, Transport
from worker.tracking.events import process_event
from worker.tracking.suppressions import is_suppressed

pytestmark = pytest.mark.faults

T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)


def _message(address: str) -> str:
    email_id = f"ord-{uuid.uuid4().hex[:16]}"
    with session_scope() as session:
        row = Message(id=str(uuid.uuid4()), status=MessageStatus.SENT, transport=Transport.SMTP2GO,
                      sender="support@example.org", subject="order", text_body="x", smtp2go_message_id=email_id,
                      queued_at=T0 - timedelta(minutes=1), sent_at=T0 - timedelta(minutes=1), attempts=1,
                      crashes=0, size_bytes=1)
        row.recipients.append(Recipient(address=address, kind=RecipientKind.TO, status=RecipientStatus.SENT,
                                        open_count=0, click_count=0))
        session.add(row)
    return email_id


def _event(email_id: str, rcpt: str, name: str, minutes: int, **extra: Any) -> dict[str, Any]:
    when = (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"event": name, "id": uuid.uuid4().hex, "email_id": email_id, "rcpt": rcpt, "time": when, **extra}


SOFT = {"bounce": "soft", "message": "452 4.2.2 Mailbox full", "context": "RCPT TO"}


def _final(email_id: str) -> dict[str, Any]:
    with session_scope() as session:
        m = session.scalars(select(Message).where(Message.smtp2go_message_id == email_id)
                            .options(selectinload(Message.recipients))).one()
        r = m.recipients[0]
        return {"status": m.status.value, "email_bounced_at": m.email_bounced_at,
                "email_delivered_at": m.email_delivered_at, "rcpt_status": r.status.value,
                "rcpt_bounced_at": r.bounced_at, "bounce_type": r.bounce_type}


def _both_orders(steps: list[tuple[str, int, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``steps`` (event, minute, extra) to two identical messages: in order, and reversed."""
    results = []
    for order in (1, -1):
        rcpt = f"order-{uuid.uuid4().hex[:8]}@example.com"
        email_id = _message(rcpt)
        for name, minute, extra in steps[::order]:
            assert process_event(_event(email_id, rcpt, name, minute, **extra))["status"] == "applied"
        results.append(_final(email_id))
    return results[0], results[1]


def test_repeated_soft_bounces_message_bounced_at_is_order_independent(db: str) -> None:
    in_order, reversed_ = _both_orders([("bounce", 1, SOFT), ("bounce", 5, SOFT)])
    assert in_order["rcpt_bounced_at"] == reversed_["rcpt_bounced_at"] == T0 + timedelta(minutes=1)
    assert in_order["email_bounced_at"] == reversed_["email_bounced_at"], (in_order, reversed_)


def test_soft_bounce_then_delivered_message_bounced_at_is_order_independent(db: str) -> None:
    in_order, reversed_ = _both_orders([("bounce", 1, SOFT), ("delivered", 5, {})])
    assert in_order["status"] == reversed_["status"] == "delivered"
    assert in_order["email_bounced_at"] == reversed_["email_bounced_at"], (in_order, reversed_)


def test_resubscribe_before_a_suppressing_reject_is_order_independent(db: str) -> None:
    """A reject saying "on the suppression list" suppresses the address; a resubscribe that happened *before*
    it must not lift that suppression when it arrives late (the rule the code applies to bounces, complaints
    and unsubscribes)."""
    finals = []
    for order in (1, -1):
        rcpt = f"resub-{uuid.uuid4().hex[:8]}@example.com"
        email_id = _message(rcpt)
        steps = [_event(email_id, rcpt, "resubscribe", 1),
                 _event(email_id, rcpt, "reject", 5, message="Recipient address is on the suppression list",
                        context="submission")]
        for ev in steps[::order]:
            process_event(ev)
        with session_scope() as session:
            finals.append(is_suppressed(session, rcpt))
    assert finals[0] is True  # in order: the later reject re-suppresses
    assert finals[1] == finals[0], "the late resubscribe lifted a suppression made by a later reject"


def test_a_later_reject_suppresses_whatever_its_text(db: str) -> None:
    """A reject means SMTP2Go itself holds the address on its suppression list, whatever its text says:
    a reject later than a resubscribe keeps the address suppressed, in whichever order the events arrive."""
    finals = []
    for arrival in ((0, 1, 2), (0, 2, 1)):  # event-time order; then the resubscribe arrives last
        rcpt = f"resub2-{uuid.uuid4().hex[:8]}@example.com"
        email_id = _message(rcpt)
        steps = [_event(email_id, rcpt, "unsubscribe", 1),
                 _event(email_id, rcpt, "resubscribe", 2),
                 _event(email_id, rcpt, "reject", 3, message="Sender address not verified", context="submission")]
        for i in arrival:
            process_event(steps[i])
        with session_scope() as session:
            finals.append(is_suppressed(session, rcpt))
    assert finals == [True, True], "a late resubscribe lifted the suppression a later reject made"
