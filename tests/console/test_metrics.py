"""GET /metrics: Prometheus text, behind the console's auth unless METRICS_PUBLIC=true."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from tests.console.conftest import Console, add_event, make_message
from worker.infrastructure.models import EventType, MessageStatus, utcnow


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics(console: Console) -> None:
    sent = make_message(MessageStatus.DELIVERED, queued_at=utcnow() - timedelta(seconds=30))
    add_event(sent, EventType.DELIVERED, "alice@example.com")
    make_message(MessageStatus.FAILED)
    make_message(MessageStatus.PARKED, ambiguous_since=utcnow())
    make_message(MessageStatus.HELD, held_since=utcnow())
    make_message(MessageStatus.QUEUED, queued_at=utcnow() - timedelta(minutes=10))
    console.app.extensions["test_protection"].update(breaker="open")
    assert console.client.get("/metrics").status_code == 401
    answer = console.get("/metrics")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    s = _samples(answer.text)
    assert s[("mailworker_emails", (("status", "delivered"), ("transport", "smtp2go")))] == 1
    assert s[("mailworker_emails", (("status", "failed"), ("transport", "none")))] == 1
    assert s[("mailworker_emails_parked", ())] == 1 and s[("mailworker_emails_held", ())] == 1
    assert s[("mailworker_reconciliation_backlog", ())] == 1
    assert s[("mailworker_queue_depth", (("queue", "queued"),))] == 1
    assert s[("mailworker_queue_depth", (("queue", "retrying"),))] == 0  # parked and held are counted apart
    assert 590 < s[("mailworker_queue_oldest_age_seconds", (("queue", "queued"),))] < 700
    assert s[("mailworker_sends", (("outcome", "accepted"),))] == 1
    assert s[("mailworker_send_latency_seconds_count", ())] == 1
    assert s[("mailworker_send_latency_seconds_bucket", (("le", "1.0"),))] == 0
    assert s[("mailworker_send_latency_seconds_bucket", (("le", "2.0"),))] == 1
    assert s[("mailworker_breaker_open", ())] == 1
    assert s[("mailworker_breaker_state", (("state", "open"),))] == 1
    assert s[("mailworker_webhook_events", (("type", "delivered"),))] == 1
    assert s[("mailworker_webhook_events_applied", (("type", "delivered"),))] == 1


def test_metrics_public_opt_out(console_factory: object) -> None:
    console = console_factory(metrics_public=True)  # type: ignore[operator]
    assert console.client.get("/metrics").status_code == 200
    assert console.client.get("/").status_code == 401  # only /metrics
