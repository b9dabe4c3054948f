"""Delivery statistics for operators (``mailworker stats``) and the ``get_email_stats`` API.

The window is on ``queued_at`` (when the application asked for the email), half-open: ``since <= queued_at <
until``; naive datetimes are taken as UTC. Everything is computed with two GROUP BY / aggregate queries on
indexed columns, so the cost does not depend on bodies or attachments and stays small at 100k+ rows.

Rates are per message, as fractions 0..1 of *sent mail*: messages a transport accepted, i.e. whose status is
sent, delivered, bounced, complained or rejected (0.0 when there are none). They overlap on purpose (a message
delivered to one recipient and hard-bounced by another counts as delivered and as bounced):

- ``delivery_rate``: status delivered, or any delivered event seen (``delivered_at`` set);
- ``open_rate``: any open or click seen (a click proves an open that a blocked tracking pixel hid);
- ``click_rate``: any click seen;
- ``bounce_rate``: status bounced (hard bounce, or every recipient bounced);
- ``spam_rate``: status complained or any complaint seen.

``fallback_count`` counts messages that moved on from a provider to the next one (``fallback_reason`` set).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select

from worker.infrastructure.db import session_scope
from worker.infrastructure.models import ACCEPTED_STATUSES, Message, MessageStatus


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def get_email_stats(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Counts by status and transport, fallbacks, and per-message rates over sent mail in ``[since, until)``."""
    since, until = _aware(since, "since"), _aware(until, "until")
    window: list[ColumnElement[bool]] = []
    if since is not None:
        window.append(Message.queued_at >= since)
    if until is not None:
        window.append(Message.queued_at < until)

    by_status = {s.value: 0 for s in MessageStatus}
    by_transport = {"smtp2go": 0, "smtp": 0, "none": 0}
    accepted = Message.status.in_(ACCEPTED_STATUSES)
    with session_scope() as session:
        grouped = session.execute(
            select(Message.status, Message.transport, func.count()).where(*window)
            .group_by(Message.status, Message.transport)
        ).all()
        row = session.execute(
            select(
                _count_if(accepted),
                _count_if(and_(accepted, or_(Message.status == MessageStatus.DELIVERED,
                                             Message.email_delivered_at.is_not(None)))),
                _count_if(and_(accepted, or_(Message.email_opened_at.is_not(None),
                                             Message.email_clicked_at.is_not(None)))),
                _count_if(and_(accepted, Message.email_clicked_at.is_not(None))),
                _count_if(Message.status == MessageStatus.BOUNCED),
                _count_if(and_(accepted, or_(Message.status == MessageStatus.COMPLAINED,
                                             Message.email_complained_at.is_not(None)))),
                _count_if(Message.fallback_reason.is_not(None)),
            ).where(*window)
        ).one()
    for status, transport, count in grouped:
        by_status[status.value] = by_status.get(status.value, 0) + int(count)
        key = transport or "none"
        by_transport[key] = by_transport.get(key, 0) + int(count)
    sent, delivered, opened, clicked, bounced, complained, fallbacks = (int(v or 0) for v in row)
    return {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_transport": by_transport,
        "fallback_count": fallbacks,
        "sent_total": sent,
        "delivery_rate": _rate(delivered, sent),
        "open_rate": _rate(opened, sent),
        "click_rate": _rate(clicked, sent),
        "bounce_rate": _rate(bounced, sent),
        "spam_rate": _rate(complained, sent),
    }
