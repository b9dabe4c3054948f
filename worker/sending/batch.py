"""The bulk lane's send service: a batch of emails claimed, marked in flight, sent and recorded together.

``mailworker.send_batch(tracking_ids)`` wraps :func:`send_batch`. One batch is: claim every given message that
is still due with one lease owner (:func:`worker.sending.lifecycle.claim_batch`), drop suppressed recipients per
email, mark the rest in flight in ONE commit (:func:`~worker.sending.lifecycle.mark_batch_in_flight`), send them
through the first provider of ``MAIL_PROVIDERS`` that can take a batch (a transport with ``send_batch``: SMTP2Go's
``/email/batch``, the relay's one SMTP connection), and record every email's own outcome (its attempt row, status,
events and status callbacks) with :func:`worker.sending.policy.decide`, in one transaction.

Per email, never per batch:

- an email the provider refused *with its batch* (a 4xx about the request, not naming the item) is sent alone
  through the single-send path, so only the offending email fails or falls back;
- an email whose outcome is unknown (a 5xx, a timeout, a lost answer) is parked; :func:`settle_parked` settles
  the parked emails of one batch with one activity search over the batch's window (``mailworker.settle_batch``);
- a rate limit (429) retries the whole batch later, nothing sent.

Rows of ``tracking_ids`` this batch does not claim (not due yet, expired, leased by a dead worker) go through the
single-send claim, which leaves a not-yet-due email queued, expires an expired one and takes over a dead worker's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Table, func, select

from worker import providers
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import Attempt, AttemptOutcome, Message, MessageStatus, utcnow
from worker.providers.base import Accepted, Held, NotSent, Outcome, OutgoingEmail, ParkedSend, Unknown
from worker.providers.breaker import before_api_send, pause_for_rate_limit, record_failure, record_success
from worker.sending import lifecycle
from worker.sending.delivery import AttemptResult, OutcomeKind, _apply, _finish, deliver, policy_for, send_through_chain
from worker.sending.jobs import SendJob, load_job, load_jobs
from worker.sending.lifecycle import Lease, LeaseLost
from worker.sending.policy import decide

log = logging.getLogger(__name__)

M: Table = Message.__table__  # type: ignore[assignment]
T: Table = Attempt.__table__  # type: ignore[assignment]

#: First look at a parked batch after this many seconds, then every ``SETTLE_AGAIN`` until it is settled.
SETTLE_FIRST, SETTLE_AGAIN = 5.0, 60.0


class BatchTransport(Protocol):
    """A transport that can send several emails at once: one outcome per email, in order; ``departing`` gets
    the tracking ids that leave, once, just before anything can leave."""

    def send_batch(self, emails: list[OutgoingEmail], departing: Any = None) -> list[Outcome]: ...


@dataclass
class BatchReport:
    """What one batch did: outcomes per kind, the provider, and the ids parked (for :func:`settle_parked`)."""

    size: int = 0
    claimed: int = 0
    provider: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    parked: list[str] = field(default_factory=list)
    later: list[str] = field(default_factory=list)  # retrying or held: all due again after ``retry_delay``
    retry_delay: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "claimed": self.claimed, "provider": self.provider,
                "outcomes": dict(self.outcomes), "parked": len(self.parked)}


def send_batch(tracking_ids: list[str], *, owner: str, settings: Settings | None = None) -> BatchReport:
    """Send ``tracking_ids`` as one batch (see the module docstring); chunks of ``BULK_BATCH_SIZE`` when longer."""
    settings = settings or get_settings()
    ids = list(dict.fromkeys(str(t) for t in tracking_ids))
    report = BatchReport(size=len(ids))
    for start in range(0, len(ids), settings.bulk_batch_size):
        _send_chunk(ids[start:start + settings.bulk_batch_size], owner, settings, report)
    return report


def _send_chunk(ids: list[str], owner: str, settings: Settings, report: BatchReport) -> None:
    with get_engine().connect() as conn:
        leases = lifecycle.claim_batch(conn, ids, owner=owner, lease_seconds=settings.send_lease_seconds)
        report.claimed += len(leases)
        claimed = {lease.tracking_id for lease in leases}
        try:
            _send_claimed(conn, leases, settings, report)
        except LeaseLost as err:
            log.error("batch abandoned, %s; its emails are left to the new owner and reconciliation", err)
            report.outcomes[OutcomeKind.SKIPPED] += len(leases)
        conn.commit()
    for tracking_id in ids:  # not claimed together: the single-send claim decides (not due, expired, take-over)
        if tracking_id not in claimed:
            result = deliver(tracking_id, owner=f"{owner}:{tracking_id}", settings=settings)
            report.outcomes[result.kind] += 1


def _send_claimed(conn: Connection, leases: list[Lease], settings: Settings, report: BatchReport) -> None:
    items: list[tuple[Lease, SendJob, OutgoingEmail]] = []
    jobs = load_jobs(conn, [lease.tracking_id for lease in leases])
    lifecycle.suppress_batch_recipients(conn, [r.id for job in jobs.values() for r in job.recipients if r.suppressed])
    for lease in leases:
        job = jobs.get(lease.tracking_id) or load_job(conn, lease.tracking_id)  # load_job names a missing one
        job.recipients = [r for r in job.recipients if not r.suppressed]
        if not job.recipients:
            lifecycle.suppress(conn, lease)
            report.outcomes[OutcomeKind.SUPPRESSED] += 1
            continue
        items.append((lease, job, OutgoingEmail.from_message(job)))
    if not items:
        return
    chain = providers.chain(settings)
    picked = _batch_provider(conn, chain, items, settings)
    if picked is None:  # no provider of the chain takes batches now: each email through the single-send path
        for lease, job, email in items:
            _count(report, send_through_chain(conn, lease, job, email, chain, settings))
        return
    name, transport = picked
    report.provider = name
    attempt_ids: dict[str, int] = {}
    started = utcnow()
    by_id = {lease.tracking_id: (lease, job) for lease, job, _ in items}

    def departing(leaving: list[str]) -> None:
        attempt_ids.update(lifecycle.mark_batch_in_flight(
            conn, [by_id[t][0] for t in leaving], name, lease_seconds=settings.send_lease_seconds))
        for t in leaving:
            by_id[t][1].count(name)

    stopped = _gate(name, settings)
    if stopped is not None:
        outcomes: list[Outcome] = [stopped] * len(items)
    else:
        outcomes = transport.send_batch([email for _, _, email in items], departing)
        _tell_breaker(name, outcomes, settings)
    providers_left = len(chain) - chain.index(name) - 1
    policy = policy_for(name, settings)
    rest = _record_accepted(conn, items, outcomes, attempt_ids, name, started, report)
    for (lease, job, email), outcome in rest:
        attempt_id = attempt_ids.get(lease.tracking_id)
        if isinstance(outcome, NotSent) and outcome.declined and not outcome.retryable:
            # refused with its batch, not for itself: this email alone finds out whether it is the offending one
            if attempt_id is not None:
                lifecycle.finish_attempt(conn, attempt_id, AttemptOutcome.NOT_SENT, started=started,
                                         error=f"{outcome.reason}; sent alone")
            _count(report, send_through_chain(conn, lease, job, email, chain, settings))
            continue
        transition = decide(outcome, job.used(name), policy, providers_left=providers_left, provider=name)
        if attempt_id is not None:
            _finish(conn, attempt_id, outcome, started)
        result = _apply(conn, lease, job, name, outcome, transition, policy)
        if result is None:  # NEXT: the following providers of the chain send this attempt
            result = send_through_chain(conn, lease, job, email, chain[chain.index(name) + 1:], settings)
        _count(report, result)
        if result.kind == OutcomeKind.PARKED and isinstance(outcome, Unknown):
            report.parked.append(lease.tracking_id)
        if result.kind in (OutcomeKind.RETRY, OutcomeKind.HELD) and result.delay is not None:
            report.later.append(lease.tracking_id)
            report.retry_delay = max(report.retry_delay or 0.0, result.delay)  # every one due by then


def _record_accepted(conn: Connection, items: list[tuple[Lease, SendJob, OutgoingEmail]], outcomes: list[Outcome],
                     attempt_ids: dict[str, int], name: str, started: datetime,
                     report: BatchReport) -> list[tuple[tuple[Lease, SendJob, OutgoingEmail], Outcome]]:
    """Record the common outcome -- accepted whole, every recipient taken -- for all such emails of the batch
    together (:func:`~worker.sending.lifecycle.record_batch_accepted`, a statement per table, first in the
    recording transaction); returns the other emails, which each take the per-email path. An email whose lease
    was lost is not written (skipped, its attempt row left in flight, as the single path leaves it)."""
    whole: list[lifecycle.BatchAccepted] = []
    rest: list[tuple[tuple[Lease, SendJob, OutgoingEmail], Outcome]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        attempt_id = attempt_ids.get(item[0].tracking_id)
        if isinstance(outcome, Accepted) and not outcome.refused and not outcome.deferred and attempt_id is not None:
            whole.append(lifecycle.BatchAccepted(item[0], outcome.provider_id, attempt_id))
        else:
            rest.append((item, outcome))
    lost = lifecycle.record_batch_accepted(conn, whole, name, started=started)
    if len(whole) > len(lost):
        report.outcomes[OutcomeKind.SENT] += len(whole) - len(lost)
    if lost:
        report.outcomes[OutcomeKind.SKIPPED] += len(lost)
    return rest


def _count(report: BatchReport, result: AttemptResult) -> None:
    report.outcomes[result.kind] += 1


def _batch_provider(conn: Connection, chain: list[str], items: list[tuple[Lease, SendJob, OutgoingEmail]],
                    settings: Settings) -> tuple[str, BatchTransport] | None:
    """The first provider of the chain that is configured, has budget for every email and can send a batch;
    None sends each email alone (the single path handles holds and fallbacks as it always does)."""
    for name in chain:
        if any(job.gave_up(name, policy_for(name, settings).retries) for _, job, _ in items):
            return None
        transport = providers.get(name).transport(name, providers.variant_of(name), conn, settings)
        if transport is None:
            continue
        if isinstance(transport, Held) or not hasattr(transport, "send_batch"):
            return None
        return name, transport  # type: ignore[return-value]
    return None


def _gate(name: str, settings: Settings) -> NotSent | None:
    """The breaker and rate limit of ``name`` for this batch (one request): None to go, else the outcome every
    email gets without a request, as :class:`~worker.providers.breaker.Breaker` answers a single send."""
    gate = before_api_send(settings, name)
    if gate.verdict == "open":
        return NotSent(retryable=True, reason=f"{name} circuit breaker open for {gate.wait:.0f}s: "
                       f"{gate.problem or 'failures'}", retry_after=gate.wait, declined=True, problem=gate.problem)
    if gate.verdict == "paused":
        return NotSent(retryable=True, reason=f"{name} rate limit: waiting {gate.wait:.1f}s", retry_after=gate.wait)
    return None


def _tell_breaker(name: str, outcomes: list[Outcome], settings: Settings) -> None:
    """What the batch's answer says about the service, as :class:`~worker.providers.breaker.Breaker` records a
    single send's: a 429 pauses every worker, an unknown or retryable answer is a failure, any answer is a
    success. Unbuildable items say nothing."""
    sent = [o for o in outcomes if not (isinstance(o, NotSent) and o.unbuildable)]
    if not sent:
        return
    first = sent[0]
    if isinstance(first, NotSent) and first.rate_limited:
        pause_for_rate_limit(first.retry_after or 1.0, settings, name)
    elif isinstance(first, Unknown) or (isinstance(first, NotSent) and first.retryable):
        record_failure(settings, None, name)
    elif not isinstance(first, Held):
        record_success(settings, None, name)


# ------------------------------------------------------------------------------------------ reconciliation


@dataclass
class SettleReport:
    """What one settling of a parked batch did (``requests``/``stopped``/``error`` as the reconciler counts)."""

    resolved_sent: int = 0
    released: list[str] = field(default_factory=list)
    waiting: int = 0
    requests: int = 0
    stopped: str | None = None
    error: str | None = None
    filled_events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"resolved_sent": self.resolved_sent, "released": len(self.released), "waiting": self.waiting,
                "requests": self.requests, "stopped": self.stopped}


def _parked(tracking_ids: list[str]) -> list[ParkedSend]:
    """The emails of ``tracking_ids`` still parked, each with the provider and start of its last attempt."""
    with session_scope() as session:
        rows = session.execute(
            select(M.c.id, M.c.ambiguous_since, T.c.provider, func.max(T.c.started_at).label("started"))
            .join(T, T.c.message_id == M.c.id)
            .where(M.c.id.in_(tracking_ids), M.c.status == MessageStatus.PARKED)
            .group_by(M.c.id, M.c.ambiguous_since, T.c.provider)).all()
    latest: dict[str, ParkedSend] = {}
    for row in rows:
        started: datetime = row.started
        if row.id not in latest or started > latest[row.id].earliest_send:
            latest[row.id] = ParkedSend(tracking_id=row.id, provider=row.provider, parked_since=row.ambiguous_since,
                                        earliest_send=started)
    return list(latest.values())


def settle_parked(tracking_ids: list[str], settings: Settings | None = None, *,
                  max_requests: int = 10) -> SettleReport:
    """Settle the parked emails of one batch: per provider, ONE paged activity search over the batch's window
    (the reconciler's ``settle_window``; a provider without it is asked per email). ``accepted`` ->
    :func:`~worker.sending.lifecycle.settle_accepted` (never resent); ``not_sent`` ->
    :func:`~worker.sending.lifecycle.release_parked` (its id in ``released``: the caller publishes them again)."""
    settings = settings or get_settings()
    report = SettleReport()
    parked = _parked(list(tracking_ids))
    by_provider: dict[str, list[ParkedSend]] = {}
    for p in parked:
        by_provider.setdefault(p.provider, []).append(p)
    for name, group in by_provider.items():
        with session_scope() as session:
            reconciler = providers.get(name).reconciler(name, providers.variant_of(name), session.connection(),
                                                        settings, report=report, max_requests=max_requests)
        if reconciler is None:
            report.waiting += len(group)
            continue
        window = getattr(reconciler, "settle_window", None)
        verdicts = window(group) if window is not None else {p.tracking_id: reconciler.settle(p) for p in group}
        for p in group:
            verdict = verdicts[p.tracking_id]
            with session_scope() as session:
                conn = session.connection()
                if verdict.kind == "accepted" and verdict.provider_message_id:
                    report.resolved_sent += int(lifecycle.settle_accepted(
                        conn, p.tracking_id, provider=name, provider_id=verdict.provider_message_id,
                        note=f"reconciled: {verdict.note}"))
                elif verdict.kind == "not_sent" and lifecycle.release_parked(
                        conn, p.tracking_id, note=f"reconciled: {verdict.note}", parked_since=p.parked_since):
                    report.released.append(p.tracking_id)
                else:
                    report.waiting += 1
    if parked:
        log.info("settle batch %s", report.as_dict())
    return report
