"""What a delivery attempt reads: a snapshot of the claimed message, and the events waiting for it.

Core statements on the attempt's one connection. Writes are not here: every change of a message's state is a
transition in :mod:`worker.sending.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, or_, select

from worker.api.validation import format_address
from worker.infrastructure.models import (
    Attachment,
    Message,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Suppression,
    TrackingEvent,
    Transport,
)

M = cast(Table, Message.__table__)
R = cast(Table, Recipient.__table__)
A = cast(Table, Attachment.__table__)
S = cast(Table, Suppression.__table__)
E = cast(Table, TrackingEvent.__table__)


@dataclass
class JobRecipient:
    """A recipient still to be sent to (status ``queued``)."""

    id: int
    address: str
    display_name: str | None
    kind: RecipientKind
    suppressed: bool
    status: RecipientStatus = RecipientStatus.QUEUED

    @property
    def formatted(self) -> str:
        return format_address(self.address, self.display_name)


@dataclass
class JobAttachment:
    filename: str
    mimetype: str
    content: bytes | None = field(repr=False)


@dataclass
class SendJob:
    """A snapshot of one claimed message: what the send path reads, with the counters it keeps current."""

    id: str
    crashes: int
    attempts: int
    api_attempts: int
    smtp_attempts: int
    api_abandoned: bool
    inflight_since: datetime | None
    inflight_transport: Transport | None
    sender: str
    reply_to: str | None
    subject: str | None
    text_body: str | None = field(repr=False)
    html_body: str | None = field(repr=False)
    headers: dict[str, str] | None
    template_id: str | None
    template_data: dict[str, Any] | None = field(repr=False)
    message_id_header: str | None
    recipients: list[JobRecipient] = field(default_factory=list)
    attachments: list[JobAttachment] = field(default_factory=list)


_JOB_COLUMNS = (M.c.id, M.c.crashes, M.c.attempts, M.c.api_attempts, M.c.smtp_attempts, M.c.api_abandoned,
                M.c.inflight_since, M.c.inflight_transport, M.c.sender, M.c.reply_to, M.c.subject, M.c.text_body,
                M.c.html_body, M.c.headers, M.c.template_id, M.c.template_data, M.c.message_id_header)


def load_job(conn: Connection, tracking_id: str) -> SendJob:
    """The claimed message with its queued recipients (each flagged if suppressed) and its attachments."""
    head = conn.execute(select(*_JOB_COLUMNS).where(M.c.id == tracking_id)).one_or_none()
    if head is None:
        raise LookupError(f"tracking_id={tracking_id}: no such message")
    job = SendJob(**head._asdict())
    queued = (select(R.c.id, R.c.address, R.c.display_name, R.c.kind, S.c.id.is_not(None).label("suppressed"))
              .select_from(R.outerjoin(S, S.c.address == func.lower(R.c.address)))
              .where(R.c.message_id == tracking_id, R.c.status == RecipientStatus.QUEUED).order_by(R.c.id))
    job.recipients = [JobRecipient(id=r.id, address=r.address, display_name=r.display_name, kind=r.kind,
                                   suppressed=bool(r.suppressed)) for r in conn.execute(queued)]
    job.attachments = [JobAttachment(a.filename, a.mimetype, a.content) for a in conn.execute(
        select(A.c.filename, A.c.mimetype, A.c.content).where(A.c.message_id == tracking_id).order_by(A.c.id))]
    return job


def pending_event_ids(conn: Connection, tracking_id: str, provider_message_id: str | None) -> list[int]:
    """Unapplied events that belong to this message: linked to it, carrying its tracking id, or (with a provider
    message id) carrying that id."""
    ours = [E.c.message_id == tracking_id, E.c.tracking_ref == tracking_id]
    if provider_message_id:
        ours.append(E.c.smtp2go_message_id == provider_message_id)
    return list(conn.scalars(select(E.c.id).where(E.c.applied_at.is_(None), or_(*ours))))
