"""Task events cost Redis messages per email: off until a monitor (Flower) switches them on, then complete."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REDIS_URL, wait_until
from worker import enqueue_email, get_email_status
from worker.celery_app import app as celery_app


class EventLog:
    """A real event receiver on the broker (what Flower runs), collecting task events by task id."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with celery_app.connection_for_read(REDIS_URL) as conn:
            recv = celery_app.events.Receiver(conn, handlers={"*": self.events.append})
            recv.should_stop = False
            for _ in recv.itercapture(limit=None, timeout=None, wakeup=False):
                if self._stop.is_set():
                    return

    def start(self) -> EventLog:
        self._thread.start()
        time.sleep(1.0)  # the fanout subscription must exist before anything is sent
        return self

    def types(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == task_id]

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def monitored_worker(db: str, fake_api: Any) -> Iterator[Any]:
    """A real worker with heartbeats on, so its event dispatcher exists and can be switched on remotely."""
    from celery.contrib.testing.worker import start_worker

    celery_app.conf.broker_url = REDIS_URL
    queues = [q.name for q in celery_app.conf.task_queues]
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING",
                      queues=queues, shutdown_timeout=20, without_heartbeat=False) as worker:
        yield worker


def test_no_task_events_until_enabled_then_progress_is_reported(monitored_worker: Any) -> None:
    log = EventLog().start()
    try:
        quiet = enqueue_email("alice@example.com", "hello", text_body="hi")
        wait_until(lambda: (get_email_status(quiet) or {})["status"] == "sent", timeout=20)
        time.sleep(0.5)
        assert log.types(quiet) == []  # nobody watching: no task events, no progress events

        celery_app.control.enable_events()  # what Flower does while it runs
        from worker.celery_app import task_event_dispatcher

        wait_until(lambda: task_event_dispatcher() is not None, timeout=10)
        watched = enqueue_email("bob@example.com", "hello", text_body="hi")
        wait_until(lambda: "task-succeeded" in log.types(watched), timeout=20)
        types = log.types(watched)
        assert {"task-received", "task-started", "task-progress", "task-succeeded"} <= set(types)
        progress = [e for e in log.events if e.get("uuid") == watched and e["type"] == "task-progress"]
        assert progress[0]["state"] == "ATTEMPT" and progress[0]["attempt"] == 1
        assert progress[0]["provider"] == "smtp2go"
        assert "bob@example.com" not in repr(progress)  # counters only, never addresses
    finally:
        celery_app.control.disable_events()
        log.stop()
