"""What a delivery attempt reads: a snapshot of the claimed message, and the events waiting for it.

Core statements on the attempt's one connection. Writes are not here: every change of a message's state is a
transition in :mod:`worker.sending.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, exists, func, or_, select

from worker.api.validation import format_address
from worker.infrastructure.models import (
    Attachment,
    Attempt,
    AttemptOutcome,
    Message,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Suppression,
    TrackingEvent,
)

M = cast(Table, Message.__table__)
R = cast(Table, Recipient.__table__)
A = cast(Table, Attachment.__table__)
S = cast(Table, Suppression.__table__)
E = cast(Table, TrackingEvent.__table__)
T = cast(Table, Attempt.__table__)


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
    attempts: int  # since the message (re)started: the rows of ``history`` that count against budgets
    inflight_since: datetime | None
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
    #: (provider, outcome) of the attempts that count against the budgets, oldest first.
    history: list[tuple[str, AttemptOutcome]] = field(default_factory=list)
    inflight_attempt: int | None = None  # the row of an attempt left in flight (its worker died)
    list_id: str | None = None  # the mailing list it belongs to (None: transactional)

    def used(self, provider: str) -> int:
        """Attempts handed to ``provider`` (those that met an operator problem spend no budget)."""
        return sum(1 for name, outcome in self.history if name == provider and outcome != AttemptOutcome.HELD)

    def count(self, provider: str) -> None:
        self.attempts += 1
        self.history.append((provider, AttemptOutcome.IN_FLIGHT))

    def gave_up(self, provider: str, retries: int) -> bool:
        """Whether ``provider`` refused this message for good or used up its budget for it."""
        return (self.used(provider) > retries
                or any(name == provider and outcome == AttemptOutcome.REFUSED for name, outcome in self.history))


_JOB_COLUMNS = (M.c.id, M.c.crashes, M.c.attempts, M.c.inflight_since, M.c.sender, M.c.reply_to, M.c.subject,
                M.c.text_body, M.c.html_body, M.c.headers, M.c.template_id, M.c.template_data,
                M.c.message_id_header)


def _job_statement() -> Any:
    """The message (with ``list_id`` and whether it has attachments) LEFT JOINed to its queued recipients, each
    flagged when its address is suppressed for every list or for this message's list: one round trip. The
    message's columns repeat on every recipient row (transactional mail has one or a few recipients; a message
    without queued recipients gives one row with NULL recipient columns)."""
    from worker.compliance.keys import HASH_PREFIX

    list_column = M.c.get("list_id")
    scope = S.c.scope == "" if list_column is None else or_(S.c.scope == "", S.c.scope == list_column)
    suppressed = exists().where(S.c.address == func.lower(R.c.address), scope)
    erased = exists().where(S.c.address.like(f"{HASH_PREFIX}%"), scope)  # any erased address in these scopes
    queued = R.c.message_id == M.c.id
    return (select(*_JOB_COLUMNS, *([list_column.label("list_id")] if list_column is not None else []),
                   exists().where(A.c.message_id == M.c.id).label("has_attachments"), erased.label("has_erased"),
                   R.c.id.label("r_id"), R.c.address.label("r_address"), R.c.display_name.label("r_display_name"),
                   R.c.kind.label("r_kind"), suppressed.label("r_suppressed"))
            .select_from(M.outerjoin(R, and_(queued, R.c.status == RecipientStatus.QUEUED)))
            .order_by(R.c.id))


_JOB_FIELDS = tuple(c.name for c in _JOB_COLUMNS)


def load_job(conn: Connection, tracking_id: str) -> SendJob:
    """The claimed message with its queued recipients (each flagged if suppressed) and its attachments: one
    SELECT, plus one for the attachments when it has any and one for its attempt history when it has any."""
    rows = conn.execute(_job_statement().where(M.c.id == tracking_id)).all()
    if not rows:
        raise LookupError(f"tracking_id={tracking_id}: no such message")
    head = rows[0]._mapping
    job = SendJob(**{name: head[name] for name in _JOB_FIELDS})
    job.list_id = head.get("list_id") or None
    scopes = ["", job.list_id] if job.list_id else [""]
    job.recipients = [JobRecipient(id=r.r_id, address=r.r_address, display_name=r.r_display_name, kind=r.r_kind,
                                   suppressed=bool(r.r_suppressed)) for r in rows if r.r_id is not None]
    if head["has_erased"]:
        _flag_erased(conn, job, scopes)
    if head["has_attachments"]:
        job.attachments = [JobAttachment(a.filename, a.mimetype, a.content) for a in conn.execute(
            select(A.c.filename, A.c.mimetype, A.c.content).where(A.c.message_id == tracking_id).order_by(A.c.id))]
    if job.attempts:
        history = conn.execute(select(T.c.id, T.c.provider, T.c.outcome).where(T.c.message_id == tracking_id)
                               .order_by(T.c.id.desc()).limit(job.attempts)).all()
        job.history = [(r.provider, r.outcome) for r in reversed(history)]
        if job.inflight_since is not None and history and history[0].outcome == AttemptOutcome.IN_FLIGHT:
            job.inflight_attempt = history[0].id
    return job


def _flag_erased(conn: Connection, job: SendJob, scopes: list[str]) -> None:
    """Flag recipients whose address was erased while suppressed: the entry holds its keyed hash only (called
    when the job's SELECT saw such an entry in its scopes)."""
    from worker.compliance.keys import address_hash, secret

    open_ = [r for r in job.recipients if not r.suppressed]
    master = secret()
    if not open_ or not master:
        return
    hashes = {address_hash(r.address, master): r for r in open_}
    for value in conn.scalars(select(S.c.address).where(S.c.address.in_(list(hashes)), S.c.scope.in_(scopes))):
        hashes[value].suppressed = True


def pending_event_ids(conn: Connection, tracking_id: str, provider_message_id: str | None) -> list[int]:
    """Unapplied events that belong to this message: linked to it, carrying its tracking id, or (with a provider
    message id) carrying that id."""
    ours = [E.c.message_id == tracking_id, E.c.tracking_ref == tracking_id]
    if provider_message_id:
        ours.append(E.c.smtp2go_message_id == provider_message_id)
    return list(conn.scalars(select(E.c.id).where(E.c.applied_at.is_(None), or_(*ours))))


def load_jobs(conn: Connection, tracking_ids: list[str]) -> dict[str, SendJob]:
    """:func:`load_job` for a batch of claimed messages: ONE SELECT for every message with its queued recipients,
    plus one for the attachments of those that have any and one for the attempt history of those that have
    any (each only when needed). Missing ids are left out."""
    if not tracking_ids:
        return {}
    jobs: dict[str, SendJob] = {}
    erased: list[SendJob] = []
    with_attachments: list[str] = []
    for row in conn.execute(_job_statement().where(M.c.id.in_(tracking_ids))):
        head = row._mapping
        job = jobs.get(head["id"])
        if job is None:
            job = jobs[head["id"]] = SendJob(**{name: head[name] for name in _JOB_FIELDS})
            job.list_id = head.get("list_id") or None
            if head["has_erased"]:
                erased.append(job)
            if head["has_attachments"]:
                with_attachments.append(job.id)
        if row.r_id is not None:
            job.recipients.append(JobRecipient(id=row.r_id, address=row.r_address, display_name=row.r_display_name,
                                               kind=row.r_kind, suppressed=bool(row.r_suppressed)))
    for job in erased:
        _flag_erased(conn, job, ["", job.list_id] if job.list_id else [""])
    if with_attachments:
        for a in conn.execute(select(A.c.message_id, A.c.filename, A.c.mimetype, A.c.content)
                              .where(A.c.message_id.in_(with_attachments)).order_by(A.c.id)):
            jobs[a.message_id].attachments.append(JobAttachment(a.filename, a.mimetype, a.content))
    retried = [job.id for job in jobs.values() if job.attempts]
    if retried:
        rows: dict[str, list[Any]] = {}
        for r in conn.execute(select(T.c.id, T.c.message_id, T.c.provider, T.c.outcome)
                              .where(T.c.message_id.in_(retried)).order_by(T.c.id)):
            rows.setdefault(r.message_id, []).append(r)
        for tid, history in rows.items():
            job = jobs[tid]
            last = history[-job.attempts:]
            job.history = [(r.provider, r.outcome) for r in last]
            if job.inflight_since is not None and last and last[-1].outcome == AttemptOutcome.IN_FLIGHT:
                job.inflight_attempt = last[-1].id
    return jobs


def pending_event_owners(conn: Connection, provider_ids: dict[str, str | None]) -> set[str]:
    """Which of the messages ``provider_ids`` (tracking id -> the provider id its events carry, or None) have
    unapplied events waiting (:func:`pending_event_ids` for a batch, in ONE SELECT)."""
    if not provider_ids:
        return set()
    ids = list(provider_ids)
    by_provider_id = {pid: tid for tid, pid in provider_ids.items() if pid}
    ours = [E.c.message_id.in_(ids), E.c.tracking_ref.in_(ids)]
    if by_provider_id:
        ours.append(E.c.smtp2go_message_id.in_(list(by_provider_id)))
    owners: set[str] = set()
    for row in conn.execute(select(E.c.message_id, E.c.tracking_ref, E.c.smtp2go_message_id)
                            .where(E.c.applied_at.is_(None), or_(*ours))):
        for key in (row.message_id, row.tracking_ref):
            if key in provider_ids:
                owners.add(key)
        if row.smtp2go_message_id in by_provider_id:
            owners.add(by_provider_id[row.smtp2go_message_id])
    return owners
