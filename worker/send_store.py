"""The send path's SQL: a handful of Core statements on one connection per delivery.

Why not the ORM here: the benchmark profile (docs/benchmarks.md) showed the ORM version of one delivery making
19 MariaDB round trips (three pool checkouts, each with a ping and a reset, selectin loads, a flush per step)
and SQLAlchemy using 44% of the worker's CPU. A delivery here is: claim and mark in-flight (one UPDATE), load
the message (SELECT), load its queued recipients joined with the suppression list (SELECT), COMMIT; then, after
the provider answered, mark sent (UPDATE messages, UPDATE recipients), look for events that beat us (SELECT),
COMMIT: 8 round trips. Rare paths (take-over, suppression, failure, retry, fallback) add a statement or two.

Everything else (CLI, reconciliation, events) keeps using the ORM models; the two meet in the same tables and
in :func:`record_sent`, which both the send path and reconciliation call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, case, exists, func, null, or_, select, update
from sqlalchemy.orm import Session

from worker.models import (
    Attachment,
    Message,
    MessageStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Suppression,
    TrackingEvent,
    Transport,
    utcnow,
)
from worker.validation import format_address

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
    #: The claim already wrote (uncommitted) an SMTP2Go in-flight mark and counted the attempt: the send
    #: commits it as it is, anything else corrects it (:func:`mark_inflight`, :func:`finish`).
    speculative: bool = False


_JOB_COLUMNS = (M.c.id, M.c.crashes, M.c.attempts, M.c.api_attempts, M.c.smtp_attempts, M.c.api_abandoned,
                M.c.inflight_since, M.c.inflight_transport, M.c.sender, M.c.reply_to, M.c.subject, M.c.text_body,
                M.c.html_body, M.c.headers, M.c.template_id, M.c.template_data, M.c.message_id_header)

_FRESH_WHERE = (M.c.id == bindparam("tid"),
                M.c.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING]),
                M.c.ambiguous_since.is_(None),
                or_(M.c.next_attempt_at.is_(None), M.c.next_attempt_at <= bindparam("now")))
_LEASE = {M.c.status: MessageStatus.SENDING, M.c.lease_owner: bindparam("owner"),
          M.c.lease_expires_at: bindparam("expires"), M.c.updated_at: bindparam("now")}
_API_OK = case((M.c.api_abandoned, 0), else_=1)  # the API is still this message's transport
_CLAIM_FRESH = {
    False: update(M).where(*_FRESH_WHERE).values(_LEASE),
    # The common case, one UPDATE fewer: the claim also writes the SMTP2Go in-flight mark and counts the
    # attempt. Nothing of it is visible before the commit that precedes the API call, exactly as when the mark
    # was a statement of its own; a delivery that ends up not calling the API corrects it before it commits.
    True: update(M).where(*_FRESH_WHERE).values({
        **_LEASE,
        M.c.inflight_transport: case((M.c.api_abandoned, null()),
                                     else_=bindparam("b_api", type_=M.c.inflight_transport.type)),
        M.c.inflight_since: case((M.c.api_abandoned, null()),
                                 else_=bindparam("now", type_=M.c.inflight_since.type)),
        M.c.attempts: M.c.attempts + _API_OK,
        M.c.api_attempts: M.c.api_attempts + _API_OK,
    }),
}
_CLAIM_TAKEOVER = (
    update(M)
    .where(M.c.id == bindparam("tid"), M.c.status == MessageStatus.SENDING, M.c.lease_expires_at < bindparam("now"))
    .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("expires"), crashes=M.c.crashes + 1,
            updated_at=bindparam("now"))
)
_LOAD_MESSAGE = select(
    *_JOB_COLUMNS, exists().where(A.c.message_id == M.c.id).label("has_attachments")
).where(M.c.id == bindparam("tid"))
_LOAD_RECIPIENTS = (
    select(R.c.id, R.c.address, R.c.display_name, R.c.kind, S.c.id.is_not(None).label("suppressed"))
    .select_from(R.outerjoin(S, S.c.address == func.lower(R.c.address)))
    .where(R.c.message_id == bindparam("tid"), R.c.status == RecipientStatus.QUEUED)
    .order_by(R.c.id)
)
_LOAD_ATTACHMENTS = (
    select(A.c.filename, A.c.mimetype, A.c.content).where(A.c.message_id == bindparam("tid")).order_by(A.c.id)
)


def claim(conn: Connection, tracking_id: str, owner: str, lease_seconds: float,
          speculate: bool = False) -> str | None:
    """Take the lease on a due message: ``"fresh"``, ``"takeover"`` (its last worker died) or ``None``.

    One atomic ``UPDATE ... WHERE``; two workers racing the same id cannot both win. Not committed: the caller
    commits together with the in-flight mark (or whatever else it decides). With ``speculate`` (SMTP2Go is
    usable), a fresh claim of a message that has not given up on the API also writes the in-flight mark
    (:attr:`SendJob.speculative`).
    """
    now = utcnow()
    params = {"tid": tracking_id, "owner": owner, "now": now, "expires": now + timedelta(seconds=lease_seconds)}
    if speculate:
        params["b_api"] = Transport.SMTP2GO
    if conn.execute(_CLAIM_FRESH[speculate], params).rowcount == 1:
        return "fresh"
    if conn.execute(_CLAIM_TAKEOVER, params).rowcount == 1:
        return "takeover"
    return None


def load_job(conn: Connection, tracking_id: str) -> SendJob:
    """The claimed message with its queued recipients (each flagged if suppressed) and attachments."""
    row = conn.execute(_LOAD_MESSAGE, {"tid": tracking_id}).one()
    values = row._asdict()
    has_attachments = bool(values.pop("has_attachments"))
    job = SendJob(**values)
    job.recipients = [JobRecipient(id=r.id, address=r.address, display_name=r.display_name, kind=r.kind,
                                   suppressed=bool(r.suppressed))
                      for r in conn.execute(_LOAD_RECIPIENTS, {"tid": tracking_id})]
    if has_attachments:
        job.attachments = [JobAttachment(a.filename, a.mimetype, a.content)
                           for a in conn.execute(_LOAD_ATTACHMENTS, {"tid": tracking_id})]
    return job


def _inflight_statement(counter: str) -> Any:
    return update(M).where(M.c.id == bindparam("tid")).values(
        {M.c.inflight_transport: bindparam("b_transport"), M.c.inflight_since: bindparam("now"),
         M.c.attempts: M.c.attempts + 1, M.c[counter]: M.c[counter] + 1, M.c.updated_at: bindparam("now")})


# Statements of the hot path are built once: SQLAlchemy then finds their compiled form from a memoized cache
# key instead of walking a freshly built statement on every execution.
_INFLIGHT = {Transport.SMTP2GO: _inflight_statement("api_attempts"),
             Transport.SMTP: _inflight_statement("smtp_attempts")}


_API_TO_SMTP = update(M).where(M.c.id == bindparam("tid")).values(
    {M.c.inflight_transport: bindparam("b_transport"), M.c.inflight_since: bindparam("now"),
     M.c.api_attempts: M.c.api_attempts - 1, M.c.smtp_attempts: M.c.smtp_attempts + 1,
     M.c.updated_at: bindparam("now")})
#: Undo a speculative claim's attempt when the delivery ends without a send (its in-flight mark is released).
_UNCOUNT = {M.c.attempts: M.c.attempts - 1, M.c.api_attempts: M.c.api_attempts - 1}


def mark_inflight(conn: Connection, job: SendJob, transport: Transport) -> None:
    """Record (and commit) that a send is about to leave: a take-over after this point must not resend."""
    speculative, job.speculative = job.speculative, False
    if speculative and transport == Transport.SMTP2GO:
        conn.commit()  # the claim wrote the mark and counted the attempt
        return
    # A speculative claim that goes to the relay after all (breaker open): move its mark and count there.
    now = utcnow()
    conn.execute(_API_TO_SMTP if speculative else _INFLIGHT[transport],
                 {"tid": job.id, "b_transport": transport, "now": now})
    conn.commit()
    job.inflight_transport, job.inflight_since = transport, now
    if speculative:
        job.api_attempts -= 1
    else:
        job.attempts += 1
    if transport == Transport.SMTP2GO:
        job.api_attempts += 1
    else:
        job.smtp_attempts += 1


_RELEASE = {"lease_owner": None, "lease_expires_at": None, "inflight_since": None, "inflight_transport": None}


def finish(conn: Connection, job: SendJob, status: MessageStatus, **values: Any) -> None:
    """Leave the message in ``status`` with the lease and in-flight mark cleared (``values`` may keep some)."""
    uncount: dict[Any, Any] = {}
    if job.speculative:  # no send happened: the attempt the claim counted did not either
        job.speculative = False
        uncount = _UNCOUNT
        job.attempts -= 1
        job.api_attempts -= 1
    conn.execute(update(M).where(M.c.id == job.id).values(
        {**_RELEASE, "status": status, "updated_at": utcnow(), **values, **uncount}))


def set_recipients(conn: Connection, job: SendJob, recipients: list[JobRecipient], status: RecipientStatus,
                   error: str | None = None, stamp: str | None = None) -> None:
    """Move some of the job's queued recipients to ``status`` (with ``error`` / a timestamp column)."""
    if not recipients:
        return
    values: dict[str, Any] = {"status": status}
    if error is not None:
        values["error"] = func.coalesce(R.c.error, error)
    if stamp:
        values[stamp] = utcnow()
    conn.execute(update(R).where(R.c.id.in_([r.id for r in recipients]), R.c.status == RecipientStatus.QUEUED)
                 .values(values))
    for r in recipients:
        r.status = status


_SENT_API = update(M).where(M.c.id == bindparam("tid")).values(
    {**_RELEASE, "status": MessageStatus.SENT, "transport": Transport.SMTP2GO, "sent_at": bindparam("now"),
     "next_attempt_at": None, "ambiguous_since": None, "updated_at": bindparam("now"),
     "smtp2go_message_id": bindparam("provider_id")})
_RECIPIENTS_SENT = (update(R).where(R.c.message_id == bindparam("tid"), R.c.status == RecipientStatus.QUEUED)
                    .values(status=RecipientStatus.SENT, sent_at=bindparam("now")))
_OURS = (E.c.message_id == bindparam("tid"), E.c.tracking_ref == bindparam("tid"))
_PENDING_BY_ID = select(E.c.id).where(E.c.applied_at.is_(None), or_(*_OURS))
_PENDING_BY_ID_OR_EMAIL_ID = select(E.c.id).where(
    E.c.applied_at.is_(None), or_(*_OURS, E.c.smtp2go_message_id == bindparam("email_id")))


def pending_event_ids(conn: Connection, tracking_id: str, smtp2go_message_id: str | None) -> list[int]:
    """Unapplied events that belong to this message: linked to it, carrying its ``X-Mailworker-Id``, or (with
    an SMTP2Go id) carrying its ``email_id``. An ``index_merge`` of three indexes (docs/benchmarks.md)."""
    if smtp2go_message_id:
        return list(conn.scalars(_PENDING_BY_ID_OR_EMAIL_ID, {"tid": tracking_id, "email_id": smtp2go_message_id}))
    return list(conn.scalars(_PENDING_BY_ID, {"tid": tracking_id}))


def record_sent(conn: Connection, tracking_id: str, transport: Transport, provider_id: str,
                refused: dict[str, str] | None = None, **values: Any) -> int:
    """Mark a message sent (its queued recipients sent, or rejected when the relay refused them) and apply the
    events that arrived before its provider id was known. Returns how many such events were applied.

    Runs inside the caller's transaction (which it does not commit): the send path's and reconciliation's.
    The message row is updated first, so its lock is taken before any event row, the order every writer uses.
    """
    now = utcnow()
    if transport == Transport.SMTP2GO and not values:
        conn.execute(_SENT_API, {"tid": tracking_id, "now": now, "provider_id": provider_id})
    else:
        ids = {"smtp2go_message_id": provider_id} if transport == Transport.SMTP2GO else (
            {"message_id_header": provider_id} if provider_id else {})
        conn.execute(update(M).where(M.c.id == tracking_id).values(
            {**_RELEASE, "status": MessageStatus.SENT, "transport": transport, "sent_at": now,
             "next_attempt_at": None, "ambiguous_since": None, "updated_at": now, **ids, **values}))
    if refused:
        for address, why in refused.items():
            conn.execute(update(R).where(R.c.message_id == tracking_id, R.c.status == RecipientStatus.QUEUED,
                                         func.lower(R.c.address) == address.lower())
                         .values(status=RecipientStatus.REJECTED, rejected_at=now, error=why))
    conn.execute(_RECIPIENTS_SENT, {"tid": tracking_id, "now": now})
    pending = pending_event_ids(conn, tracking_id, provider_id if transport == Transport.SMTP2GO else None)
    if not pending:
        return 0
    from worker.events import link_pending_events

    with Session(bind=conn) as session:  # joins the caller's transaction; never commits it
        message = session.get(Message, tracking_id)
        assert message is not None
        applied = link_pending_events(session, message, pending)
        session.flush()
    return applied
