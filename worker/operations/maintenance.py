"""Operator repairs: requeue failed or stuck messages, and purge old content and callback records for retention.

Both work in batches so they are safe on a table of millions of rows and never hold long locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Select, delete, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, aliased

from worker.callbacks.dispatcher import DEAD, DELIVERED
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import (
    Attachment,
    CallbackAttempt,
    CallbackDelivery,
    Message,
    MessageStatus,
    StatusEvent,
    TrackingEvent,
    utcnow,
)
from worker.sending import lifecycle
from worker.sending.publish import publish_send

log = logging.getLogger(__name__)
FINAL = [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.COMPLAINED,
         MessageStatus.REJECTED, MessageStatus.FAILED, MessageStatus.SUPPRESSED]
#: Callback delivery states that need nothing more: delivered, or a dead letter (retries used up, refused, its
#: endpoint disabled or removed). Any other state (``pending``, retries included) keeps its status event.
SETTLED = (DELIVERED, DEAD)


@dataclass
class RequeueResult:
    requeued: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)  # in flight when its worker died: reconciliation decides
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"requeued": self.requeued, "parked": self.parked, "skipped": self.skipped,
                "dry_run": self.dry_run}


def _stuck_filter(now: datetime, stuck_after: timedelta) -> ColumnElement[bool]:
    """Sending with an expired lease, or queued/retrying and overdue by ``stuck_after`` (a lost publish)."""
    due = func.coalesce(Message.next_attempt_at, Message.queued_at)
    return or_(
        (Message.status == MessageStatus.SENDING) & (Message.lease_expires_at < now),
        Message.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING])
        & Message.ambiguous_since.is_(None) & (due <= now - stuck_after),
    )


def requeue(ids: list[str] | None = None, *, failed: bool = False, stuck: bool = False, held: bool = False,
            since: datetime | None = None, include_ambiguous: bool = False, dry_run: bool = False,
            stuck_after: timedelta = timedelta(minutes=5), limit: int = 1000) -> RequeueResult:
    """Send failed, stuck or held messages again, by explicit ids or by filter, through the lifecycle's
    transitions: a message whose send may have landed is parked for reconciliation, never resent blindly
    (``include_ambiguous`` is the operator's explicit decision to resend parked messages anyway)."""
    result = RequeueResult(dry_run=dry_run)
    now = utcnow()
    stmt = select(Message.id).order_by(Message.queued_at).limit(limit)
    if ids:
        stmt = stmt.where(Message.id.in_(ids))
    else:
        conditions: list[ColumnElement[bool]] = []
        if failed:
            conditions.append(Message.status == MessageStatus.FAILED)
        if stuck:
            conditions.append(_stuck_filter(now, stuck_after))
        if held:
            conditions.append(Message.status == MessageStatus.HELD)
        if include_ambiguous:
            conditions.append(Message.status == MessageStatus.PARKED)
        if not conditions:
            raise ValueError("give tracking ids, --failed, --stuck or --held")
        stmt = stmt.where(or_(*conditions))
        if since is not None:
            stmt = stmt.where(Message.queued_at >= since)
    note = f"requeued by operator at {now.isoformat(timespec='seconds')}"
    with get_engine().connect() as conn:
        found = list(conn.scalars(stmt))
        for missing in sorted(set(ids or []) - set(found)):
            result.skipped[missing] = "unknown id"
        for tracking_id in found:
            if dry_run:
                result.requeued.append(tracking_id)
                continue
            if include_ambiguous and lifecycle.release_parked(conn, tracking_id, note=f"{note} (parked: resent "
                                                             "by the operator's decision, may deliver twice)"):
                what = "requeued"
            else:
                what = lifecycle.requeue(conn, tracking_id, note=note, stuck_after=timedelta(0) if ids or held
                                         else stuck_after)
            conn.commit()
            if what == "requeued":
                result.requeued.append(tracking_id)
            elif what == "parked":
                result.parked.append(tracking_id)
            else:
                result.skipped[tracking_id] = what
    if not dry_run:
        for tracking_id in result.requeued:
            publish_send(tracking_id)
        if result.requeued or result.parked:
            log.info("requeue: %d requeued, %d parked for reconciliation", len(result.requeued), len(result.parked))
    return result


@dataclass
class PurgeResult:
    """What was purged (with ``dry_run``: what would be). ``events`` are tracking events (provider webhooks);
    ``status_events``, ``callback_deliveries`` and ``callback_attempts`` the status-callback outbox rows."""

    messages: int = 0
    attachments: int = 0
    events: int = 0
    status_events: int = 0
    callback_deliveries: int = 0
    callback_attempts: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def purge(older_than: timedelta, *, dry_run: bool = False, batch: int = 500,
          body_older_than: timedelta | None = None) -> PurgeResult:
    """Drop bodies, attachments and event payloads of finished messages queued before now - older_than.

    Retention tiers: with ``body_older_than`` (``RETENTION_BODY_DAYS``) bodies, attachments, custom headers and
    template data go after that shorter time, the events and callback records after ``older_than``.

    Message rows, statuses and timestamps stay (stats and audits keep working); events older than the
    cut-off are deleted, and so are status events created before it whose callbacks are settled, with their
    deliveries and attempts (:func:`_purge_callbacks`).
    """
    cutoff = utcnow() - older_than
    body_cutoff = utcnow() - min(older_than, body_older_than or older_than)
    result = PurgeResult(dry_run=dry_run)
    candidates = select(Message.id).where(Message.queued_at < body_cutoff, Message.purged_at.is_(None),
                                          Message.status.in_(FINAL))
    with session_scope() as session:
        if dry_run:
            result.messages = int(session.scalar(select(func.count()).select_from(candidates.subquery())) or 0)
            result.attachments = int(session.scalar(
                select(func.count()).select_from(Attachment).where(Attachment.message_id.in_(candidates))) or 0)
            result.events = int(session.scalar(
                select(func.count()).select_from(TrackingEvent).where(TrackingEvent.occurred_at < cutoff)) or 0)
            settled = _settled_events(cutoff)
            result.status_events = int(session.scalar(
                select(func.count()).select_from(settled.subquery())) or 0)
            result.callback_deliveries = int(session.scalar(
                select(func.count()).select_from(CallbackDelivery)
                .where(CallbackDelivery.event_pk.in_(settled))) or 0)
            result.callback_attempts = int(session.scalar(
                select(func.count()).select_from(CallbackAttempt)
                .join(CallbackDelivery, CallbackDelivery.id == CallbackAttempt.delivery_id)
                .where(CallbackDelivery.event_pk.in_(settled))) or 0)
            return result
    while True:
        with session_scope() as session:
            ids = list(session.scalars(candidates.limit(batch)))
            if not ids:
                break
            result.attachments += session.execute(
                delete(Attachment).where(Attachment.message_id.in_(ids))).rowcount or 0  # type: ignore[attr-defined]
            session.execute(
                update(Message).where(Message.id.in_(ids))
                .values(text_body=None, html_body=None, template_data=None, headers=None, purged_at=utcnow())
                .execution_options(synchronize_session=False))
            result.messages += len(ids)
    while True:
        with session_scope() as session:
            event_ids = list(session.scalars(
                select(TrackingEvent.id).where(TrackingEvent.occurred_at < cutoff).limit(batch)))
            if not event_ids:
                break
            session.execute(delete(TrackingEvent).where(TrackingEvent.id.in_(event_ids)))
            result.events += len(event_ids)
    _purge_callbacks(cutoff, result, batch)
    log.info("purge older_than=%s %s", older_than, result.as_dict())
    return result


def _settled_events(cutoff: datetime) -> Select[tuple[int]]:
    """Ids of status events created before ``cutoff``, dispatched (the dispatcher made their deliveries), and
    with no delivery in a state other than :data:`SETTLED`. An event without deliveries (no endpoint wanted
    it) is settled once dispatched."""
    unsettled = aliased(CallbackDelivery)
    waiting = (select(unsettled.id).where(unsettled.event_pk == StatusEvent.id, unsettled.state.not_in(SETTLED))
               .correlate(StatusEvent))
    return select(StatusEvent.id).where(StatusEvent.created_at < cutoff, StatusEvent.dispatched_at.is_not(None),
                                        ~waiting.exists())


def _delete_ids(conn: Connection, column: InstrumentedAttribute[int], ids: list[int], batch: int) -> int:
    """DELETE the rows whose ``column`` is one of ``ids``, at most ``batch`` ids per statement; returns the rows
    deleted."""
    deleted = 0
    for start in range(0, len(ids), batch):
        deleted += conn.execute(delete(column.class_).where(column.in_(ids[start:start + batch]))).rowcount
    return deleted


def _purge_callbacks(cutoff: datetime, result: PurgeResult, batch: int) -> None:
    """Delete settled status events created before ``cutoff``: their attempts, then their deliveries, then the
    events (the foreign keys' order), one transaction per ``batch`` events, every statement naming at most
    ``batch`` ids (plain ``DELETE ... WHERE id IN (...)``: the same on SQLite and MariaDB).

    Dead letters older than the cut-off go too: ``mailworker callbacks replay`` reaches back that far. Each
    transaction locks its events, then reads their deliveries with a locking read, and keeps an event whose
    delivery became pending meanwhile (a replay of it). A replay of the very same old event at that instant
    waits, then fails on the deleted event, or deadlocks with the purge and one of the two is rolled back
    (rerun it). On SQLite every transaction takes the write lock at BEGIN: there is no "meanwhile".
    """
    with get_engine().connect() as conn:
        upper = conn.scalar(select(func.max(StatusEvent.id)).where(StatusEvent.created_at < cutoff))
    after = 0
    while upper is not None:
        with get_engine().begin() as conn:
            ids = list(conn.scalars(_settled_events(cutoff).where(StatusEvent.id > after, StatusEvent.id <= upper)
                                    .order_by(StatusEvent.id).limit(batch)))
            if not ids:
                break
            after = ids[-1]  # keyset: an event kept below is not read again in this run
            ids = list(conn.scalars(select(StatusEvent.id).where(StatusEvent.id.in_(ids))
                                    .order_by(StatusEvent.id).with_for_update()))
            deliveries = conn.execute(
                select(CallbackDelivery.id, CallbackDelivery.event_pk, CallbackDelivery.state)
                .where(CallbackDelivery.event_pk.in_(ids)).order_by(CallbackDelivery.id).with_for_update()).all()
            busy = {d.event_pk for d in deliveries if d.state not in SETTLED}
            ids = [i for i in ids if i not in busy]
            delivery_ids = [d.id for d in deliveries if d.event_pk not in busy]
            result.callback_attempts += _delete_ids(conn, CallbackAttempt.delivery_id, delivery_ids, batch)
            result.callback_deliveries += _delete_ids(conn, CallbackDelivery.id, delivery_ids, batch)
            result.status_events += _delete_ids(conn, StatusEvent.id, ids, batch)
