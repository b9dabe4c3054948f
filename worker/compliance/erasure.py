"""Erasure on request: remove an address and what was written about it, or put a keyed hash in its place where
a row must stay so that counts do not change.

- messages addressed only to it: body, HTML, subject, custom headers, template data and attachments go (the row
  stays with its status and timestamps: stats totals do not change);
- its recipient rows, tracking events (with their raw payloads, URLs, user agents), status-callback events (their
  payloads) and audit entries: the address becomes ``hmac:<hex>`` (:func:`worker.compliance.keys.address_hash`),
  free text naming it has the address replaced by that hash;
- its suppressions stay, as the hash: the address stays suppressed (the send path matches hashed entries).

Needs ``UNSUBSCRIBE_SECRET`` (the hash key). One transaction; the erasure itself is audited under the hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from worker.compliance.keys import address_hash, require_secret
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Attachment,
    Attempt,
    AuditEntry,
    Message,
    Recipient,
    StatusEvent,
    Suppression,
    TrackingEvent,
    utcnow,
)
from worker.tracking.suppressions import normalize_address, validate_address

log = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    address_hash: str
    messages_scrubbed: int = 0
    attachments: int = 0
    recipients: int = 0
    events: int = 0
    status_events: int = 0
    audit_entries: int = 0
    suppressions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        return (f"messages scrubbed {self.messages_scrubbed}, attachments removed {self.attachments}, recipient "
                f"rows {self.recipients}, tracking events {self.events}, callback events {self.status_events}, "
                f"audit entries {self.audit_entries}, suppressions kept as hash {self.suppressions}")


def _scrub_text(value: str | None, needle: str, replacement: str) -> str | None:
    if not value:
        return value
    lowered = value.lower()
    if needle not in lowered:
        return value
    out, start = [], 0
    while (at := lowered.find(needle, start)) >= 0:
        out += [value[start:at], replacement]
        start = at + len(needle)
    return "".join(out) + value[start:]


def erase(address: str, *, actor: str = "cli", reason: str = "erasure request") -> ErasureReport:
    validate_address(address)  # a clear error on ``address`` for something that is no address at all
    addr = normalize_address(address)
    require_secret()
    hashed = address_hash(addr)
    report = ErasureReport(address_hash=hashed)
    with session_scope() as session:
        _erase(session, addr, hashed, report)
        session.add(AuditEntry(actor=actor, action="erase", target=hashed, reason=reason,
                               outcome="erased", changes=report.as_dict(), created_at=utcnow()))
    log.info("erased an address (%s): %s", hashed, report.describe())
    return report


def _erase(session: Session, addr: str, hashed: str, report: ErasureReport) -> None:
    mine = func.lower(Recipient.address) == addr
    message_ids = set(session.scalars(select(Recipient.message_id).where(mine)))
    others = set(session.scalars(select(Recipient.message_id).where(
        Recipient.message_id.in_(message_ids), ~mine))) if message_ids else set()
    only_mine = sorted(message_ids - others)
    for start in range(0, len(only_mine), 500):
        ids = only_mine[start:start + 500]
        report.attachments += session.execute(
            delete(Attachment).where(Attachment.message_id.in_(ids))).rowcount or 0  # type: ignore[attr-defined]
        report.messages_scrubbed += session.execute(
            update(Message).where(Message.id.in_(ids)).values(
                text_body=None, html_body=None, subject=None, headers=None, template_data=None)
            .execution_options(synchronize_session=False)).rowcount or 0  # type: ignore[attr-defined]
    # Free text that may name the address (errors, fallback reasons): the address replaced, the text kept.
    for message in session.scalars(select(Message).where(Message.id.in_(message_ids))):
        message.last_error = _scrub_text(message.last_error, addr, hashed)
        message.fallback_reason = _scrub_text(message.fallback_reason, addr, hashed)
    for attempt in session.scalars(select(Attempt).where(Attempt.message_id.in_(message_ids),
                                                         Attempt.error.is_not(None))):
        attempt.error = _scrub_text(attempt.error, addr, hashed)
    report.recipients = session.execute(
        update(Recipient).where(mine).values(address=hashed, display_name=None, error=None)
        .execution_options(synchronize_session=False)).rowcount or 0  # type: ignore[attr-defined]
    report.events = session.execute(
        update(TrackingEvent).where(func.lower(TrackingEvent.recipient) == addr).values(
            recipient=hashed, smtp2go_data=None, detail=None, url=None, user_agent=None)
        .execution_options(synchronize_session=False)).rowcount or 0  # type: ignore[attr-defined]
    report.status_events = session.execute(
        update(StatusEvent).where(func.lower(StatusEvent.recipient) == addr).values(recipient=hashed, data=None)
        .execution_options(synchronize_session=False)).rowcount or 0  # type: ignore[attr-defined]
    if only_mine:  # the payloads of a scrubbed message's other events (no recipient of their own)
        report.status_events += session.execute(
            update(StatusEvent).where(StatusEvent.message_id.in_(only_mine))
            .values(data=None).execution_options(synchronize_session=False)).rowcount or 0  # type: ignore[attr-defined]
    like = f"%{addr}%"
    for entry in session.scalars(select(AuditEntry).where(or_(
            func.lower(AuditEntry.target) == addr, func.lower(AuditEntry.reason).like(like),
            func.lower(AuditEntry.outcome).like(like), AuditEntry.changes.is_not(None)))):
        changes_text = repr(entry.changes).lower() if entry.changes is not None else ""
        if not (addr in (entry.target or "").lower() or addr in entry.reason.lower()
                or addr in entry.outcome.lower() or addr in changes_text):
            continue
        entry.target = _scrub_text(entry.target, addr, hashed)
        entry.reason = _scrub_text(entry.reason, addr, hashed) or ""
        entry.outcome = (_scrub_text(entry.outcome, addr, hashed) or "")[:255]
        if entry.changes is not None and addr in changes_text:
            entry.changes = _scrub_json(entry.changes, addr, hashed)
        report.audit_entries += 1
    for kept in list(session.scalars(select(Suppression).where(Suppression.address == addr))):
        taken = session.scalar(select(Suppression.id).where(Suppression.address == hashed,
                                                            Suppression.scope == kept.scope))
        if taken is not None:
            session.delete(kept)
        else:
            kept.address = hashed
            kept.detail = _scrub_text(kept.detail, addr, hashed)
        report.suppressions += 1


def _scrub_json(value: Any, addr: str, hashed: str) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, addr, hashed)
    if isinstance(value, list):
        return [_scrub_json(v, addr, hashed) for v in value]
    if isinstance(value, dict):
        return {(_scrub_text(k, addr, hashed) if isinstance(k, str) else k): _scrub_json(v, addr, hashed)
                for k, v in value.items()}
    return value
