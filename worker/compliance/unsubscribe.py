"""Apply a one-click unsubscribe: the receiver verified the token and published ``mailworker.unsubscribe(token)``;
this verifies it again (the token, never the address, travels through the broker) and suppresses the address for
that list."""

from __future__ import annotations

import logging

from worker.compliance.tokens import BadToken, verify
from worker.infrastructure.db import session_scope
from worker.tracking.suppressions import REASON_UNSUBSCRIBE, add_suppression

log = logging.getLogger(__name__)


def apply_unsubscribe(token: str) -> str:
    """``suppressed``, ``already`` (that list already had it) or ``refused`` (a token that no longer verifies)."""
    try:
        request = verify(token)
    except BadToken as err:
        log.warning("unsubscribe refused: %s", err)
        return "refused"
    with session_scope() as session:
        added = add_suppression(session, request.address, REASON_UNSUBSCRIBE, list_id=request.list_id,
                                detail="one-click unsubscribe (RFC 8058)")
    log.info("unsubscribe applied list_id=%s new=%s", request.list_id, added)
    return "suppressed" if added else "already"
