"""Reconciliation against SMTP2Go's documented ``POST /activity/search`` (``fixtures/smtp2go/README.md``).

Two jobs, both run by the ``mailworker.reconcile`` beat task:

1. **Parked sends** (``retrying`` with ``ambiguous_since``): a transport may have accepted the last attempt.
   SMTP2Go has no idempotency key, so a second send is allowed only once we *know* the first did not land:

   - *SMTP2Go-parked*: a webhook already stored with our ``X-Mailworker-Id`` and an ``email_id`` settles it
     without a request. Otherwise the activity log is searched for the first recipient that was actually handed
     to SMTP2Go (a recipient suppressed before the send never reached it), over a window from ten minutes
     before the message could first have been sent to now, asking for the ``X-Mailworker-Id`` custom header
     (returned as an object keyed by header name). An event carrying our id ->
     :func:`worker.sending.lifecycle.settle_accepted` with its ``email_id``.
     Release (:func:`worker.sending.lifecycle.release_parked`) happens only after a *completed* negative search -- every
     page read, no error -- made at least ``RECONCILE_RESEND_AFTER`` seconds after the attempt (activity lags
     the API by a minute or two). No API key, a disabled module or a missing encryption key on this host means
     no search, so nothing is released: the messages stay parked and the report says why.
   - *SMTP-parked* (the relay took the DATA but never answered): no API can tell, so after
     ``SMTP_UNKNOWN_RESEND_AFTER`` the message is released: delivery is at least once, and the log says so.

2. **Missing webhooks.** ``sent`` SMTP2Go mail older than ``fill_after`` with no delivery news is looked up by
   ``search_email_id`` (a single id, as documented); deliveries, bounces, rejects, spam complaints and
   unsubscribes (:data:`FILL_TYPES`) are normalised by :func:`worker.tracking.smtp2go.normalise_activity` and
   recorded through the normal, idempotent :func:`worker.tracking.events.record_event` (deterministic ids,
   ``source: activity_search``). Opens and clicks are left to webhooks (they would double count).

The API allows 60 requests a minute per key; every page is a request. A run makes at most ``max_requests``
(capped at 60) and stops at the first 429, 5xx or credentials error: the report names which, and the next
run starts again. Database transactions are never held open across an HTTP request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from worker.errors import ConfigurationError, CredentialsRejected
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    EventType,
    Message,
    MessageStatus,
    RecipientStatus,
    TrackingEvent,
    Transport,
    utcnow,
)
from worker.infrastructure.modules import smtp2go_config
from worker.sending.lifecycle import release_parked, settle_accepted
from worker.sending.transports import TRACKING_HEADER
from worker.sending.transports.smtp2go import ACTIVITY_PAGE_MAX, ActivitySearchError, search_activity
from worker.tracking.smtp2go import activity_event_names, normalise_activity

log = logging.getLogger(__name__)

#: SMTP2Go's documented budget for ``/activity/search``, per API key.
ACTIVITY_REQUESTS_PER_MINUTE = 60
#: How far before the first possible send the search window opens (clock skew between us and SMTP2Go).
SEARCH_LEAD = timedelta(minutes=10)
#: Activity kept on the smallest plans: older events cannot be asked for.
ACTIVITY_RETENTION = timedelta(days=5)
#: What the fill-in of missing webhooks records (opens and clicks are left to webhooks: they would double count).
FILL_TYPES = frozenset({EventType.DELIVERED, EventType.BOUNCE, EventType.REJECT, EventType.SPAM,
                        EventType.UNSUBSCRIBE})


@dataclass
class ReconcileReport:
    """What one run did. ``stopped`` names why API work ended early (``credentials``, ``rate_limited``,
    ``server_error``, ``unreachable``, ``refused``, ``unreadable`` or ``budget``) and ``error`` says it in a line;
    ``held_unusable`` counts SMTP2Go-parked sends kept parked because this host cannot search."""

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


class _Stop(Exception):  # noqa: N818 - control flow inside this module, never escapes it
    """API work for this run is over (budget used, or an error the report names)."""


@dataclass(frozen=True)
class _Parked:
    id: str
    transport: Transport | None
    ambiguous_since: datetime
    earliest_send: datetime  # the message cannot have been handed over before this (queued_at, or send_at)
    sent_to: list[str] = field(default_factory=list)  # recipients handed to the transport, in order


@dataclass
class _Activity:
    """Paged access to ``/activity/search`` within this run's request budget; errors end API work."""

    api_key: str
    api_url: str
    settings: Settings
    report: ReconcileReport
    max_requests: int
    page_size: int

    def events(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every event matching ``query``, following ``data.continue_token`` until it is null. The iterator
        ending normally is what "a completed search" means; otherwise it raises :class:`_Stop`."""
        token: str | None = None
        while True:
            if self.report.requests >= self.max_requests:
                self._stop("budget", f"request budget for this run used ({self.max_requests})")
            self.report.requests += 1
            body = {**query, "limit": self.page_size, **({"continue_token": token} if token else {})}
            try:
                page = search_activity(body, api_key=self.api_key, api_url=self.api_url,
                                       timeout=self.settings.smtp2go_timeout,
                                       connect_timeout=self.settings.smtp2go_connect_timeout,
                                       verify=self.settings.smtp2go_ca_file or True)
            except CredentialsRejected as err:
                self._stop("credentials", str(err))
            except ActivitySearchError as err:
                self._stop(err.kind, str(err))
            yield from page.events
            if not page.continue_token:
                return
            token = page.continue_token

    def _stop(self, kind: str, error: str) -> NoReturn:
        self.report.stopped, self.report.error = kind, error
        level = logging.INFO if kind in ("budget", "rate_limited") else logging.WARNING
        log.log(level, "reconcile: %s; activity searches stop for this run", error)
        raise _Stop(error)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(settings: Settings | None = None, *, settle: float = 30, fill_after: float = 3600,
              max_requests: int = 20, page_size: int = ACTIVITY_PAGE_MAX) -> ReconcileReport:
    """One reconciliation pass (see the module docstring). ``settle``: seconds a message must have been parked
    before it is looked at; ``page_size``: the ``limit`` of each activity page (at most 1000)."""
    settings = settings or get_settings()
    report = ReconcileReport()
    now = utcnow()
    with session_scope() as session:
        activity, problem = _activity_access(session, settings, report, max_requests, page_size)
        parked = _load_parked(session, now - timedelta(seconds=settle))
    for message in parked:
        _reconcile_parked(message, activity, settings, now, report)
    if report.held_unusable:
        log.warning("reconcile: SMTP2Go activity search is not usable on this host (%s): %d parked SMTP2Go "
                    "send(s) stay parked; none is released without a completed search", problem,
                    report.held_unusable)
    if activity is not None and report.stopped is None:
        try:
            _fill_missing(activity, now, fill_after, report)
        except _Stop:
            pass
    if any(report.as_dict().values()):
        log.info("reconcile %s", report.as_dict())
    return report


def _activity_access(session: Session, settings: Settings, report: ReconcileReport, max_requests: int,
                     page_size: int) -> tuple[_Activity | None, str | None]:
    """The activity client for this run, or None and the problem that makes SMTP2Go unusable here."""
    try:
        config = smtp2go_config(session, settings)
    except ConfigurationError as err:
        return None, str(err)
    if not config.api_key:  # (without a module row, no key is also what leaves the module disabled)
        return None, "no SMTP2Go API key (SMTP2GO_API_KEY, or `mailworker module set smtp2go api_key=...`)"
    if not config.enabled:
        return None, "the SMTP2Go module is disabled (`mailworker module enable smtp2go`)"
    return _Activity(config.api_key, config.api_url, settings, report,
                     max_requests=max(0, min(max_requests, ACTIVITY_REQUESTS_PER_MINUTE)),
                     page_size=max(1, min(page_size, ACTIVITY_PAGE_MAX))), None


def _load_parked(session: Session, settled_before: datetime) -> list[_Parked]:
    rows = session.scalars(
        select(Message)
        .where(Message.status == MessageStatus.RETRYING, Message.ambiguous_since.is_not(None),
               Message.ambiguous_since <= settled_before)
        .options(selectinload(Message.recipients))
        .order_by(Message.ambiguous_since)
        .limit(200)
    ).all()
    parked = []
    for m in rows:
        assert m.ambiguous_since is not None
        earliest = max(m.queued_at, m.send_at) if m.send_at is not None else m.queued_at
        parked.append(_Parked(m.id, m.inflight_transport, m.ambiguous_since, earliest,
                              [r.address for r in m.recipients if r.status != RecipientStatus.SUPPRESSED]))
    return parked


def _reconcile_parked(message: _Parked, activity: _Activity | None, settings: Settings, now: datetime,
                      report: ReconcileReport) -> None:
    waited = (now - message.ambiguous_since).total_seconds()
    if message.transport == Transport.SMTP:
        if waited < settings.smtp_unknown_resend_after:
            report.still_ambiguous += 1
            return
        note = (f"reconciled: the SMTP relay took the DATA but never answered; no API can check, so it is sent "
                f"again after {waited:.0f}s (SMTP_UNKNOWN_RESEND_AFTER={settings.smtp_unknown_resend_after:g}s): "
                "at least once, a recipient may get it twice")
        _release(message, note, report)
        return
    email_id = _webhook_email_id(message.id)
    if email_id is None:
        if activity is None:
            report.held_unusable += 1
            return
        if report.stopped is not None:
            report.still_ambiguous += 1
            return
        try:
            email_id = _find_in_activity(message, activity, now)
        except _Stop:
            report.still_ambiguous += 1
            return
    if email_id:
        with session_scope() as session:
            settled = settle_accepted(session.connection(), message.id, transport=Transport.SMTP2GO,
                                      provider_id=email_id,
                                      note="reconciled: SMTP2Go had accepted the ambiguous send")
        report.resolved_sent += int(settled)
        return
    if waited >= settings.reconcile_resend_after:
        _release(message, "reconciled: a complete SMTP2Go activity search found no send with our "
                 f"X-Mailworker-Id {waited:.0f}s after the attempt; sending again", report)
    else:
        report.still_ambiguous += 1


def _release(message: _Parked, note: str, report: ReconcileReport) -> None:
    with session_scope() as session:
        report.released += int(release_parked(session.connection(), message.id, note=note,
                                              parked_since=message.ambiguous_since))


def _webhook_email_id(tracking_id: str) -> str | None:
    """An email_id already reported by a webhook that echoed our X-Mailworker-Id."""
    with session_scope() as session:
        return session.scalar(
            select(TrackingEvent.smtp2go_message_id)
            .where(TrackingEvent.tracking_ref == tracking_id, TrackingEvent.smtp2go_message_id.is_not(None))
            .limit(1)
        )


def _find_in_activity(message: _Parked, activity: _Activity, now: datetime) -> str | None:
    """SMTP2Go's email_id for this message, or None after a completed search that found nothing.

    One recipient is enough: SMTP2Go logs events per recipient, and every event of an accepted email carries
    its custom headers, so the first recipient that was really handed over has an event if the send landed.
    The window opens before the message could first have been sent (queued, or its ``send_at``), not at
    ``ambiguous_since``: a worker that died mid-send may be parked long after its attempt (``requeue``), and
    a window that misses the attempt would be a negative search that resends. The recipient filter keeps it cheap.
    """
    start = max(message.earliest_send - SEARCH_LEAD, now - ACTIVITY_RETENTION)
    query: dict[str, Any] = {"start_date": _iso(start), "end_date": _iso(now + timedelta(minutes=1)),
                             "custom_headers": [TRACKING_HEADER]}
    if message.sent_to:
        query["search_recipient"] = message.sent_to[0]
    for event in activity.events(query):
        ev = normalise_activity(event)
        if ev.tracking_ref == message.id and ev.email_id:
            return ev.email_id
    return None


def _fill_missing(activity: _Activity, now: datetime, fill_after: float, report: ReconcileReport) -> None:
    from worker.tracking.events import record_event

    oldest = now - ACTIVITY_RETENTION
    stale = now - timedelta(seconds=fill_after)
    with session_scope() as session:
        rows = session.execute(
            select(Message.id, Message.smtp2go_message_id, Message.sent_at)
            .where(Message.status == MessageStatus.SENT, Message.transport == Transport.SMTP2GO,
                   Message.smtp2go_message_id.is_not(None), Message.sent_at <= stale, Message.sent_at >= oldest,
                   (Message.reconciled_at.is_(None)) | (Message.reconciled_at <= stale))
            .order_by(Message.sent_at)
            .limit(max(0, activity.max_requests - report.requests))
        ).all()
    for tracking_id, email_id, sent_at in rows:
        query = {"search_email_id": email_id, "event_types": activity_event_names(FILL_TYPES),
                 "start_date": _iso(max(oldest, sent_at - timedelta(minutes=1))),
                 "end_date": _iso(now + timedelta(minutes=1)), "custom_headers": [TRACKING_HEADER]}
        for event in activity.events(query):  # _Stop ends the fill-in; this message is looked at next run
            ev = normalise_activity(event)
            if ev.event_type in FILL_TYPES and ev.email_id and record_event(ev).get("status") != "duplicate":
                report.filled_events += 1
        with session_scope() as session:  # a completed search: not asked again until fill_after has passed
            session.execute(update(Message).where(Message.id == tracking_id).values(reconciled_at=now))

