"""Publishing tasks by name with Celery's own API, without importing the task modules (the webhook app stays
light). The broker message carries only the tracking id (sends) or the event (webhooks)."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

from worker.celery_app import app

log = logging.getLogger(__name__)

SEND_TASK = "mailworker.send_email"
EVENT_TASK = "mailworker.process_event"

#: Socket timeouts of a publish to an explicitly given broker: one that never answers fails it in ~2 s.
EVENT_SOCKET_TIMEOUT = 2.0
#: One quick retry (a pooled connection gone stale across a Redis restart), then the error.
_RETRY_POLICY: dict[str, Any] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def broker_write_url() -> str:
    """The URL Celery publishes to (``broker_write_url``, else ``broker_url``)."""
    return str(app.conf.broker_write_url or app.conf.broker_url)


def send_queue() -> str:
    """The queue ``send_email`` is routed to."""
    route = app.amqp.router.route({}, SEND_TASK).get("queue")
    return str(getattr(route, "name", None) or app.conf.task_default_queue)


def publish_send(tracking_id: str, *, eta: datetime | None = None, countdown: float | None = None) -> bool:
    """Publish ``send_email(tracking_id)`` with the tracking id as task id; False when the broker is unreachable
    (the sweeper publishes it later)."""
    try:
        _send(SEND_TASK, args=[tracking_id], task_id=tracking_id, eta=eta, countdown=countdown or None)
    except Exception as err:  # noqa: BLE001 - any broker failure is repaired by the sweeper
        log.warning("publish failed tracking_id=%s (the sweeper will publish it): %s", tracking_id,
                    type(err).__name__)
        return False
    return True


def publish_event(event: dict[str, Any], *, broker_url: str | None = None, provider: str = "smtp2go") -> None:
    """Publish one ``process_event(event)`` task on the events queue; raises when the broker cannot take it
    (the webhook answers 503 and the provider retries). ``broker_url`` overrides the configured broker; short
    socket timeouts make a broker that never answers fail it in seconds. A retried publish may push a message
    twice; applying an event is idempotent (the event id is unique), so that is harmless. ``provider`` names
    whose normaliser reads it (SMTP2Go's when absent)."""
    options: dict[str, Any] = {"args": [event], "argsrepr": _event_summary(event)}
    if provider != "smtp2go":
        options["kwargs"] = {"provider": provider}
    _send(EVENT_TASK, broker_url, short_timeouts=True, **options)


def _send(task: str, url: str | None = None, *, short_timeouts: bool = False, **options: Any) -> None:
    """``send_task`` through kombu's producer pool for ``url`` (default: the broker URL configured now; one pool
    per URL and options). ``short_timeouts``: a broker that never answers fails the publish in seconds."""
    from kombu.pools import producers

    extra: dict[str, Any] = {}
    if short_timeouts:
        extra = {"connect_timeout": EVENT_SOCKET_TIMEOUT, "transport_options": {
            **(app.conf.broker_transport_options or {}), "socket_timeout": EVENT_SOCKET_TIMEOUT,
            "socket_connect_timeout": EVENT_SOCKET_TIMEOUT, "retry_on_timeout": False}}
    connection = app.connection_for_write(url or broker_write_url(), **extra)
    with producers[connection].acquire(block=True) as producer:
        app.send_task(task, producer=producer, retry=True, retry_policy=_RETRY_POLICY, **options)


def _event_summary(event: dict[str, Any]) -> str:
    """What Flower shows as the argument: the event's identity, not the whole payload (addresses, headers)."""
    return repr([{key: event[key] for key in ("event", "email_id", "id") if key in event}])


@lru_cache(maxsize=4)
def _redis_for(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=EVENT_SOCKET_TIMEOUT,
                                socket_connect_timeout=EVENT_SOCKET_TIMEOUT)


def broker_redis() -> Any | None:
    """A redis-py client on the broker Celery publishes to, or None when that broker is not a plain Redis URL
    (the sweeper keeps its broker-loss marker there)."""
    url = broker_write_url()
    if url.partition("://")[0].lower() not in ("redis", "rediss") or ";" in url:
        return None
    return _redis_for(url)
