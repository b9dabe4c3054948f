"""Publishing tasks by name, without importing the task modules (the webhook app stays light)."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from typing import Any

from worker.celery_app import app

log = logging.getLogger(__name__)

SEND_TASK = "mailworker.send_email"
EVENT_TASK = "mailworker.process_event"


def publish_send(tracking_id: str, *, eta: datetime | None = None, countdown: float | None = None) -> bool:
    """Publish ``send_email(tracking_id)``; False when the broker is unreachable (the sweeper repairs it)."""
    options: dict[str, Any] = {"task_id": tracking_id}
    if eta is not None:
        options["eta"] = eta
    elif countdown:
        options["countdown"] = countdown
    try:
        app.send_task(SEND_TASK, args=[tracking_id], **options)
    except Exception as err:  # noqa: BLE001 - any broker failure is repaired by the sweeper
        log.warning("publish failed tracking_id=%s (the sweeper will publish it): %s", tracking_id,
                    type(err).__name__)
        return False
    return True


#: Webhook publishes must fail within a few seconds (SMTP2Go retries a 503 for 48 h), even when the broker
#: accepts TCP connections and never answers: short socket timeouts, no retry on timeout, one quick retry.
EVENT_SOCKET_TIMEOUT = 2.0
EVENT_POOL_LIMIT = 16
_EVENT_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": EVENT_SOCKET_TIMEOUT,
    "socket_connect_timeout": EVENT_SOCKET_TIMEOUT,
    "retry_on_timeout": False,
    # kombu's own connect loop (Connection.default_channel) reads these: give up after one quick retry.
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    "connect_retries_timeout": EVENT_SOCKET_TIMEOUT,
}
_EVENT_RETRY_POLICY: dict[str, Any] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                       "interval_max": 0.5}
_event_pools: dict[tuple[int, str], Any] = {}
_event_pools_lock = threading.Lock()


def _event_pool(broker_url: str) -> Any:
    """A per-process pool of fail-fast broker connections, separate from Celery's patient default pool.

    Keyed by pid as well as URL: a pool inherited across ``fork`` (gunicorn ``--preload``) must not be shared.
    """
    key = (os.getpid(), broker_url)
    with _event_pools_lock:
        pool = _event_pools.get(key)
        if pool is None:
            conn = app.connection_for_write(
                broker_url, transport_options=_EVENT_TRANSPORT_OPTIONS, connect_timeout=EVENT_SOCKET_TIMEOUT
            )
            pool = _event_pools[key] = conn.Pool(limit=EVENT_POOL_LIMIT)
        return pool


def publish_event(event: dict[str, Any], *, broker_url: str | None = None) -> None:
    """Publish one ``process_event(event)`` task on the events queue, failing fast.

    Raises when the broker cannot take it (the webhook answers 503 and SMTP2Go retries); ``broker_url``
    overrides the configured broker (tests point it at a dead or hung one).
    """
    pool = _event_pool(broker_url or app.conf.broker_write_url or app.conf.broker_url)
    with pool.acquire(block=True, timeout=EVENT_SOCKET_TIMEOUT) as conn:
        app.send_task(EVENT_TASK, args=[event], connection=conn, retry=True, retry_policy=_EVENT_RETRY_POLICY,
                      argsrepr=_event_summary(event))


def _event_summary(event: dict[str, Any]) -> str:
    """What Flower shows as the argument: the event's identity, not the whole payload (addresses, headers)."""
    return repr([{key: event[key] for key in ("event", "email_id", "id") if key in event}])
