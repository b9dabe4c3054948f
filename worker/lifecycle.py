"""A message's life, in one place: its states and the named transitions between them.

(Being filled in: the send path's transitions move here from ``send_store``/``delivery``.)

Parked: ``retrying`` with ``ambiguous_since`` set: a transport may have accepted the last attempt (a read
timeout after the request left, a relay that took the DATA but never answered, a worker that died while the
in-flight mark was set). Only reconciliation (or an explicit operator decision) moves a parked message on:
:func:`settle_accepted` when the provider shows it accepted, :func:`release_parked` when it provably did not
(or, for SMTP, when ``SMTP_UNKNOWN_RESEND_AFTER`` has passed: at least once, documented).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import Connection, Table, update

from worker.models import Message, MessageStatus, Transport, utcnow

log = logging.getLogger(__name__)

M = cast(Table, Message.__table__)

_PARKED = (M.c.status == MessageStatus.RETRYING, M.c.ambiguous_since.is_not(None))


def settle_accepted(conn: Connection, tracking_id: str, *, transport: Transport, provider_id: str,
                    note: str) -> bool:
    """A parked message turned out to be accepted: record it ``sent`` with ``provider_id`` (SMTP2Go's
    ``email_id``) and apply events that arrived before the id was known. Runs in the caller's transaction.

    Returns False (and changes nothing) when the message is no longer parked.
    """
    from worker.send_store import record_sent

    still_parked = conn.execute(
        update(M).where(M.c.id == tracking_id, *_PARKED).values(updated_at=utcnow())
    ).rowcount
    if still_parked != 1:
        return False
    record_sent(conn, tracking_id, transport, provider_id, last_error=note)
    log.info("parked message settled as sent tracking_id=%s transport=%s provider_id=%s", tracking_id,
             transport.value, provider_id)
    return True


def release_parked(conn: Connection, tracking_id: str, *, note: str) -> bool:
    """A parked message was not accepted (a completed negative search, an SMTP outcome past its resend delay,
    or an operator's decision): make it due now, so the send path sends it again. Runs in the caller's
    transaction. Returns False (and changes nothing) when the message is no longer parked."""
    now = utcnow()
    values: dict[str, Any] = {"ambiguous_since": None, "inflight_transport": None, "inflight_since": None,
                              "next_attempt_at": now, "last_error": note, "updated_at": now}
    released = conn.execute(update(M).where(M.c.id == tracking_id, *_PARKED).values(values)).rowcount == 1
    if released:
        log.warning("parked message released for a new attempt tracking_id=%s: %s", tracking_id, note)
    return released
