"""``cancel_email``: the application takes back an email it no longer wants sent."""

from __future__ import annotations

import logging

from sqlalchemy import select

from worker.errors import InvalidEmail
from worker.infrastructure.db import get_engine
from worker.sending import lifecycle
from worker.sending.jobs import M

log = logging.getLogger(__name__)


def cancel_email(tracking_id: str | None = None, *, idempotency_key: str | None = None) -> bool:
    """Cancel a queued, scheduled, retrying or held email that no transport was handed yet.

    True: it is ``cancelled`` and will never be sent (an ``email.cancelled`` callback follows). False: too late
    (a worker is sending it or a transport has it) or no such email. Give the tracking id or the idempotency
    key the email was enqueued with.
    """
    if (tracking_id is None) == (idempotency_key is None):
        raise InvalidEmail("tracking_id", "give exactly one of tracking_id and idempotency_key")
    for name, value in (("tracking_id", tracking_id), ("idempotency_key", idempotency_key)):
        if value is not None and not isinstance(value, str):
            raise InvalidEmail(name, f"expected a string, got {type(value).__name__}")
    with get_engine().begin() as conn:
        if tracking_id is None:
            tracking_id = conn.scalar(select(M.c.id).where(M.c.idempotency_key == idempotency_key))
            if tracking_id is None:
                return False
        return lifecycle.cancel(conn, tracking_id)
