"""Event processing: deduplicate, store, link to the message, apply -- in normalised terms only.

Events arrive as :class:`~worker.providers.base.NormalizedEvent` (:func:`record_event`); the provider's wire
format (field and event names) is its webhook normaliser's business, and :func:`process_event` is the webhook
task's entry that normalises a provider's webhook body first.

SMTP2Go retries a webhook for 48 hours and opens/clicks repeat, so processing is idempotent: every event is one
``tracking_events`` row keyed by SMTP2Go's event ``id`` (else a sha256 of email_id + event + recipient + time);
the unique key makes a second delivery of the same event a no-op, even when two workers race on it.

Linking. An event belongs to the message whose ``smtp2go_message_id`` is its ``email_id``, else to the message
whose tracking id is the echoed ``X-Mailworker-Id`` header. An event for a message not known yet (the webhook
beat our commit of the provider id) is stored as an orphan (``message_id`` and ``applied_at`` NULL), never
dropped; :func:`link_pending_events` applies it when the send records the provider id, and the sweeper's
:func:`link_orphan_events` catches the rest. An event for a message the send path still owns (queued, sending,
retrying) is stored linked but unapplied and is applied the same way once the message is sent, so events never
race the send path over the recipient rows.

Applying (under a ``SELECT ... FOR UPDATE`` lock on the message row, so concurrent event workers never lose a
count): per recipient (matched case-insensitively; an event for an address that is not a recipient only sets the
message-level timestamps) the status only moves forward by rank

    queued/sent < soft-bounced < delivered < opened < clicked < hard-bounced = rejected < complained

so a late ``delivered`` does not undo a bounce, while a soft bounce does not block a later delivery. Timestamps
keep the earliest event time (first wins, also when events arrive out of order); each distinct open/click event
adds one to ``open_count``/``click_count``; ``bounce_type`` only goes soft -> hard. ``processed`` only records
(and fills an empty ``message_id_header``); ``unsubscribe``/``resubscribe`` do not change delivery status.
A bounce without a type and without a 5xx code is treated as soft (we never suppress on a guess).
``processed`` is one row per event with recipient NULL: it is about the message, its ``recipients`` list stays
in the stored payload.

Message roll-up (:func:`worker.sending.lifecycle.roll_up`, the one writer of a message's status; only for
messages a transport accepted: sent, delivered, bounced, complained, rejected; a
message that is queued, sending, retrying, failed or suppressed keeps its status). Over the recipients that
were handed to the transport (all but suppressed/failed ones):

1. ``complained`` if any recipient complained;
2. else ``bounced`` if any recipient hard-bounced, or every recipient bounced (soft included);
3. else ``rejected`` if no recipient was delivered and every recipient was rejected or bounced;
4. else ``delivered`` if any recipient reached delivered, opened or clicked;
5. else ``sent``.

Suppressions are address facts, applied once when the event is ingested (whether or not its message is known,
so an unsubscribe takes effect at once): hard bounce, spam complaint, unsubscribe and reject (SMTP2Go already
holds the address on its suppression list; its text is kept as the detail) add the address; resubscribe removes
it; a soft bounce never suppresses. Events arriving out of order are respected: a suppression is not added if
a later resubscribe for the address is already stored, and a resubscribe does not remove it if a later
suppressing event is already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, joinedload

from worker.errors import InvalidEmail
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    PENDING_STATUSES,
    Message,
    TrackingEvent,
    utcnow,
)
from worker.providers.base import NormalizedEvent
from worker.sending import lifecycle
from worker.sending.jobs import pending_event_ids
from worker.tracking.apply import PROVIDER_KEY, apply_event, emit_event, normalise
from worker.tracking.suppressions import message_list_id, suppress_for_event

log = logging.getLogger(__name__)

__all__ = ["NormalizedEvent", "link_orphan_events", "link_pending_events", "process_event", "record_event"]


#: How far back the sweeper looks for orphans. The race it repairs lasts seconds; older orphans (mail sent by
#: something else on the same SMTP2Go account) are still linked by :func:`link_pending_events` if their message
#: ever shows up, and the bound keeps the periodic query on the ``(applied_at, received_at)`` index.
ORPHAN_REPAIR_WINDOW = timedelta(days=3)

def _suppression_effects(session: Session, ev: NormalizedEvent, message_id: str | None) -> str | None:
    if not ev.recipient:
        return None
    try:
        return suppress_for_event(
            session, ev.recipient, ev.event_type, ev.occurred_at, bounce_type=ev.bounce_type,
            source_message_id=message_id, list_id=message_list_id(session, message_id),
            detail=f"{ev.provider} {ev.raw_event} {ev.email_id or '-'}" + (f": {ev.detail}" if ev.detail else ""))
    except InvalidEmail:
        # We could never have sent to an address our validator refuses: there is nothing to suppress.
        log.warning("event %s names an invalid address; suppression list unchanged", ev.provider_event_id)
        return None


# --------------------------------------------------------------------------------------------- entry points


#: What an event never reads: the bodies (up to megabytes each) stay on the server. Loaded on access if a
#: caller ever needs them.
_NOT_BODIES = (defer(Message.text_body), defer(Message.html_body), defer(Message.template_data),
               defer(Message.headers))


def _lock_message(session: Session, where: Any) -> Message | None:
    """The message matching ``where``, row-locked, with its recipients joined (and locked) in the same read."""
    return session.scalars(
        select(Message).where(where).with_for_update().options(joinedload(Message.recipients), *_NOT_BODIES)
    ).unique().one_or_none()


def _locked_message(session: Session, ev: NormalizedEvent) -> Message | None:
    """The event's message, row-locked so concurrent event workers apply one at a time; None if unknown.

    A locking read straight through the unique ``smtp2go_message_id`` index (one statement, not a look-up then
    a lock): it also waits for a send that is recording this very id right now, instead of missing it. The
    recipients come in the same statement (joined, and locked with their message).
    """
    keys = []
    if ev.email_id:
        keys.append(Message.smtp2go_message_id == ev.email_id)
    if ev.tracking_ref:
        keys.append(Message.id == ev.tracking_ref)
    for key in keys:
        message = _lock_message(session, key)
        if message is not None:
            return message
    return None


def _event_exists(session: Session, key: str) -> bool:
    return session.scalar(select(TrackingEvent.id).where(TrackingEvent.provider_event_id == key)) is not None


_MAX_TEXT = 8000  # url, user agent, detail: TEXT columns, and nobody needs more


def process_event(event: dict[str, Any], provider: str = "smtp2go") -> dict[str, Any]:
    """Store and apply one provider webhook event (idempotent); see :func:`record_event`."""
    if not isinstance(event, dict):
        raise TypeError(f"a webhook event is a JSON object, got {type(event).__name__}")
    return record_event(normalise(event, provider=provider))


def record_event(ev: NormalizedEvent) -> dict[str, Any]:
    """Store and apply one normalised event (idempotent). Returns ``{"status": ...}``:

    ``applied`` (linked and applied), ``deferred`` (linked; its message is still being sent), ``orphan``
    (message not known yet; kept for later) or ``duplicate`` (seen before; nothing changed).
    """
    duplicate = {"status": "duplicate", "event_id": ev.provider_event_id, "type": ev.event_type.value}
    try:
        with session_scope() as session:
            if _event_exists(session, ev.provider_event_id):
                return duplicate
            message = _locked_message(session, ev)
            # Decided before the INSERT so applied_at goes in with it (one UPDATE fewer per event).
            applies_now = message is not None and message.status not in PENDING_STATUSES
            now = utcnow()
            row = TrackingEvent(
                provider_event_id=ev.provider_event_id,
                message_id=message.id if message else None,
                smtp2go_message_id=ev.email_id,
                tracking_ref=ev.tracking_ref,
                event_type=ev.event_type,
                raw_event=ev.raw_event,
                recipient=ev.recipient,
                occurred_at=ev.occurred_at,
                received_at=now,
                applied_at=now if applies_now else None,
                bounce_type=ev.bounce_type,
                url=(ev.url or "")[:_MAX_TEXT] or None,
                user_agent=(ev.user_agent or "")[:_MAX_TEXT] or None,
                detail=(ev.detail or "")[:_MAX_TEXT] or None,
                smtp2go_data=(dict(ev.raw) if ev.provider in ('', 'smtp2go')
                              else {**ev.raw, PROVIDER_KEY: ev.provider.partition(':')[0]}),
            )
            session.add(row)
            session.flush()  # a duplicate event id fails here, before anything else changed
            suppression = _suppression_effects(session, ev, message.id if message else None)
            if message is None:
                status = "orphan"
            elif not applies_now:
                status = "deferred"
            else:
                apply_event(message, row)
                lifecycle.roll_up(message)
                emit_event(session, message, row)
                status = "applied"
            result = {"status": status, "event_id": ev.provider_event_id, "type": ev.event_type.value,
                      "message_id": message.id if message else None,
                      "message_status": message.status.value if message else None}
            if suppression:
                result["suppression"] = suppression
    except IntegrityError:
        # Two deliveries of the same event raced past the look-up; the unique key let exactly one in.
        with session_scope() as session:
            if _event_exists(session, ev.provider_event_id):
                return duplicate
        raise
    log.debug("event %s type=%s status=%s message=%s", ev.provider_event_id, ev.event_type.value, status,
             result["message_id"])
    return result


def link_pending_events(session: Session, message: Message, event_ids: Sequence[int] | None = None) -> int:
    """Apply stored events that arrived before ``message`` had its provider id; returns how many.

    Called by the send path inside its transaction right after it recorded the provider id (which also holds
    the message row lock), with the ids it found; without ``event_ids`` they are looked up here. Uses the
    given session and does not commit.
    """
    if not message.id:
        return 0
    if event_ids is None:
        event_ids = pending_event_ids(session.connection(), message.id, message.smtp2go_message_id)
    count = lifecycle.apply_stored_events(session, message, event_ids)
    if count:
        log.info("linked %d pending event(s) tracking_id=%s", count, message.id)
    return count


def link_orphan_events(limit: int = 1000) -> int:
    """Periodic repair: apply unapplied events whose message is now known and no longer being sent.

    One short transaction per message, each taking the message lock first (the order every writer uses).
    """
    # Three index-friendly joins instead of one join on an OR of three columns, which MariaDB may answer with
    # a full scan of `messages` (seconds at 100k rows; docs/benchmarks.md).
    links = (
        Message.id == TrackingEvent.message_id,
        and_(TrackingEvent.smtp2go_message_id.is_not(None),
             Message.smtp2go_message_id == TrackingEvent.smtp2go_message_id),
        Message.id == TrackingEvent.tracking_ref,
    )
    found: list[tuple[datetime, int, str]] = []
    with session_scope() as session:
        for link in links:
            found.extend(session.execute(
                select(TrackingEvent.occurred_at, TrackingEvent.id, Message.id)
                .join(Message, link)
                .where(TrackingEvent.applied_at.is_(None),
                       TrackingEvent.received_at >= utcnow() - ORPHAN_REPAIR_WINDOW,
                       Message.status.not_in(PENDING_STATUSES))
                .order_by(TrackingEvent.occurred_at, TrackingEvent.id)
                .limit(max(1, int(limit)))
            ).tuples().all())
    pairs = [(event_id, message_id) for _, event_id, message_id in sorted(found)[:max(1, int(limit))]]
    by_message: dict[str, list[int]] = {}
    seen: set[int] = set()
    for event_id, message_id in pairs:
        if event_id not in seen:
            seen.add(event_id)
            by_message.setdefault(message_id, []).append(event_id)
    total = 0
    for message_id, event_ids in by_message.items():
        with session_scope() as session:
            message = _lock_message(session, Message.id == message_id)
            if message is None or message.status in PENDING_STATUSES:
                continue
            total += lifecycle.apply_stored_events(session, message, event_ids)
    if total:
        log.info("linked %d orphan event(s)", total)
    return total
