"""Reconciliation against SMTP2Go's documented ``POST /activity/search`` (``fixtures/smtp2go/README.md``).

- **A parked send**: the activity log is searched for the first recipient that was actually handed to SMTP2Go
  (a recipient suppressed before the send never reached it), over a window from ten minutes before the message
  could first have been sent to now, asking for the ``X-Mailworker-Id`` custom header (returned as an object
  keyed by header name). An event carrying our id -> accepted, with its ``email_id``. "Not sent" only after a
  *completed* negative search -- every page read, no error -- made at least ``RECONCILE_RESEND_AFTER`` seconds
  after the attempt (activity lags the API by a minute or two). No API key, a disabled module or a missing
  encryption key on this host means no search: the send stays parked and the report says why.
- **Missing webhooks**: ``sent`` SMTP2Go mail older than ``fill_after`` with no delivery news is looked up by
  ``search_email_id``; deliveries, bounces, rejects, spam complaints and unsubscribes (:data:`FILL_TYPES`) are
  normalised and recorded through the normal, idempotent event path (deterministic ids). Opens and clicks are
  left to webhooks (they would double count).

The API allows 60 requests a minute per key; every page is a request. A run makes at most ``max_requests``
(capped at 60) and stops at the first 429, 5xx or credentials error: the report names which. The 60 a minute are
shared by every searcher (the periodic reconciler, each bulk batch's settle, on every host) through one token
bucket in Redis per API key (:func:`worker.providers.breaker.take_activity_request`); a run that finds it empty
stops as ``rate_limited``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import select, update

from worker.errors import CredentialsRejected
from worker.infrastructure.config import Settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import EventType, Message, MessageStatus, utcnow
from worker.providers.base import TRACKING_HEADER, NormalizedEvent, ParkedSend, Verdict
from worker.providers.smtp2go.transport import ACTIVITY_PAGE_MAX, ActivitySearchError, search_activity
from worker.providers.smtp2go.webhooks import PROVIDER, activity_event_names, normalise_activity

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


class _Stop(Exception):  # noqa: N818 - control flow inside this module, never escapes it
    """API work for this run is over (budget used, or an error the report names)."""


@dataclass
class _Activity:
    """Paged access to ``/activity/search`` within this run's request budget; errors end API work."""

    api_key: str
    api_url: str
    settings: Settings
    report: Any
    max_requests: int
    page_size: int

    def events(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every event matching ``query``, following ``data.continue_token`` until it is null. The iterator
        ending normally is what "a completed search" means; otherwise it raises :class:`_Stop`."""
        token: str | None = None
        while True:
            if self.report.requests >= self.max_requests:
                self._stop("budget", f"request budget for this run used ({self.max_requests})")
            self._take_shared_request()
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

    def _take_shared_request(self) -> None:
        """One request of the key's shared budget; a wait of up to a second is slept, a longer one ends the run."""
        import hashlib
        import time

        from worker.providers.breaker import take_activity_request

        account = hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        for _ in range(2):
            wait = take_activity_request(self.settings, account, ACTIVITY_REQUESTS_PER_MINUTE)
            if wait <= 0:
                return
            if wait > 1.0:
                break
            time.sleep(wait)
        self._stop("rate_limited", f"the shared /activity/search budget ({ACTIVITY_REQUESTS_PER_MINUTE} a minute "
                   "per API key) is used up for now")

    def _stop(self, kind: str, error: str) -> NoReturn:
        self.report.stopped, self.report.error = kind, error
        level = logging.INFO if kind in ("budget", "rate_limited") else logging.WARNING
        log.log(level, "reconcile: %s; activity searches stop for this run", error)
        raise _Stop(error)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ActivityReconciler:
    """Settles parked SMTP2Go sends within one run (``activity`` None: this host cannot search, why in
    ``problem``)."""

    activity: _Activity | None
    problem: str | None
    settings: Settings
    report: Any
    fill_after: float

    def settle(self, parked: ParkedSend) -> Verdict:
        if self.activity is None:
            return Verdict("wait", f"SMTP2Go activity search is not usable on this host ({self.problem})",
                           unusable=True)
        if self.report.stopped is not None:
            return Verdict("wait", "activity searches stopped for this run")
        now = utcnow()
        try:
            email_id = _find_in_activity(parked, self.activity, now)
        except _Stop:
            return Verdict("wait", "activity searches stopped for this run")
        if email_id:
            return Verdict("accepted", "SMTP2Go had accepted the ambiguous send", provider_message_id=email_id)
        waited = (now - parked.parked_since).total_seconds()
        if waited >= self.settings.reconcile_resend_after:
            return Verdict("not_sent", "a complete SMTP2Go activity search found no send with our "
                           f"X-Mailworker-Id {waited:.0f}s after the attempt; sending again")
        return Verdict("wait", "too early to trust a negative search")

    def fill_missing_events(self, record: Callable[[NormalizedEvent], bool]) -> int:
        if self.activity is None or self.report.stopped is not None:
            return 0
        before = self.report.filled_events
        try:
            _fill_missing(self.activity, utcnow(), self.fill_after, self.report, record)
        except _Stop:
            pass
        return int(self.report.filled_events - before)

    def settle_window(self, parked: list[ParkedSend]) -> dict[str, Verdict]:
        """Settle sends that left together (one ``/email/batch`` request) with ONE paged ``/activity/search`` over
        their common time window -- not one search per email: the 60 requests a minute are shared with the periodic
        reconciler. Events are matched by ``X-Mailworker-Id``; an email found is ``accepted`` (never resent), one not
        found after a completed search is ``not_sent`` once ``RECONCILE_RESEND_AFTER`` has passed since it was
        parked, else ``wait``. The search stops early once every email of the batch was found."""
        if not parked:
            return {}
        if self.activity is None:
            note = f"SMTP2Go activity search is not usable on this host ({self.problem})"
            return {p.tracking_id: Verdict("wait", note, unusable=True) for p in parked}
        wait = {p.tracking_id: Verdict("wait", "activity searches stopped for this run") for p in parked}
        if self.report.stopped is not None:
            return wait
        now = utcnow()
        start = max(min(p.earliest_send for p in parked) - SEARCH_LEAD, now - ACTIVITY_RETENTION)
        query: dict[str, Any] = {"start_date": _iso(start), "end_date": _iso(now + timedelta(minutes=1)),
                                 "custom_headers": [TRACKING_HEADER]}
        wanted = {p.tracking_id for p in parked}
        found: dict[str, str] = {}
        try:
            for event in self.activity.events(query):
                ev = normalise_activity(event)
                if ev.tracking_ref in wanted and ev.email_id:
                    found.setdefault(ev.tracking_ref, ev.email_id)
                    if len(found) == len(wanted):
                        break
        except _Stop:
            return wait
        verdicts: dict[str, Verdict] = {}
        for p in parked:
            waited = (now - p.parked_since).total_seconds()
            if p.tracking_id in found:
                verdicts[p.tracking_id] = Verdict("accepted", "SMTP2Go activity shows the batch item accepted",
                                                  provider_message_id=found[p.tracking_id])
            elif waited >= self.settings.reconcile_resend_after:
                verdicts[p.tracking_id] = Verdict(
                    "not_sent", f"a complete SMTP2Go activity search over the batch's window found no send with our "
                    f"X-Mailworker-Id {waited:.0f}s after the attempt; sending again")
            else:
                verdicts[p.tracking_id] = Verdict("wait", "too early to trust a negative search")
        return verdicts


def reconciler(api_key: str | None, api_url: str, problem: str | None, settings: Settings, *, report: Any,
               max_requests: int = 20, page_size: int = ACTIVITY_PAGE_MAX,
               fill_after: float = 3600) -> ActivityReconciler:
    activity = None if problem or not api_key else _Activity(
        api_key, api_url, settings, report, max_requests=max(0, min(max_requests, ACTIVITY_REQUESTS_PER_MINUTE)),
        page_size=max(1, min(page_size, ACTIVITY_PAGE_MAX)))
    return ActivityReconciler(activity, problem, settings, report, fill_after)


def _find_in_activity(message: ParkedSend, activity: _Activity, now: datetime) -> str | None:
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
        if ev.tracking_ref == message.tracking_id and ev.email_id:
            return ev.email_id
    return None


def _fill_missing(activity: _Activity, now: datetime, fill_after: float, report: Any,
                  record: Callable[[NormalizedEvent], bool]) -> None:
    oldest = now - ACTIVITY_RETENTION
    stale = now - timedelta(seconds=fill_after)
    with session_scope() as session:
        rows = session.execute(
            select(Message.id, Message.smtp2go_message_id, Message.sent_at)
            .where(Message.status == MessageStatus.SENT, Message.transport == PROVIDER,
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
            if ev.event_type in FILL_TYPES and ev.email_id and record(ev):
                report.filled_events += 1
        with session_scope() as session:  # a completed search: not asked again until fill_after has passed
            session.execute(update(Message).where(Message.id == tracking_id).values(reconciled_at=now))


