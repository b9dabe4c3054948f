"""Reconciliation: settle parked sends through the provider that took them, and fill in missing webhooks.

Run by the ``mailworker.reconcile`` beat task. A parked message (``parked``: a provider may have accepted the last
attempt) is never sent again before its outcome is known. For each, in order:

1. a webhook already stored with our tracking id and a provider message id settles it without a request;
2. otherwise the reconciler of the provider named on its parked attempt is asked
   (:meth:`worker.providers.base.Reconciler.settle`): ``accepted`` -> :func:`worker.sending.lifecycle.settle_accepted`,
   ``not_sent`` -> :func:`worker.sending.lifecycle.release_parked` (sent again, through the chain), ``wait`` ->
   it stays parked (``unusable`` when the provider cannot be asked from this host: the report counts those).

Parked emails of the bulk lane (``batch_id`` set) are settled by their batch's ``mailworker.settle_batch`` while
it waits for them: ``send_batch`` records their ids as *settling* in the broker's Redis (``<bulk queue>:settling``,
a sorted set scored with a deadline that each ``settle_batch`` run pushes on, :func:`mark_settling`), and this
pass skips them, so the two never search for the same email. Parked bulk emails nobody is settling (a worker died
mid-batch and the take-over parked them; the broker lost the ``settle_batch`` message and the marker with it; the
deadline passed) are settled here per batch: ONE activity search over the batch's window
(``settle_window``) for every email of a ``batch_id``, not one per email. Both share the provider's request budget
(:func:`worker.providers.breaker.take_activity_request`).

Then every provider of the chain may record events its webhooks missed
(:meth:`~worker.providers.base.Reconciler.fill_missing_events`), through the normal, idempotent event path.
Database transactions are never held open across a provider request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from worker import providers
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Attempt,
    AttemptOutcome,
    Message,
    MessageStatus,
    RecipientStatus,
    TrackingEvent,
    utcnow,
)
from worker.providers.base import NormalizedEvent, ParkedSend, Reconciler, Verdict
from worker.sending.lifecycle import release_parked, settle_accepted

log = logging.getLogger(__name__)

ACTIVITY_PAGE_MAX = 1000
#: How long a batch's parked emails count as being settled by its ``settle_batch`` after its last run (which
#: comes every ``SETTLE_AGAIN`` = 60 s while any email waits): three missed runs hand them to this pass.
SETTLING_TTL = 180.0


@dataclass
class ReconcileReport:
    """What one run did. ``stopped`` names why API work ended early (``credentials``, ``rate_limited``,
    ``server_error``, ``unreachable``, ``refused``, ``unreadable`` or ``budget``) and ``error`` says it in a line;
    ``held_unusable`` counts parked sends kept parked because their provider cannot be asked from this host."""

    resolved_sent: int = 0
    released: int = 0
    still_ambiguous: int = 0
    held_unusable: int = 0
    filled_events: int = 0
    requests: int = 0
    stopped: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def reconcile(settings: Settings | None = None, *, settle: float = 30, fill_after: float = 3600,
              max_requests: int = 20, page_size: int = ACTIVITY_PAGE_MAX) -> ReconcileReport:
    """One reconciliation pass (see the module docstring). ``settle``: seconds a message must have been parked
    before it is looked at; ``max_requests``/``page_size``/``fill_after`` are passed to the providers."""
    settings = settings or get_settings()
    report = ReconcileReport()
    now = utcnow()
    options: dict[str, Any] = {"report": report, "max_requests": max_requests, "page_size": page_size,
                               "fill_after": fill_after}
    reconcilers: dict[str, Reconciler | None] = {}

    def reconciler_of(name: str) -> Reconciler | None:
        if name not in reconcilers:
            with session_scope() as session:
                reconcilers[name] = providers.get(name).reconciler(
                    name, providers.variant_of(name), session.connection(), settings, **options)
        return reconcilers[name]

    with session_scope() as session:
        parked, batch_of = _load_parked(session, now - timedelta(seconds=settle))
    waiting_for_batch = settling([m.tracking_id for m in parked if m.tracking_id in batch_of])
    unusable: set[str] = set()
    batches: dict[tuple[str, str], list[ParkedSend]] = {}
    singles: list[ParkedSend] = []
    for message in parked:
        if message.tracking_id in waiting_for_batch:
            continue  # its batch's settle_batch is on it
        email_id = _webhook_email_id(message.tracking_id)
        if email_id is not None:
            _settle(message, email_id, "a webhook named the provider's id for the ambiguous send", report)
        elif message.tracking_id in batch_of:
            batches.setdefault((batch_of[message.tracking_id], message.provider), []).append(message)
        else:
            singles.append(message)
    verdicts: list[tuple[ParkedSend, Verdict | None]] = []
    for (_, name), group in batches.items():
        reconciler = _reconciler_or_none(reconciler_of, name)
        window = getattr(reconciler, "settle_window", None)
        if window is None:
            singles += group
            continue
        found = window(group)
        verdicts += [(message, found[message.tracking_id]) for message in group]
    for message in singles:
        reconciler = _reconciler_or_none(reconciler_of, message.provider)
        verdicts.append((message, reconciler.settle(message) if reconciler is not None else None))
    for message, verdict in verdicts:
        if verdict is None:
            report.held_unusable += 1
            unusable.add(f"{message.provider}: it cannot be asked")
        elif verdict.kind == "accepted" and verdict.provider_message_id:
            _settle(message, verdict.provider_message_id, verdict.note, report)
        elif verdict.kind == "not_sent":
            with session_scope() as session:
                report.released += int(release_parked(session.connection(), message.tracking_id,
                                                      note=f"reconciled: {verdict.note}",
                                                      parked_since=message.parked_since))
        elif verdict.unusable:
            report.held_unusable += 1
            unusable.add(verdict.note)
        else:
            report.still_ambiguous += 1
    if unusable:
        log.warning("reconcile: %d parked send(s) stay parked; none is released without a completed search: %s",
                    report.held_unusable, "; ".join(sorted(unusable)))
    for name in providers.chain(settings):
        reconciler = reconciler_of(name)
        if reconciler is not None:
            reconciler.fill_missing_events(_record)
    if any(report.as_dict().values()):
        log.info("reconcile %s", report.as_dict())
    return report


def _reconciler_or_none(reconciler_of: Any, name: str) -> Reconciler | None:
    try:
        return reconciler_of(name)
    except KeyError as err:
        log.warning("reconcile: %s", err)
        return None


# ------------------------------------------------------------------ parked bulk emails a settle_batch is settling


def _settling_key() -> str:
    from worker.celery_app import app

    return f"{app.conf.bulk_queue}:settling"


def _broker() -> Any | None:
    from worker.sending.publish import broker_redis

    try:
        return broker_redis()
    except Exception:  # noqa: BLE001 - not a Redis broker URL we can read
        return None


def mark_settling(tracking_ids: Iterable[str], ttl: float = SETTLING_TTL) -> None:
    """``settle_batch`` is (still) settling these parked emails: the periodic pass leaves them alone for ``ttl``
    seconds. Without a Redis broker (or with Redis down) nothing is marked: both may then search, which costs
    requests but is safe (every settlement is fenced on the parked status)."""
    ids = [str(t) for t in tracking_ids]
    client = _broker()
    if not ids or client is None:
        return
    now = time.time()
    try:
        pipe = client.pipeline()
        pipe.zadd(_settling_key(), {t: now + ttl for t in ids})
        pipe.zremrangebyscore(_settling_key(), "-inf", now)
        pipe.expire(_settling_key(), int(ttl) + 60)
        pipe.execute()
    except Exception as err:  # noqa: BLE001 - see above: a missing mark costs requests, never a resend
        log.info("reconcile: cannot mark %d parked email(s) as settled by their batch: %s", len(ids),
                 type(err).__name__)


def clear_settling(tracking_ids: Iterable[str]) -> None:
    """Their ``settle_batch`` is done with these emails (settled, or it gave up)."""
    ids = [str(t) for t in tracking_ids]
    client = _broker()
    if not ids or client is None:
        return
    try:
        client.zrem(_settling_key(), *ids)
    except Exception as err:  # noqa: BLE001 - the deadline ends the mark anyway
        log.info("reconcile: cannot clear the settling mark: %s", type(err).__name__)


def settling(tracking_ids: list[str]) -> set[str]:
    """Which of ``tracking_ids`` a ``settle_batch`` is settling now (marked, deadline not passed)."""
    client = _broker()
    if not tracking_ids or client is None:
        return set()
    try:
        scores = client.zmscore(_settling_key(), tracking_ids)
    except Exception as err:  # noqa: BLE001 - unknown: this pass settles them (fenced, so safe)
        log.info("reconcile: cannot read the settling mark: %s", type(err).__name__)
        return set()
    now = time.time()
    return {t for t, score in zip(tracking_ids, scores, strict=True) if score is not None and score > now}


def _record(event: NormalizedEvent) -> bool:
    from worker.tracking.events import record_event

    return bool(record_event(event).get("status") != "duplicate")


def _settle(message: ParkedSend, provider_id: str, note: str, report: ReconcileReport) -> None:
    with session_scope() as session:
        settled = settle_accepted(session.connection(), message.tracking_id, provider=message.provider,
                                  provider_id=provider_id, note=f"reconciled: {note}")
    report.resolved_sent += int(settled)


def _load_parked(session: Any, settled_before: Any) -> tuple[list[ParkedSend], dict[str, str]]:
    """The parked sends to look at, and the ``batch_id`` of those sent in a bulk batch."""
    rows = session.scalars(
        select(Message)
        .where(Message.status == MessageStatus.PARKED, Message.ambiguous_since <= settled_before)
        .options(selectinload(Message.recipients))
        .order_by(Message.ambiguous_since)
        .limit(200)
    ).all()
    parked = []
    batch_of: dict[str, str] = {}
    for m in rows:
        provider = session.scalar(
            select(Attempt.provider).where(Attempt.message_id == m.id,
                                           Attempt.outcome.in_([AttemptOutcome.UNKNOWN, AttemptOutcome.IN_FLIGHT]))
            .order_by(Attempt.id.desc()).limit(1)) or m.provider or providers.chain(get_settings())[0]
        earliest = max(m.queued_at, m.send_at) if m.send_at is not None else m.queued_at
        parked.append(ParkedSend(m.id, provider, m.ambiguous_since, earliest,
                                 [r.address for r in m.recipients if r.status != RecipientStatus.SUPPRESSED]))
        if m.batch_id is not None:
            batch_of[m.id] = m.batch_id
    return parked, batch_of


def _webhook_email_id(tracking_id: str) -> str | None:
    """A provider message id already reported by a webhook that echoed our tracking id."""
    with session_scope() as session:
        return session.scalar(
            select(TrackingEvent.smtp2go_message_id)
            .where(TrackingEvent.tracking_ref == tracking_id, TrackingEvent.smtp2go_message_id.is_not(None))
            .limit(1)
        )
