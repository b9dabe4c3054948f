"""Reconciliation: settle parked sends through the provider that took them, and fill in missing webhooks.

Run by the ``mailworker.reconcile`` beat task. A parked message (``parked``: a provider may have accepted the last
attempt) is never sent again before its outcome is known. For each, in order:

1. a webhook already stored with our tracking id and a provider message id settles it without a request;
2. otherwise the reconciler of the provider named on its parked attempt is asked
   (:meth:`worker.providers.base.Reconciler.settle`): ``accepted`` -> :func:`worker.sending.lifecycle.settle_accepted`,
   ``not_sent`` -> :func:`worker.sending.lifecycle.release_parked` (sent again, through the chain), ``wait`` ->
   it stays parked (``unusable`` when the provider cannot be asked from this host: the report counts those).

Then every provider of the chain may record events its webhooks missed
(:meth:`~worker.providers.base.Reconciler.fill_missing_events`), through the normal, idempotent event path.
Database transactions are never held open across a provider request.
"""

from __future__ import annotations

import logging
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
from worker.providers.base import NormalizedEvent, ParkedSend, Reconciler
from worker.sending.lifecycle import release_parked, settle_accepted

log = logging.getLogger(__name__)

ACTIVITY_PAGE_MAX = 1000


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
        parked = _load_parked(session, now - timedelta(seconds=settle))
    unusable: set[str] = set()
    for message in parked:
        email_id = _webhook_email_id(message.tracking_id)
        if email_id is not None:
            _settle(message, email_id, "a webhook named the provider's id for the ambiguous send", report)
            continue
        try:
            reconciler = reconciler_of(message.provider)
        except KeyError as err:
            log.warning("reconcile: %s", err)
            reconciler = None
        if reconciler is None:
            report.held_unusable += 1
            unusable.add(f"{message.provider}: it cannot be asked")
            continue
        verdict = reconciler.settle(message)
        if verdict.kind == "accepted" and verdict.provider_message_id:
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


def _record(event: NormalizedEvent) -> bool:
    from worker.tracking.events import record_event

    return bool(record_event(event).get("status") != "duplicate")


def _settle(message: ParkedSend, provider_id: str, note: str, report: ReconcileReport) -> None:
    with session_scope() as session:
        settled = settle_accepted(session.connection(), message.tracking_id, provider=message.provider,
                                  provider_id=provider_id, note=f"reconciled: {note}")
    report.resolved_sent += int(settled)


def _load_parked(session: Any, settled_before: Any) -> list[ParkedSend]:
    rows = session.scalars(
        select(Message)
        .where(Message.status == MessageStatus.PARKED, Message.ambiguous_since <= settled_before)
        .options(selectinload(Message.recipients))
        .order_by(Message.ambiguous_since)
        .limit(200)
    ).all()
    parked = []
    for m in rows:
        provider = session.scalar(
            select(Attempt.provider).where(Attempt.message_id == m.id,
                                           Attempt.outcome.in_([AttemptOutcome.UNKNOWN, AttemptOutcome.IN_FLIGHT]))
            .order_by(Attempt.id.desc()).limit(1)) or m.provider or providers.chain(get_settings())[0]
        earliest = max(m.queued_at, m.send_at) if m.send_at is not None else m.queued_at
        parked.append(ParkedSend(m.id, provider, m.ambiguous_since, earliest,
                                 [r.address for r in m.recipients if r.status != RecipientStatus.SUPPRESSED]))
    return parked


def _webhook_email_id(tracking_id: str) -> str | None:
    """A provider message id already reported by a webhook that echoed our tracking id."""
    with session_scope() as session:
        return session.scalar(
            select(TrackingEvent.smtp2go_message_id)
            .where(TrackingEvent.tracking_ref == tracking_id, TrackingEvent.smtp2go_message_id.is_not(None))
            .limit(1)
        )
