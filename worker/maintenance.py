"""Operator repairs: requeue failed or stuck messages, and purge old content for retention.

Both work in batches so they are safe on a table of millions of rows and never hold long locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import selectinload

from worker.db import session_scope
from worker.models import (
    Attachment,
    Message,
    MessageStatus,
    RecipientStatus,
    TrackingEvent,
    utcnow,
)
from worker.publish import publish_send

log = logging.getLogger(__name__)
FINAL = [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.COMPLAINED,
         MessageStatus.REJECTED, MessageStatus.FAILED, MessageStatus.SUPPRESSED]


@dataclass
class RequeueResult:
    requeued: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"requeued": self.requeued, "skipped": self.skipped, "dry_run": self.dry_run}


def _stuck_filter(now: datetime, stuck_after: timedelta) -> ColumnElement[bool]:
    """Sending with an expired lease, or queued/retrying and overdue by ``stuck_after`` (a lost publish)."""
    due = func.coalesce(Message.next_attempt_at, Message.queued_at)
    return or_(
        (Message.status == MessageStatus.SENDING) & (Message.lease_expires_at < now),
        Message.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING])
        & Message.ambiguous_since.is_(None) & (due <= now - stuck_after),
    )


def requeue(ids: list[str] | None = None, *, failed: bool = False, stuck: bool = False,
            since: datetime | None = None, include_ambiguous: bool = False, dry_run: bool = False,
            stuck_after: timedelta = timedelta(minutes=5), limit: int = 1000) -> RequeueResult:
    """Put failed (and/or stuck) messages back in the queue; by explicit ids or by filter."""
    result = RequeueResult(dry_run=dry_run)
    now = utcnow()
    with session_scope() as session:
        stmt = select(Message).options(selectinload(Message.recipients)).limit(limit)
        if ids:
            stmt = stmt.where(Message.id.in_(ids))
        else:
            conditions = []
            if failed:
                conditions.append(Message.status == MessageStatus.FAILED)
            if stuck:
                conditions.append(_stuck_filter(now, stuck_after))
            if not conditions:
                raise ValueError("give tracking ids, --failed or --stuck")
            stmt = stmt.where(or_(*conditions))
            if since is not None:
                stmt = stmt.where(Message.queued_at >= since)
        messages = session.scalars(stmt).all()
        found = {m.id for m in messages}
        for missing in sorted(set(ids or []) - found):
            result.skipped[missing] = "unknown id"
        for message in messages:
            why = _not_requeueable(message, now, stuck_after, include_ambiguous)
            if why:
                result.skipped[message.id] = why
                continue
            result.requeued.append(message.id)
            if dry_run:
                continue
            if message.status == MessageStatus.FAILED:
                message.api_attempts = message.smtp_attempts = message.crashes = 0
                message.api_abandoned = False
                message.failed_at = None
                for r in message.recipients:
                    if r.status == RecipientStatus.FAILED:
                        r.status = RecipientStatus.QUEUED
                        r.error = None
            message.status = MessageStatus.QUEUED
            message.ambiguous_since = None
            message.lease_owner = message.lease_expires_at = None
            message.inflight_since = None
            message.inflight_transport = None
            message.next_attempt_at = None
            message.published_at = now
            message.last_error = f"requeued by operator at {now.isoformat()}; was: {message.last_error or '-'}"
    if not dry_run:
        for tracking_id in result.requeued:
            publish_send(tracking_id)
        if result.requeued:
            log.info("requeued %d message(s)", len(result.requeued))
    return result


def _not_requeueable(message: Message, now: datetime, stuck_after: timedelta, include_ambiguous: bool) -> str:
    if message.status == MessageStatus.FAILED:
        if message.purged_at is not None:
            return "content purged"
        return ""
    if message.ambiguous_since is not None:
        return "" if include_ambiguous else "ambiguous send: reconcile first, or pass --include-ambiguous"
    if message.status == MessageStatus.SENDING:
        expired = message.lease_expires_at is not None and message.lease_expires_at < now
        return "" if expired else "a worker holds its lease"
    if message.status in (MessageStatus.QUEUED, MessageStatus.RETRYING):
        return ""
    return f"status is {message.status.value}"


@dataclass
class PurgeResult:
    messages: int = 0
    attachments: int = 0
    events: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def purge(older_than: timedelta, *, dry_run: bool = False, batch: int = 500) -> PurgeResult:
    """Drop bodies, attachments and event payloads of finished messages queued before now - older_than.

    Message rows, statuses and timestamps stay (stats and audits keep working); events older than the
    cut-off are deleted.
    """
    cutoff = utcnow() - older_than
    result = PurgeResult(dry_run=dry_run)
    candidates = select(Message.id).where(Message.queued_at < cutoff, Message.purged_at.is_(None),
                                          Message.status.in_(FINAL))
    with session_scope() as session:
        if dry_run:
            result.messages = int(session.scalar(select(func.count()).select_from(candidates.subquery())) or 0)
            result.attachments = int(session.scalar(
                select(func.count()).select_from(Attachment).where(Attachment.message_id.in_(candidates))) or 0)
            result.events = int(session.scalar(
                select(func.count()).select_from(TrackingEvent).where(TrackingEvent.occurred_at < cutoff)) or 0)
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
    log.info("purge older_than=%s %s", older_than, result.as_dict())
    return result
