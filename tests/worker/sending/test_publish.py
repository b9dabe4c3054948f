"""``publish_event`` (the webhook receiver's publish of ``mailworker.process_event``) and ``publish_send``
(``mailworker.send_email``, the enqueue path's): Celery's own messages, consumed and applied by a real Celery
worker, failing within seconds when Redis is down or hung.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import EVENTS_QUEUE, FIXTURES_DIR, SEND_QUEUE, wait_until
from worker.celery_app import app
from worker.sending.publish import EVENT_TASK, SEND_TASK, _event_summary, broker_redis, publish_event, publish_send


def _pop_one(redis_client: Any, queue: str) -> dict[str, Any]:
    assert redis_client.llen(queue) == 1
    return dict(json.loads(redis_client.rpop(queue)))


def test_send_publish_carries_the_tracking_id_as_task_id(base_env: Any, redis_client: Any) -> None:
    tracking_id = str(uuid.uuid4())
    assert publish_send(tracking_id) is True
    message = _pop_one(redis_client, SEND_QUEUE)
    assert message["headers"]["task"] == SEND_TASK and message["headers"]["id"] == tracking_id
    assert json.loads(base64.b64decode(message["body"]))[0] == [tracking_id]


def test_delayed_send_publish_carries_its_eta(base_env: Any, redis_client: Any) -> None:
    tracking_id = str(uuid.uuid4())
    eta = datetime.now(UTC) + timedelta(minutes=5)
    assert publish_send(tracking_id, eta=eta) is True
    message = _pop_one(redis_client, SEND_QUEUE)
    assert datetime.fromisoformat(message["headers"]["eta"]) == eta


def test_event_publish_lands_on_the_events_queue_with_a_short_summary(base_env: Any, redis_client: Any) -> None:
    event = {"event": "bounce", "email_id": "e1", "id": "i1", "rcpt": "alice@example.com", "message": "550 gone"}
    publish_event(event)
    message = _pop_one(redis_client, EVENTS_QUEUE)
    assert message["headers"]["task"] == EVENT_TASK
    assert message["headers"]["argsrepr"] == "[{'event': 'bounce', 'email_id': 'e1', 'id': 'i1'}]"
    assert json.loads(base64.b64decode(message["body"]))[0] == [event]


def test_broker_redis_is_the_send_queues_redis(base_env: Any, redis_client: Any) -> None:
    client = broker_redis()
    assert client is not None
    publish_send(str(uuid.uuid4()))
    assert client.llen(SEND_QUEUE) == 1


# --------------------------------------------------------------------------------------------- a real worker


def _sent_message(address: str, email_id: str) -> str:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import (
        Message,
        MessageStatus,
        Recipient,
        RecipientKind,
        RecipientStatus,
    )

    tracking_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with session_scope() as session:
        message = Message(id=tracking_id, status=MessageStatus.SENT, transport="smtp2go",
                          sender="support@example.org", subject="Your ticket #1042", text_body="hi",
                          smtp2go_message_id=email_id, message_id_header=f"<{tracking_id}@example.org>",
                          queued_at=now, sent_at=now)
        message.recipients.append(Recipient(address=address, kind=RecipientKind.TO, open_count=0, click_count=0,
                                            status=RecipientStatus.SENT, sent_at=now))
        session.add(message)
    return tracking_id


def test_a_real_worker_applies_published_events(celery_worker: Any, redis_client: Any) -> None:
    from sqlalchemy import func, select

    from worker.api.enqueue import get_email_status
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import TrackingEvent

    tid = _sent_message("alice@example.com", "1t9QkX-4Rb2Wm8YzK-Q7aP")
    delivered = json.loads((FIXTURES_DIR / "webhook_delivered.json").read_text())
    opened = json.loads((FIXTURES_DIR / "webhook_open.json").read_text())
    publish_event(delivered)
    publish_event(opened)

    def both_applied() -> bool:
        # Each event's row, its applied_at and its recipient update commit in one transaction (record_event), so
        # two applied rows mean both effects are committed. Polling get_email_status for "two events" instead
        # was flaky under load: it reads the message, recipients and events in three statements, each its own
        # READ COMMITTED snapshot, so a poll that ran while the worker committed could see the open's row but
        # alice's row from before it (open_count 0, even delivered_at None).
        with session_scope() as session:
            return session.scalar(select(func.count()).select_from(TrackingEvent).where(
                TrackingEvent.message_id == tid, TrackingEvent.applied_at.is_not(None))) == 2

    wait_until(both_applied, timeout=30, message="both events applied by the worker")
    status = get_email_status(tid)  # read only after both commits: every statement sees both effects
    assert status is not None
    alice = status["recipients"][0]
    assert alice["delivered_at"] == "2026-11-20T09:14:05+00:00"
    assert alice["open_count"] == 1 and alice["status"] == "opened"
    assert sorted(e["type"] for e in status["events"]) == ["delivered", "open"]
    assert redis_client.llen(EVENTS_QUEUE) == 0


# --------------------------------------------------------------------------------------------- broken brokers




@pytest.mark.parametrize("scheme", ["redis", "amqp"])
@pytest.mark.parametrize("broker", ["closed_port", "hung_port"])  # refuses connections / accepts, never answers
def test_dead_or_hung_broker_raises_within_seconds(base_env: Any, request: pytest.FixtureRequest, broker: str,
                                                   scheme: str) -> None:
    port = request.getfixturevalue(broker)
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - redis-py's Connection/TimeoutError, kombu's OperationalError
        publish_event({"event": "delivered"}, broker_url=f"{scheme}://:secret@127.0.0.1:{port}/0")
    assert time.monotonic() - started < 5


def test_hung_broker_error_does_not_show_the_password(base_env: Any, hung_port: int) -> None:
    with pytest.raises(Exception) as info:  # noqa: B017
        publish_event({"event": "delivered"}, broker_url=f"redis://:s3cr3t-pw@127.0.0.1:{hung_port}/0")
    assert "s3cr3t-pw" not in str(info.value) and "s3cr3t-pw" not in repr(info.value)


def test_memory_broker_falls_back_to_send_task(base_env: Any) -> None:
    event = {"event": "delivered", "id": "mem"}
    publish_event(event, broker_url="memory://")
    with app.connection_for_write("memory://") as conn:
        message = conn.SimpleQueue(EVENTS_QUEUE, no_ack=True).get(timeout=2)
    assert message.headers["task"] == EVENT_TASK
    assert message.headers["argsrepr"] == _event_summary(event)
    assert message.payload[0] == [event]


def test_summary_never_carries_the_payload() -> None:
    event = {"event": "bounce", "email_id": "e1", "id": "i1", "rcpt": "alice@example.com", "message": "550 gone"}
    assert _event_summary(event) == "[{'event': 'bounce', 'email_id': 'e1', 'id': 'i1'}]"


def test_broker_redis_is_none_for_other_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.conf, "broker_write_url", "memory://")
    assert broker_redis() is None
