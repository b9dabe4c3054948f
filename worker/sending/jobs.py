"""What a delivery attempt reads: a snapshot of the claimed message, and the events waiting for it.

Core statements on the attempt's one connection (the ORM's unit of work cost more CPU than the rest of a
delivery). Writes are not here: every change of a message's state is a transition in :mod:`worker.sending.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    Table,
    bindparam,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)

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
_JOB_FIELDS = tuple(c.name for c in _JOB_COLUMNS)


def _job_statement() -> Any:
    """The message and its queued recipients in one round trip: ``UNION ALL`` of two SELECTs.

    The row with ``part`` 0 is the message, with ``has_attachments``; rows with ``part`` 1 are its queued
    recipients, each flagged when the address is on the suppression list. Each part fills the other's columns
    with NULL (typed, so the result converts the message columns and the recipient columns as usual), and the
    bodies travel once, however many recipients there are. Built once (see :mod:`worker.sending.lifecycle`).

    Bare ``UNION ALL``, with no ORDER BY and no derived table around it: :func:`load_job` orders the rows.
    Wrapped as ``SELECT ... FROM (... UNION ALL ...) ORDER BY part, r_id`` MariaDB materialized the union with
    its TEXT bodies into a temporary table and sorted it: 0.80-0.90 ms of server CPU per load against 0.40-0.45
    ms bare, 1.5-1.7 against 1.0-1.2 ms wall (400 loads, MariaDB 10.11, docs/benchmarks.md "Session 4, round
    2"). A plain LEFT JOIN was cheaper still (0.30-0.38 ms) but repeats the bodies for every recipient.
    """
    recipient_types = {"r_id": Integer(), "r_address": R.c.address.type, "r_display_name": R.c.display_name.type,
                       "r_kind": R.c.kind.type, "r_suppressed": Boolean()}
    message = select(
        literal(0, Integer).label("part"), *_JOB_COLUMNS,
        exists().where(A.c.message_id == M.c.id).label("has_attachments"),
        *(type_coerce(null(), t).label(name) for name, t in recipient_types.items()),
    ).where(M.c.id == bindparam("tid"))
    queued = select(
        literal(1, Integer), *(null() for _ in _JOB_COLUMNS), null(),
        R.c.id, R.c.address, R.c.display_name, R.c.kind, S.c.id.is_not(None),
    ).select_from(R.outerjoin(S, S.c.address == func.lower(R.c.address))).where(
        R.c.message_id == bindparam("tid"), R.c.status == RecipientStatus.QUEUED)
    return union_all(message, queued)


_LOAD_JOB = _job_statement()
_ATTACHMENTS = (select(A.c.filename, A.c.mimetype, A.c.content).where(A.c.message_id == bindparam("tid"))
                .order_by(A.c.id))


def load_job(conn: Connection, tracking_id: str) -> SendJob:
    """The claimed message with its queued recipients (each flagged if suppressed) and attachments: one SELECT,
    plus one for the attachments when the message has any."""
    rows = sorted(conn.execute(_LOAD_JOB, {"tid": tracking_id}).all(), key=lambda r: (r.part, r.r_id or 0))
    if not rows or rows[0].part != 0:
        raise LookupError(f"tracking_id={tracking_id}: no such message")
    head = rows[0]
    job = SendJob(**{name: getattr(head, name) for name in _JOB_FIELDS})
    job.recipients = [JobRecipient(id=r.r_id, address=r.r_address, display_name=r.r_display_name, kind=r.r_kind,
                                   suppressed=bool(r.r_suppressed)) for r in rows[1:]]
    if head.has_attachments:
        job.attachments = [JobAttachment(a.filename, a.mimetype, a.content)
                           for a in conn.execute(_ATTACHMENTS, {"tid": tracking_id})]
    return job


def _pending_statement(by_provider_id: bool) -> Any:
    ours = [E.c.message_id == bindparam("tid"), E.c.tracking_ref == bindparam("tid")]
    if by_provider_id:
        ours.append(E.c.smtp2go_message_id == bindparam("provider_id"))
    return select(E.c.id).where(E.c.applied_at.is_(None), or_(*ours))


_PENDING = {False: _pending_statement(False), True: _pending_statement(True)}


def pending_event_ids(conn: Connection, tracking_id: str, smtp2go_message_id: str | None) -> list[int]:
    """Unapplied events that belong to this message: linked to it, carrying its ``X-Mailworker-Id``, or (with
    an SMTP2Go id) carrying its ``email_id``. An ``index_merge`` of three indexes (docs/benchmarks.md)."""
    statement = _PENDING[bool(smtp2go_message_id)]
    return list(conn.scalars(statement, {"tid": tracking_id, "provider_id": smtp2go_message_id}))
