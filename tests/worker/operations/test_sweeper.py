"""The sweeper republishes only publishes that were lost, not rows that merely wait in a broker backlog.

Regression: ``published_at`` was never set at enqueue, so every queued row older than the sweeper's grace was
published a second time while its first message still sat in the queue.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import SEND_QUEUE
from worker import enqueue_email
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus, utcnow
from worker.operations.sweeper import sweep


def _queued(redis_client: Any) -> Counter[str]:
    return Counter(json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(SEND_QUEUE, 0, -1))


def _enqueue_with_broker_down(monkeypatch: pytest.MonkeyPatch, subject: str) -> str:
    from worker.sending import publish

    with monkeypatch.context() as patch:  # nothing listens on port 1: the publish fails, the row is stored
        patch.setattr(publish.app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
        return enqueue_email("a@example.com", subject, text_body="b")


def _set(tracking_id: str, **values: Any) -> None:
    """Write columns as given; ``updated_at`` is kept unless given (no onupdate bump)."""
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tracking_id)
                        .values(**{"updated_at": Message.updated_at, **values})
                        .execution_options(synchronize_session=False))


def _age(tracking_id: str, seconds: float) -> None:
    """Pretend the row was enqueued (and published, if it was) ``seconds`` ago."""
    then = utcnow() - timedelta(seconds=seconds)
    with session_scope() as session:
        row = session.get(Message, tracking_id)
        assert row is not None
        published = then if row.published_at is not None else None
    _set(tracking_id, queued_at=then, updated_at=then, published_at=published)


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_published_row_left_alone_failed_publish_repaired(backend: str, request: pytest.FixtureRequest,
                                                          redis_client: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    request.getfixturevalue(backend)
    waiting = enqueue_email("a@example.com", "in the backlog", text_body="b")
    lost = _enqueue_with_broker_down(monkeypatch, "publish failed")
    _age(waiting, 120)  # both well past the grace: only the publish on record tells them apart
    _age(lost, 120)
    assert _queued(redis_client) == Counter({waiting: 1})

    report = sweep(grace=60)

    assert report.republished == 1
    assert _queued(redis_client) == Counter({waiting: 1, lost: 1})  # the waiting row was not published twice
    assert sweep(grace=60).republished == 0  # the repair is on record too


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_publish_really_lost_is_repaired_after_republish_after(backend: str, request: pytest.FixtureRequest,
                                                               redis_client: Any) -> None:
    request.getfixturevalue(backend)
    tid = enqueue_email("a@example.com", "flushed", text_body="b")
    redis_client.delete(SEND_QUEUE)  # Redis flushed: the broker message is gone, published_at still says sent
    _age(tid, 200)
    assert sweep(grace=10, republish_after=300).republished == 0  # could still be waiting in a backlog
    _age(tid, 400)
    assert sweep(grace=10, republish_after=300).republished == 1
    assert _queued(redis_client) == Counter({tid: 1})


def test_republish_after_comes_from_settings(db: str, redis_client: Any, base_env: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    tid = enqueue_email("a@example.com", "flushed", text_body="b")
    redis_client.delete(SEND_QUEUE)
    _age(tid, 30)
    assert sweep(grace=0).republished == 0  # default SWEEP_REPUBLISH_AFTER is 300 s
    base_env.setenv("SWEEP_REPUBLISH_AFTER", "20")
    reset_settings()
    assert sweep(grace=0).republished == 1


def test_row_written_after_its_publish_is_repaired_after_the_grace(db: str, redis_client: Any) -> None:
    """An attempt after the publish consumed that broker message (e.g. a retry left to the sweeper, or a
    parked message released by reconciliation): the old publish no longer counts."""
    tid = enqueue_email("a@example.com", "retry", text_body="b")
    redis_client.delete(SEND_QUEUE)
    published = utcnow() - timedelta(seconds=600)
    attempt_ended = published + timedelta(seconds=1)
    _set(tid, status=MessageStatus.RETRYING, queued_at=published, published_at=published,
         updated_at=attempt_ended, next_attempt_at=utcnow() - timedelta(seconds=90))
    assert sweep(grace=60, republish_after=10_000).republished == 1
    assert _queued(redis_client) == Counter({tid: 1})


def test_far_send_at_is_scheduled_not_republished(db: str, redis_client: Any) -> None:
    when: datetime = utcnow() + timedelta(seconds=5)
    tid = enqueue_email("a@example.com", "scheduled", text_body="b", send_at=when + timedelta(hours=1))
    _set(tid, next_attempt_at=when)
    report = sweep()
    assert (report.scheduled, report.republished) == (1, 0)
    with session_scope() as session:
        row = session.get(Message, tid)
        assert row is not None and row.published_at is not None
