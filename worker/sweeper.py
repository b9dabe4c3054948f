"""The sweeper: the periodic repair that makes the database, not the broker, the source of truth.

It publishes ``queued`` rows whose publish was lost (broker down at enqueue, Redis flushed), re-publishes
``retrying`` rows whose retry message vanished, hands ``send_at`` mail to the broker shortly before it is due
(so no broker message carries a long countdown), and re-publishes messages whose lease expired (a worker
died). Publishing twice is harmless: :func:`worker.delivery.claim` lets only one attempt through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update

from worker.config import Settings, get_settings
from worker.db import session_scope
from worker.models import Message, MessageStatus, utcnow
from worker.publish import publish_send

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    scheduled: int = 0
    republished: int = 0
    expired_leases: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"scheduled": self.scheduled, "republished": self.republished,
                "expired_leases": self.expired_leases}


def sweep(settings: Settings | None = None, *, grace: float | None = None, batch: int = 1000) -> SweepReport:
    """One sweep pass; returns what it published."""
    settings = settings or get_settings()
    grace_td = timedelta(seconds=settings.sweep_interval * 4 if grace is None else grace)
    now = utcnow()
    soon = now + timedelta(seconds=settings.sweep_interval * 1.5)
    stale = now - grace_td
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
                func.coalesce(Message.next_attempt_at, Message.queued_at) <= stale,
                or_(Message.published_at.is_(None), Message.published_at <= stale),
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
                    update(Message).where(and_(Message.id.in_(chunk))).values(published_at=now)
                    .execution_options(synchronize_session=False)
                )
        log.info("sweep published %s", report.as_dict())
    return report
