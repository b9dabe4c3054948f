"""The sweeper: the periodic repair that makes the database, not the broker, the source of truth.

It publishes ``queued`` rows whose publish was lost (broker down at enqueue, Redis flushed), re-publishes
``retrying`` rows whose retry message vanished, hands ``send_at`` mail to the broker shortly before it is due
(so no broker message carries a long countdown), and re-publishes messages whose lease expired (a worker
died). Publishing twice is harmless: :func:`worker.sending.delivery.claim` lets only one attempt through, but it is not
free, so a row whose publish is on record is left to its broker message:

- ``published_at`` is NULL (the publish failed, or the row was made due by a write that left the publish to
  the sweeper), or older than the row's last write (``updated_at``: an attempt since then consumed that broker
  message): republished once it has been due for ``grace`` (a few sweep intervals).
- ``published_at`` is on record and no later write superseded it (``enqueue_email``, ``requeue``, this
  sweeper): its broker message is presumably still waiting in a backlog, so it is republished only when it
  has been due for ``SWEEP_REPUBLISH_AFTER`` seconds, i.e. the publish was really lost (Redis flushed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, not_, or_, select, update

from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus, utcnow
from worker.sending.publish import publish_send

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    scheduled: int = 0
    republished: int = 0
    expired_leases: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"scheduled": self.scheduled, "republished": self.republished,
                "expired_leases": self.expired_leases}


def sweep(settings: Settings | None = None, *, grace: float | None = None, republish_after: float | None = None,
          batch: int = 1000) -> SweepReport:
    """One sweep pass; returns what it published. ``grace`` (default 4 sweep intervals) and ``republish_after``
    (default ``SWEEP_REPUBLISH_AFTER``) override the settings, for tests and the fault harness."""
    settings = settings or get_settings()
    grace_td = timedelta(seconds=settings.sweep_interval * 4 if grace is None else grace)
    republish_td = timedelta(seconds=settings.sweep_republish_after if republish_after is None
                             else republish_after)
    now = utcnow()
    soon = now + timedelta(seconds=settings.sweep_interval * 1.5)
    stale = now - grace_td
    due = func.coalesce(Message.next_attempt_at, Message.queued_at)
    on_record = and_(Message.published_at.is_not(None), Message.published_at >= Message.updated_at)
    report = SweepReport()
    pending = [MessageStatus.QUEUED, MessageStatus.RETRYING]
    with session_scope() as session:
        scheduled = session.execute(
            select(Message.id, Message.next_attempt_at)
            .where(Message.status == MessageStatus.QUEUED, Message.published_at.is_(None),
                   Message.send_at.is_not(None), Message.next_attempt_at <= soon,
                   Message.next_attempt_at > stale)
            .limit(batch)
        ).all()
        lost = session.scalars(
            select(Message.id)
            .where(
                Message.status.in_(pending),
                Message.ambiguous_since.is_(None),
                or_(and_(not_(on_record), due <= stale), and_(on_record, due <= now - republish_td)),
            )
            .limit(batch)
        ).all()
        expired = session.scalars(
            select(Message.id)
            .where(Message.status == MessageStatus.SENDING, Message.lease_expires_at < now,
                   or_(Message.published_at.is_(None), Message.published_at <= stale))
            .limit(batch)
        ).all()
    published: list[str] = []
    for tracking_id, eta in scheduled:
        if publish_send(tracking_id, eta=eta if eta and eta > now else None):
            published.append(tracking_id)
            report.scheduled += 1
    for tracking_id in lost:
        if publish_send(tracking_id):
            published.append(tracking_id)
            report.republished += 1
    for tracking_id in expired:
        if publish_send(tracking_id):
            published.append(tracking_id)
            report.expired_leases += 1
    if published:
        with session_scope() as session:
            for chunk_start in range(0, len(published), 500):
                chunk = published[chunk_start:chunk_start + 500]
                session.execute(
                    # updated_at keeps its value (no onupdate bump), so this publish is "on record"
                    # unless a worker wrote the row after ``now``, i.e. already consumed something.
                    update(Message).where(Message.id.in_(chunk))
                    .values(published_at=now, updated_at=Message.updated_at)
                    .execution_options(synchronize_session=False)
                )
        log.info("sweep published %s", report.as_dict())
    return report
