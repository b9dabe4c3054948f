"""Publishing tasks by name, without importing the task modules (the webhook app stays light)."""

from __future__ import annotations

import logging
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


def publish_event(event: dict[str, Any]) -> None:
    """Publish one ``process_event`` task; raises when the broker cannot take it (the caller answers 503)."""
    app.send_task(EVENT_TASK, args=[event])
