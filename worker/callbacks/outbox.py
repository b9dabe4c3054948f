"""The outbox of status callbacks: one ``status_events`` row per change, in the transaction of the change.

:func:`emit` is one ``INSERT ... SELECT`` (prebuilt, like the send path's statements): the message's
``reference`` and SMTP2Go id are copied from its row as the transaction sees it, and ``seq`` is one more than the
message's last event. Every writer of a message's events holds the message row's lock first (the transition's
UPDATE, or the event path's ``SELECT ... FOR UPDATE``), so two events of one message never take the same number;
the unique key (message_id, seq) would refuse it if one ever did.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Connection, String, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from worker.infrastructure.models import Message, StatusEvent, UTCDateTime, utcnow

M = cast(Table, Message.__table__)
SE = cast(Table, StatusEvent.__table__)

#: Every event type, as the callbacks name them.
EVENT_TYPES = ("email.sent", "email.delivered", "email.opened", "email.clicked", "email.bounced",
               "email.complained", "email.rejected", "email.unsubscribed", "email.failed", "email.suppressed",
               "email.cancelled", "email.expired")


def _insert_statement() -> Any:
    seq = (select(func.coalesce(func.max(SE.c.seq), 0) + 1).where(SE.c.message_id == bindparam("tid"))
           .scalar_subquery())
    row = select(
        bindparam("event_id", type_=String()), M.c.id, seq, bindparam("type", type_=String()),
        bindparam("recipient", type_=String()), bindparam("status", type_=String()), M.c.reference,
        M.c.smtp2go_message_id, bindparam("occurred_at", type_=UTCDateTime()),
        bindparam("created_at", type_=UTCDateTime()), bindparam("data", type_=JSON()),
    ).where(M.c.id == bindparam("tid"))
    return insert(SE).from_select(["event_id", "message_id", "seq", "type", "recipient", "status", "reference",
                                   "smtp2go_message_id", "occurred_at", "created_at", "data"], row)


_INSERT = _insert_statement()


def emit(conn: Connection | Session, tracking_id: str, event_type: str, *, status: str, occurred_at: datetime,
         recipient: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Write one status event for ``tracking_id`` in the caller's transaction (which holds the message's lock)."""
    assert event_type in EVENT_TYPES, event_type
    conn.execute(_INSERT, {"tid": tracking_id, "event_id": f"evt_{uuid.uuid4().hex}", "type": event_type,
                           "recipient": recipient, "status": status, "occurred_at": occurred_at,
                           "created_at": utcnow(), "data": data or None})
