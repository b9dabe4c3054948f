"""``publish_event``: the webhook receiver's one-LPUSH publish of ``mailworker.process_event``, and
``publish_send``'s (``mailworker.send_email``, the enqueue path's).

Each must write the very message ``app.send_task`` writes (checked field by field against a real capture), a real
Celery worker must consume and apply it, and it must fail within seconds when Redis is down or hung.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from tests.conftest import EVENTS_QUEUE, FIXTURES_DIR, REDIS_URL, SEND_QUEUE, wait_until
from worker.celery_app import app
from worker.sending.publish import (
    EVENT_SOCKET_TIMEOUT,
    EVENT_TASK,
    SEND_TASK,
    _build_target,
    _event_summary,
    _target,
    publish_event,
    publish_send,
)

#: Per-message values: fresh for every message, so they differ between any two messages.
PER_MESSAGE = {"headers.id", "headers.root_id", "properties.correlation_id", "properties.delivery_tag"}


def _fixture_events() -> list[dict[str, Any]]:
    events = [json.loads(p.read_text()) for p in sorted(FIXTURES_DIR.glob("webhook_*.json"))]
    form = (FIXTURES_DIR / "webhook_delivered.form").read_text().strip()
    events.append(dict(parse_qsl(form, keep_blank_values=True)))
    # Values the fixtures lack: non-ASCII, nesting, numbers, booleans, null, no identity keys at all.
    events.append({"event": "open", "email_id": "x", "rcpt": "zoë@exämple.com", "n": [1, 2.5, None, True],
                   "nested": {"a": {"b": ["c"]}}, "subject": "\u2603 \U0001f600 \"quoted\" \\ back"})
    events.append({"foo": "bar"})
    return events


EVENTS = _fixture_events()


def _flat(message: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _pop_one(redis_client: Any) -> tuple[bytes, dict[str, Any]]:
    assert redis_client.llen(EVENTS_QUEUE) == 1
    raw = redis_client.rpop(EVENTS_QUEUE)
    return raw, json.loads(raw)


# --------------------------------------------------------------------------------------------- the message


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: str(e.get("event", "no-event")))
def test_message_is_what_send_task_writes(base_env: Any, redis_client: Any, event: dict[str, Any]) -> None:
    app.send_task(EVENT_TASK, args=[event], argsrepr=_event_summary(event))
    sent_raw, sent = _pop_one(redis_client)
    publish_event(event)
    ours_raw, ours = _pop_one(redis_client)

    expected, actual = _flat(sent), _flat(ours)
    assert list(actual) == list(expected)  # the same fields, in the same order
    for key in expected:
        if key not in PER_MESSAGE:
            assert actual[key] == expected[key], key
    # The exchange send_task uses for this route: the anonymous one (direct exchange, routed by queue name).
    assert actual["properties.delivery_info.exchange"] == ""
    assert actual["properties.delivery_info.routing_key"] == EVENTS_QUEUE
    assert actual["properties.priority"] == 0 and actual["properties.body_encoding"] == "base64"
    assert actual["headers.argsrepr"] == actual["properties.argsrepr"] == _event_summary(event)
    # Per-message ids: fresh uuids, wired together as Celery wires them.
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["headers"]["id"] != sent["headers"]["id"]
    assert uuid.UUID(ours["properties"]["delivery_tag"]) != uuid.UUID(ours["headers"]["id"])
    assert json.loads(base64.b64decode(ours["body"])) == [[event], {}, {"callbacks": None, "errbacks": None,
                                                                       "chain": None, "chord": None}]
    # And byte for byte, once the per-message ids are blanked out.
    for msg, raw in ((sent, sent_raw), (ours, ours_raw)):
        for value in (msg["headers"]["id"], msg["properties"]["delivery_tag"]):
            raw = raw.replace(value.encode(), b"<id>")
        msg["normalised"] = raw
    assert ours["normalised"] == sent["normalised"]


def test_send_publish_is_what_send_task_writes(base_env: Any, redis_client: Any) -> None:
    """``publish_send`` (one LPUSH, kept for its measured cost, see publish.py) against ``send_task`` itself, given
    the same ``argsrepr`` (the direct path writes it into the properties too, as ``send_task`` does when given)."""
    tracking_id = str(uuid.uuid4())
    app.send_task(SEND_TASK, args=[tracking_id], task_id=tracking_id, argsrepr=repr([tracking_id]))
    assert redis_client.llen(SEND_QUEUE) == 1
    sent_raw = redis_client.rpop(SEND_QUEUE)
    assert publish_send(tracking_id) is True
    assert redis_client.llen(SEND_QUEUE) == 1
    ours_raw = redis_client.rpop(SEND_QUEUE)
    sent, ours = json.loads(sent_raw), json.loads(ours_raw)
    assert list(_flat(ours)) == list(_flat(sent))
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == tracking_id
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": SEND_QUEUE}
    for msg_raw, msg in ((sent_raw, sent), (ours_raw, ours)):
        msg["normalised"] = msg_raw.replace(msg["properties"]["delivery_tag"].encode(), b"<tag>")
    assert ours["normalised"] == sent["normalised"]


def test_summary_never_carries_the_payload() -> None:
    event = {"event": "bounce", "email_id": "e1", "id": "i1", "rcpt": "alice@example.com", "message": "550 gone"}
    assert _event_summary(event) == "[{'event': 'bounce', 'email_id': 'e1', 'id': 'i1'}]"


# --------------------------------------------------------------------------------------------- a real worker


def _sent_message(address: str, email_id: str) -> str:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import (
        Message,
        MessageStatus,
        Recipient,
        RecipientKind,
        RecipientStatus,
        Transport,
    )

    tracking_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with session_scope() as session:
        message = Message(id=tracking_id, status=MessageStatus.SENT, transport=Transport.SMTP2GO,
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


# --------------------------------------------------------------------------------------------- the client


def test_one_shared_fail_fast_client_per_process_and_url(base_env: Any, redis_client: Any) -> None:
    publish_event({"event": "delivered", "id": "a"})
    target = _target(EVENT_TASK, REDIS_URL)
    publish_event({"event": "delivered", "id": "b"})
    assert _target(EVENT_TASK, REDIS_URL) is target
    assert redis_client.llen(EVENTS_QUEUE) == 2
    assert target is not None
    kwargs = target.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == EVENT_SOCKET_TIMEOUT
    assert not kwargs["retry_on_timeout"]
    retry = kwargs["retry"]
    import redis

    assert retry.get_retries() == 1
    assert redis.exceptions.ConnectionError in retry._supported_errors
    assert redis.exceptions.TimeoutError not in retry._supported_errors


def test_rediss_url_with_password() -> None:
    import redis

    target = _build_target(EVENT_TASK, "rediss://:p%40ss%2Fw0rd@redis.example.invalid:6380/3")
    assert target is not None
    try:
        pool = target.client.connection_pool
        assert issubclass(pool.connection_class, redis.SSLConnection)
        kwargs = pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example.invalid", 6380, 3)
        assert kwargs["password"] == "p@ss/w0rd"
        assert target.queue == EVENTS_QUEUE
    finally:
        target.client.close()


def test_a_forked_child_builds_its_own_client(base_env: Any, redis_client: Any) -> None:
    publish_event({"event": "delivered", "id": "parent"})
    parent = _target(EVENT_TASK, REDIS_URL)
    assert parent is not None

    def child() -> None:
        from worker.sending import publish

        publish_event({"event": "delivered", "id": "child"})
        mine = _target(EVENT_TASK, REDIS_URL)
        ok = mine is not None and mine.client is not parent.client and {k[0] for k in publish._targets} == {
            os.getpid()}
        os._exit(0 if ok else 1)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(20)
    assert proc.exitcode == 0
    publish_event({"event": "delivered", "id": "parent-again"})  # the parent's client still works
    ids = [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]["id"]
           for raw in reversed(redis_client.lrange(EVENTS_QUEUE, 0, -1))]
    assert ids == ["parent", "child", "parent-again"]


def test_a_connection_killed_by_the_server_is_retried_once(base_env: Any, redis_client: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a Redis restart: the pooled connection is dead, Redis is back; the publish must not fail."""
    import redis

    publish_event({"event": "delivered", "id": "before"})
    target = _target(EVENT_TASK, REDIS_URL)
    assert target is not None
    assert redis_client.client_kill_filter(_id=target.client.client_id()) == 1
    # Skip redis-py's own check-out probe, so the LPUSH itself meets the dead connection (the race where the
    # server goes away between check-out and command): only the one retry saves it.
    monkeypatch.setattr(redis.connection.AbstractConnection, "can_read", lambda self, timeout=0: False)
    publish_event({"event": "delivered", "id": "after"})
    assert redis_client.llen(EVENTS_QUEUE) == 2


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
    assert _build_target(EVENT_TASK, "memory://") is None
    publish_event(event, broker_url="memory://")
    with app.connection_for_write("memory://") as conn:
        message = conn.SimpleQueue(EVENTS_QUEUE, no_ack=True).get(timeout=2)
    assert message.headers["task"] == EVENT_TASK
    assert message.headers["argsrepr"] == _event_summary(event)
    assert message.payload[0] == [event]


@pytest.mark.parametrize(("setting", "value"), [
    ("task_compression", "gzip"),
    ("task_serializer", "pickle"),
    ("task_protocol", 1),
    ("task_default_priority", 5),
    ("broker_transport_options", {"global_keyprefix": "other:"}),
])
def test_settings_send_task_honours_differently_fall_back(monkeypatch: pytest.MonkeyPatch, setting: str,
                                                          value: Any) -> None:
    assert _build_target(EVENT_TASK, "redis://127.0.0.1:1/0") is not None
    monkeypatch.setitem(app.conf, setting, value)
    assert _build_target(EVENT_TASK, "redis://127.0.0.1:1/0") is None


@pytest.mark.parametrize("url", ["memory://", "amqp://guest@127.0.0.1//", "sentinel://127.0.0.1:26379",
                                 "redis://127.0.0.1:1/0;redis://127.0.0.1:2/0", "redis+socket:///tmp/redis.sock"])
def test_urls_redis_py_cannot_take_fall_back(url: str) -> None:
    assert _build_target(EVENT_TASK, url) is None
