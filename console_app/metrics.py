"""``GET /metrics``: Prometheus text format, computed from the database (and Redis) at scrape time.

Every value is read fresh per scrape into a private registry (no process-global state, so any number of console
workers answer the same). Queries are GROUP BYs on indexed columns, plus a bounded read of recent sends for the
latency histogram.

- ``mailworker_emails{status,transport}``: emails by status and transport (all rows in the database)
- ``mailworker_emails_parked`` / ``mailworker_emails_held``: waiting for reconciliation / held by an operator problem
- ``mailworker_reconciliation_backlog``: parked emails (the reconciliation job's work list)
- ``mailworker_queue_depth{queue}`` / ``mailworker_queue_oldest_age_seconds{queue}``: emails waiting to be sent
  (``queued``, ``retrying``), and the age of the oldest of each
- ``mailworker_sends_total{outcome}``: emails that left the send path, by outcome (accepted / failed / suppressed)
- ``mailworker_send_latency_seconds``: histogram of enqueue -> accepted, over emails accepted in the last hour
- ``mailworker_breaker_open`` / ``mailworker_breaker_state{state}`` / ``mailworker_rate_limit_paused_seconds``
- ``mailworker_webhook_events{type}`` / ``mailworker_webhook_events_applied{type}``: events stored / applied
- ``mailworker_spam_complaint_rate_7d`` / ``mailworker_spam_complaint_threshold``: recipients who complained in
  the last 7 days over recipients accepted in them (see :mod:`worker.tracking.complaints`), and the line
  (``COMPLAINT_RATE_THRESHOLD``, 0.3 % by default)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from console_app.data import protection_state
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    ACCEPTED_STATUSES,
    Message,
    MessageStatus,
    TrackingEvent,
    utcnow,
)
from worker.tracking.complaints import complaint_rate

#: The transports every status is reported for (0 when none), plus "none" (not accepted by any).
TRANSPORTS = ("smtp", "smtp2go")

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_SAMPLE = 50_000


class _Collector:
    def __init__(self, protection: Callable[[], dict[str, Any]] | None) -> None:
        self.protection = protection

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with session_scope() as session:
            by = session.execute(select(Message.status, Message.transport, func.count())
                                 .group_by(Message.status, Message.transport)).all()
            oldest = {status: session.scalar(select(func.min(Message.queued_at)).where(Message.status == status))
                      for status in (MessageStatus.QUEUED, MessageStatus.RETRYING)}
            latencies = session.execute(select(Message.queued_at, Message.sent_at).where(
                Message.status.in_(ACCEPTED_STATUSES), Message.sent_at >= now - timedelta(hours=1))
                .limit(LATENCY_SAMPLE)).all()
            events = session.execute(select(TrackingEvent.event_type, func.count(),
                                            func.count(TrackingEvent.applied_at))
                                     .group_by(TrackingEvent.event_type)).all()

        emails = GaugeMetricFamily("mailworker_emails", "Emails in the database by status and transport.",
                                   labels=["status", "transport"])
        counts: dict[tuple[str, str], int] = {}
        for status in MessageStatus:
            for transport in [*TRANSPORTS, "none"]:
                counts[(status.value, transport)] = 0
        for status, transport, n in by:
            counts[(status.value, str(getattr(transport, "value", transport)) if transport else "none")] = int(n)
        for (status_value, transport_value), n in sorted(counts.items()):
            emails.add_metric([status_value, transport_value], n)
        yield emails

        sends = GaugeMetricFamily("mailworker_sends", "Emails that left the send path, by outcome.",
                                  labels=["outcome"])
        by_status: dict[str, int] = {}
        for (status_value, _t), n in counts.items():
            by_status[status_value] = by_status.get(status_value, 0) + n
        sends.add_metric(["accepted"], sum(by_status[s.value] for s in ACCEPTED_STATUSES))
        sends.add_metric(["failed"], by_status[MessageStatus.FAILED.value])
        sends.add_metric(["suppressed"], by_status[MessageStatus.SUPPRESSED.value])
        yield sends

        parked, held = by_status[MessageStatus.PARKED.value], by_status[MessageStatus.HELD.value]

        yield GaugeMetricFamily("mailworker_emails_parked", "Emails waiting for reconciliation (send outcome "
                                "unknown).", value=parked)
        yield GaugeMetricFamily("mailworker_emails_held", "Emails held by an operator problem.", value=held)
        yield GaugeMetricFamily("mailworker_reconciliation_backlog", "Parked emails reconciliation has to settle.",
                                value=parked)

        depth = GaugeMetricFamily("mailworker_queue_depth", "Emails waiting to be sent (not parked).",
                                  labels=["queue"])
        age = GaugeMetricFamily("mailworker_queue_oldest_age_seconds", "Age of the oldest email waiting to be sent.",
                                labels=["queue"])
        for status in (MessageStatus.QUEUED, MessageStatus.RETRYING):
            depth.add_metric([status.value], by_status[status.value])
            first = oldest[status]
            age.add_metric([status.value], max(0.0, (now - first).total_seconds()) if first else 0.0)
        yield depth
        yield age

        buckets = [0] * len(LATENCY_BUCKETS)
        total = 0.0
        for queued_at, sent_at in latencies:
            seconds = max(0.0, (sent_at - queued_at).total_seconds())
            total += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
        hist = HistogramMetricFamily("mailworker_send_latency_seconds",
                                     "Enqueue to accepted, for emails accepted in the last hour.")
        hist.add_metric([], [(str(float(b)), float(n)) for b, n in zip(LATENCY_BUCKETS, buckets, strict=True)]
                        + [("+Inf", float(len(latencies)))], total)
        yield hist

        stored = GaugeMetricFamily("mailworker_webhook_events", "Provider events stored, by type.", labels=["type"])
        applied = GaugeMetricFamily("mailworker_webhook_events_applied", "Provider events applied to their "
                                    "message, by type.", labels=["type"])
        for event_type, n, n_applied in events:
            stored.add_metric([event_type.value], int(n))
            applied.add_metric([event_type.value], int(n_applied))
        yield stored
        yield applied

        complaints = complaint_rate(now=now)
        yield GaugeMetricFamily("mailworker_spam_complaint_rate_7d", "Recipients who complained (spam) in the last "
                                "7 days over recipients accepted for delivery in them.", value=complaints.rate)
        yield GaugeMetricFamily("mailworker_spam_complaint_threshold", "The spam complaint line "
                                "(COMPLAINT_RATE_THRESHOLD; Gmail and Yahoo: 0.3 %).", value=complaints.threshold)

        state = protection_state(self.protection)
        available = GaugeMetricFamily("mailworker_protection_state_available",
                                      "1 when the breaker/rate-limit state could be read from Redis.",
                                      value=1 if state.get("available") else 0)
        yield available
        breaker = state.get("breaker", "unknown")
        yield GaugeMetricFamily("mailworker_breaker_open", "1 while the SMTP2Go circuit breaker is open.",
                                value=1 if breaker == "open" else 0)
        states = GaugeMetricFamily("mailworker_breaker_state", "The SMTP2Go circuit breaker's state.",
                                   labels=["state"])
        for name in ("closed", "open", "half-open", "unknown"):
            states.add_metric([name], 1 if breaker == name else 0)
        yield states
        yield GaugeMetricFamily("mailworker_rate_limit_paused_seconds", "Seconds left of a 429 pause (0: none).",
                                value=float(state.get("paused_for") or 0.0))


def render(protection: Callable[[], dict[str, Any]] | None = None) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(protection))
    return generate_latest(registry), CONTENT_TYPE_LATEST
