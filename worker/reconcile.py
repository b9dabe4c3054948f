"""Reconciliation against SMTP2Go's ``POST /activity/search``.

Two jobs, both run by the ``mailworker.reconcile`` beat task:

1. **Ambiguous sends** (a read timeout after the request left, or a worker that died mid-send). SMTP2Go has
   no idempotency key, so before any second send we ask its activity log: events for the first recipient in
   a window around the attempt, with the ``X-Mailworker-Id`` custom header returned. A match means it was
   accepted: record its ``email_id`` and mark the message ``sent``. No match after ``resend_after`` seconds
   (activity search lags by a minute or two) means it never landed: release it for a normal resend.
   A webhook that already arrived carrying our ``X-Mailworker-Id`` and an ``email_id`` settles it without a
   request. An ambiguous SMTP send cannot be checked; after ``resend_after`` it is released (at least once).
2. **Missing webhooks.** ``sent`` SMTP2Go mail older than ``fill_after`` with no delivery news is looked up
   by ``email_id`` (100 per request); delivered/bounce/spam/reject rows become events through the normal,
   idempotent event path. Opens and clicks are left to webhooks (they would double count).

The API allows 60 requests a minute; a run makes at most ``max_requests`` and stops at the first 429.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from worker.config import Settings, get_settings
from worker.db import session_scope
from worker.models import Message, MessageStatus, TrackingEvent, Transport, utcnow
from worker.modules import Smtp2GoConfig, smtp2go_config
from worker.providers import TRACKING_HEADER
from worker.send_store import record_sent

log = logging.getLogger(__name__)
FILL_EVENTS = {"delivered", "bounce", "hard_bounce", "soft_bounce", "spam", "spam_complaint", "reject", "rejected"}


class RateLimited(Exception):
    """SMTP2Go answered 429: stop this run, try next time."""


@dataclass
class ReconcileReport:
    resolved_sent: int = 0
    released: int = 0
    still_ambiguous: int = 0
    filled_events: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _search(config: Smtp2GoConfig, body: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    assert config.api_key
    try:
        response = requests.post(
            f"{config.api_url}/activity/search", json=body,
            headers={"X-Smtp2go-Api-Key": config.api_key, "Accept": "application/json"},
            timeout=(settings.smtp2go_connect_timeout, settings.smtp2go_timeout),
            verify=settings.smtp2go_ca_file or True,
        )
    except requests.RequestException as err:
        raise RateLimited(f"activity search unreachable: {type(err).__name__}") from err
    if response.status_code == 429:
        raise RateLimited("activity search rate limited")
    if response.status_code != 200:
        raise RateLimited(f"activity search answered {response.status_code}")
    try:
        data = response.json().get("data") or {}
    except (ValueError, AttributeError) as err:
        raise RateLimited("activity search gave an unreadable body") from err
    events = data.get("events") or []
    return [e for e in events if isinstance(e, dict)]


def _header(event: dict[str, Any], name: str) -> str | None:
    for item in event.get("custom_headers") or []:
        if isinstance(item, dict) and str(item.get("header", "")).lower() == name.lower():
            return str(item.get("value"))
    return None


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _webhook_email_id(session: Any, tracking_id: str) -> str | None:
    """An email_id already reported by a webhook that echoed our X-Mailworker-Id."""
    return session.scalar(
        select(TrackingEvent.smtp2go_message_id)
        .where(TrackingEvent.tracking_ref == tracking_id, TrackingEvent.smtp2go_message_id.is_not(None))
        .limit(1)
    )


def reconcile(settings: Settings | None = None, *, settle: float = 30, resend_after: float = 600,
              fill_after: float = 3600, max_requests: int = 20) -> ReconcileReport:
    """One reconciliation pass (see the module docstring)."""
    settings = settings or get_settings()
    report = ReconcileReport()
    now = utcnow()
    with session_scope() as session:
        config = smtp2go_config(session, settings)
        ambiguous = session.scalars(
            select(Message)
            .where(Message.status == MessageStatus.RETRYING, Message.ambiguous_since.is_not(None),
                   Message.ambiguous_since <= now - timedelta(seconds=settle))
            .options(selectinload(Message.recipients))
            .order_by(Message.ambiguous_since)
            .limit(200)
        ).all()
        for message in ambiguous:
            try:
                _settle_ambiguous(session, message, config, settings, now, resend_after, max_requests, report)
            except RateLimited as err:
                log.info("reconcile paused: %s", err)
                report.still_ambiguous += 1
                max_requests = 0
            session.commit()
        if config.usable and report.requests < max_requests:
            try:
                _fill_missing(session, config, settings, now, fill_after, max_requests, report)
            except RateLimited as err:
                log.info("reconcile fill-in paused: %s", err)
    if any(report.as_dict().values()):
        log.info("reconcile %s", report.as_dict())
    return report


def _settle_ambiguous(session: Any, message: Message, config: Smtp2GoConfig, settings: Settings, now: datetime,
                      resend_after: float, max_requests: int, report: ReconcileReport) -> None:
    assert message.ambiguous_since is not None
    overdue = message.ambiguous_since <= now - timedelta(seconds=resend_after)
    if message.inflight_transport != Transport.SMTP:
        email_id = _webhook_email_id(session, message.id)
        if email_id is None and config.usable:
            if report.requests >= max_requests:
                raise RateLimited("request budget for this run used")
            email_id = _find_in_activity(message, config, settings, now, report)
        if email_id:
            session.flush()
            record_sent(session.connection(), message.id, Transport.SMTP2GO, email_id,
                        last_error="reconciled: SMTP2Go had accepted the ambiguous send")
            session.expire(message)
            report.resolved_sent += 1
            log.info("reconciled tracking_id=%s as sent email_id=%s", message.id, email_id)
            return
    if overdue:
        message.ambiguous_since = None
        message.next_attempt_at = now
        message.last_error = ("reconciled: not found at SMTP2Go, resending" if message.inflight_transport
                              != Transport.SMTP else "reconciled: SMTP outcome unknowable, resending")
        message.inflight_transport = None
        report.released += 1
        log.warning("reconcile released tracking_id=%s for resend", message.id)
    else:
        report.still_ambiguous += 1


def _find_in_activity(message: Message, config: Smtp2GoConfig, settings: Settings, now: datetime,
                      report: ReconcileReport) -> str | None:
    first = next((r.address for r in message.recipients), None)
    body: dict[str, Any] = {
        "start_date": _iso(message.queued_at - timedelta(minutes=5)),
        "end_date": _iso(now + timedelta(minutes=1)),
        "custom_headers": [TRACKING_HEADER],
        "limit": 1000,
    }
    if first:
        body["search_recipient"] = first
    report.requests += 1
    for event in _search(config, body, settings):
        if _header(event, TRACKING_HEADER) == message.id and event.get("email_id"):
            return str(event["email_id"])
    return None


def _fill_missing(session: Any, config: Smtp2GoConfig, settings: Settings, now: datetime, fill_after: float,
                  max_requests: int, report: ReconcileReport) -> None:
    from worker.events import process_event

    oldest = now - timedelta(days=5)  # SMTP2Go keeps 5 days of activity on every plan
    stale = now - timedelta(seconds=fill_after)
    while report.requests < max_requests:
        rows = session.execute(
            select(Message.id, Message.smtp2go_message_id)
            .where(Message.status == MessageStatus.SENT, Message.transport == Transport.SMTP2GO,
                   Message.sent_at <= stale, Message.sent_at >= oldest,
                   (Message.reconciled_at.is_(None)) | (Message.reconciled_at <= stale))
            .order_by(Message.sent_at)
            .limit(100)
        ).all()
        ids = {email_id: tracking_id for tracking_id, email_id in rows if email_id}
        if not rows:
            return
        report.requests += 1
        events = _search(config, {"email_id": sorted(ids), "start_date": _iso(oldest),
                                  "end_date": _iso(now + timedelta(minutes=1)), "limit": 1000}, settings)
        for event in events:
            name = str(event.get("event", "")).lower()
            if name not in FILL_EVENTS or event.get("email_id") not in ids:
                continue
            bounce = name.split("_")[0] if name.endswith("_bounce") else None
            name = {"hard_bounce": "bounce", "soft_bounce": "bounce", "rejected": "reject"}.get(name, name)
            payload = {
                "event": name, "bounce": bounce, "email_id": event["email_id"], "rcpt": event.get("recipient"),
                "time": event.get("date"), "id": f"activity:{event['email_id']}:{name}:{event.get('recipient')}",
                "source": "activity_search",
            }
            if process_event(payload).get("status") not in {"duplicate"}:
                report.filled_events += 1
        session.execute(
            update(Message).where(Message.id.in_([t for t, _ in rows])).values(reconciled_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
