"""Applying a stored event to its message's recipients: the rules, without the message status.

Shared by event ingestion (:mod:`worker.tracking.events`) and by the send path's transitions
(:mod:`worker.sending.lifecycle` applies events that arrived before the provider id was recorded), so both
apply an event the same way while only the lifecycle writes the message's status (its roll-up).
The rules (rank order, first timestamp wins, counters, bounce type) are described in
:mod:`worker.tracking.events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.callbacks import outbox
from worker.infrastructure.models import EventType, Message, Recipient, RecipientStatus, TrackingEvent, utcnow
from worker.providers import webhook_handler
from worker.providers.base import NormalizedEvent

#: Where a stored body names the provider kind that sent it (absent: the first provider, SMTP2Go).
PROVIDER_KEY = "_provider"


def normalise(event: Any, key: str | None = None, provider: str | None = None) -> NormalizedEvent:
    """A provider's webhook body as a :class:`NormalizedEvent`, by ``provider`` or the kind stored under ``key``."""
    kind = provider or (event.get(key) if key and isinstance(event, dict) else None) or "smtp2go"
    handler = webhook_handler(kind)
    if handler is None:
        raise ValueError(f"provider {kind!r} has no webhook normaliser")
    return handler.normalise({k: v for k, v in event.items() if k != PROVIDER_KEY})


_RANK = {RecipientStatus.QUEUED: 0, RecipientStatus.SENT: 1, RecipientStatus.FAILED: 1,
         RecipientStatus.SUPPRESSED: 1, RecipientStatus.DELIVERED: 3, RecipientStatus.OPENED: 4,
         RecipientStatus.CLICKED: 5, RecipientStatus.BOUNCED: 6, RecipientStatus.REJECTED: 6,
         RecipientStatus.COMPLAINED: 7}  # a soft-bounced recipient ranks 2 (see _rank)

#: event -> (recipient timestamp, recipient counter, recipient status, message timestamp).
_EFFECTS: dict[EventType, tuple[str, str | None, RecipientStatus | None, str | None]] = {
    EventType.DELIVERED: ("delivered_at", None, RecipientStatus.DELIVERED, "email_delivered_at"),
    EventType.OPEN: ("opened_at", "open_count", RecipientStatus.OPENED, "email_opened_at"),
    EventType.CLICK: ("clicked_at", "click_count", RecipientStatus.CLICKED, "email_clicked_at"),
    EventType.BOUNCE: ("bounced_at", None, RecipientStatus.BOUNCED, None),  # message time: see roll_up
    EventType.SPAM: ("complained_at", None, RecipientStatus.COMPLAINED, "email_complained_at"),
    EventType.REJECT: ("rejected_at", None, RecipientStatus.REJECTED, None),
    EventType.UNSUBSCRIBE: ("unsubscribed_at", None, None, None),
}


def _rank(r: Recipient) -> int:
    if r.status == RecipientStatus.BOUNCED and r.bounce_type != "hard":
        return 2
    return _RANK.get(r.status, 0)


def _first(obj: object, attr: str, new: datetime) -> None:
    """Keep the earliest time: the first event wins even when a later one is delivered first."""
    current = getattr(obj, attr)
    if current is None or new < current:
        setattr(obj, attr, new)


def apply_event(message: Message, row: TrackingEvent) -> None:
    """Apply one stored event to its (locked) message and matching recipients; no suppression side effects."""
    kind, when, soft = row.event_type, row.occurred_at, row.bounce_type != "hard"
    if kind == EventType.PROCESSED and not message.message_id_header and row.smtp2go_data:
        message.message_id_header = normalise(row.smtp2go_data, PROVIDER_KEY).message_id_header
    if kind not in _EFFECTS:
        return  # processed, resubscribe (its effect is on the suppression list) and unknown: recorded only
    at, counter, status, message_at = _EFFECTS[kind]
    if message_at:
        _first(message, message_at, when)
    rcpt = (row.recipient or "").lower()
    for r in (r for r in message.recipients if rcpt and r.address.lower() == rcpt):
        _first(r, at, when)
        if counter:
            setattr(r, counter, (getattr(r, counter) or 0) + 1)
        rank = 2 if kind == EventType.BOUNCE and soft else (_RANK[status] if status else 0)
        if status and rank > _rank(r):
            was_soft_bounce = _rank(r) == 2
            r.status = status
            if kind in (EventType.BOUNCE, EventType.REJECT) and row.detail:
                r.error = row.detail[:2000]
            elif was_soft_bounce:  # delivered after all: the soft bounce's error no longer applies
                r.error = None
        if kind == EventType.BOUNCE and (not soft or r.bounce_type is None):
            r.bounce_type = "soft" if soft else "hard"


def claim_events(session: Session, message: Message, event_ids: Sequence[int]) -> list[TrackingEvent]:
    """Claim stored, unapplied events for ``message`` (locked by the caller) and apply them to its recipients in
    event-time order; returns the events applied. The message's status is the caller's to roll up
    (:func:`worker.sending.lifecycle.roll_up`), then each event's callback is :func:`emit_event`."""
    if not event_ids:
        return []
    rows = session.scalars(
        select(TrackingEvent).where(TrackingEvent.id.in_(list(event_ids)), TrackingEvent.applied_at.is_(None))
        .order_by(TrackingEvent.occurred_at, TrackingEvent.id)
    ).all()
    applied: list[TrackingEvent] = []
    for row in rows:
        # Conditional claim: whoever flips applied_at from NULL applies the event, exactly once.
        claimed = session.execute(
            update(TrackingEvent)
            .where(TrackingEvent.id == row.id, TrackingEvent.applied_at.is_(None))
            .values(applied_at=utcnow(), message_id=message.id)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            continue
        apply_event(message, row)
        applied.append(row)
    return applied


#: Provider events the application is told about (status callbacks), by the callback's type.
_CALLBACK_TYPES = {EventType.DELIVERED: "email.delivered", EventType.OPEN: "email.opened",
                   EventType.CLICK: "email.clicked", EventType.BOUNCE: "email.bounced",
                   EventType.SPAM: "email.complained", EventType.REJECT: "email.rejected",
                   EventType.UNSUBSCRIBE: "email.unsubscribed"}


def emit_event(session: Session, message: Message, row: TrackingEvent) -> None:
    """The status callback of one applied event, in the event's transaction (under the message's lock)."""
    event_type = _CALLBACK_TYPES.get(row.event_type)
    if event_type is None:
        return
    rcpt = (row.recipient or "").lower()
    recipient = next((r for r in message.recipients if rcpt and r.address.lower() == rcpt), None)
    data: dict[str, Any] = {"recipient_status": recipient.status.value if recipient else None}
    if row.event_type in (EventType.BOUNCE, EventType.REJECT):
        data.update(bounce_type=row.bounce_type, detail=row.detail)
    if row.event_type == EventType.CLICK:
        data["url"] = row.url
    outbox.emit(session, message.id, event_type, status=message.status.value, occurred_at=row.occurred_at,
                recipient=row.recipient, data={k: v for k, v in data.items() if v is not None} or None)


