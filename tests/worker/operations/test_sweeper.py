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

from tests.conftest import QUEUE_PREFIX, SEND_QUEUE
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


def _sweeper_has_run() -> None:
    """The sweeper has run against this broker before (its epoch marker is in place): what these tests check
    is the ordinary path, not the first sweep against a Redis (which cannot tell a new one from a flushed one)."""
    sweep()
    assert not sweep().broker_lost


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
    _sweeper_has_run()
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
    _sweeper_has_run()
    tid = enqueue_email("a@example.com", "flushed", text_body="b")
    redis_client.delete(SEND_QUEUE)  # its broker message is gone, the broker kept its data (the marker stays)
    _age(tid, 200)
    assert sweep(grace=10, republish_after=300).republished == 0  # could still be waiting in a backlog
    _age(tid, 400)
    assert sweep(grace=10, republish_after=300).republished == 1
    assert _queued(redis_client) == Counter({tid: 1})


def test_republish_after_comes_from_settings(db: str, redis_client: Any, base_env: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    _sweeper_has_run()
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
    _sweeper_has_run()
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


# ------------------------------------------------------------------------- a broker that lost its data

EPOCH_KEY = f"{SEND_QUEUE}:broker-epoch"


def _wipe_broker(redis_client: Any) -> None:
    """Redis lost everything this session had in it (a flush, as far as we may: only our own keys)."""
    keys = list(redis_client.scan_iter(f"{QUEUE_PREFIX}*"))
    assert EPOCH_KEY.encode() in keys
    redis_client.delete(*keys)


def test_no_broker_loss_still_waits_republish_after(db: str, redis_client: Any) -> None:
    """The ordinary case: the broker kept its data (marker in place), so a publish on record waits the full
    SWEEP_REPUBLISH_AFTER (300 s by default) before it is published again."""
    _sweeper_has_run()
    tid = enqueue_email("a@example.com", "waiting", text_body="b")
    redis_client.delete(SEND_QUEUE)
    _age(tid, 290)
    report = sweep(grace=0)
    assert (report.broker_lost, report.republished) == (False, 0)
    _age(tid, 310)
    assert sweep(grace=0).republished == 1
    assert _queued(redis_client) == Counter({tid: 1})


def test_an_overdue_row_is_republished_once_per_republish_after_not_every_sweep(db: str, redis_client: Any) -> None:
    """A backlog older than SWEEP_REPUBLISH_AFTER is republished once, then again only when that publish is itself
    SWEEP_REPUBLISH_AFTER old: every sweep (15 s) must not add another copy of every overdue row."""
    _sweeper_has_run()
    tid = enqueue_email("a@example.com", "long overdue", text_body="b")
    redis_client.delete(SEND_QUEUE)
    _age(tid, 3600)
    assert sweep(grace=0).republished == 1
    assert sweep(grace=0).republished == 0 and sweep(grace=0).republished == 0
    assert _queued(redis_client) == Counter({tid: 1})
    _set(tid, published_at=utcnow() - timedelta(seconds=310))
    assert sweep(grace=0).republished == 1


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_flushed_broker_is_noticed_and_everything_pending_published_at_once(
        backend: str, request: pytest.FixtureRequest, redis_client: Any) -> None:
    request.getfixturevalue(backend)
    _sweeper_has_run()
    queued = enqueue_email("a@example.com", "queued", text_body="b")
    retry_soon = enqueue_email("b@example.com", "retry soon", text_body="b")
    retry_later = enqueue_email("c@example.com", "retry later", text_body="b")
    _set(retry_soon, status=MessageStatus.RETRYING, next_attempt_at=utcnow() + timedelta(seconds=5))
    _set(retry_later, status=MessageStatus.RETRYING, next_attempt_at=utcnow() + timedelta(hours=1))
    assert _queued(redis_client) == Counter({queued: 1, retry_soon: 1, retry_later: 1})
    assert sweep(grace=60).republished == 0  # all on record, seconds old: nothing to do
    _wipe_broker(redis_client)

    report = sweep(grace=60)  # SWEEP_REPUBLISH_AFTER stays 300 s, the rows are seconds old

    assert report.broker_lost and report.republished == 2
    assert _queued(redis_client) == Counter({queued: 1, retry_soon: 1})
    with session_scope() as session:  # the later one is unpublished now: published when due, not 300 s after
        later = session.get(Message, retry_later)
        assert later is not None and later.published_at is None
        soon = session.get(Message, retry_soon)
        assert soon is not None and soon.published_at is not None
    again = sweep(grace=60)  # noticed once: the marker is back
    assert (again.broker_lost, again.republished) == (False, 0)
    assert redis_client.get(EPOCH_KEY) is not None


def test_restarted_broker_is_noticed_by_its_run_id(db: str, redis_client: Any) -> None:
    """A restart with persistence keeps the marker but not the last writes: the server's run_id tells."""
    _sweeper_has_run()
    run_id = redis_client.info("server")["run_id"]
    assert redis_client.get(EPOCH_KEY) == run_id.encode()
    tid = enqueue_email("a@example.com", "after restart", text_body="b")
    redis_client.delete(SEND_QUEUE)
    redis_client.set(EPOCH_KEY, "0" * 40)  # written by the server process before the restart

    report = sweep(grace=60)

    assert report.broker_lost and report.republished == 1
    assert _queued(redis_client) == Counter({tid: 1})
    assert redis_client.get(EPOCH_KEY) == run_id.encode()


def test_ambiguous_rows_are_not_republished_after_a_loss(db: str, redis_client: Any) -> None:
    _sweeper_has_run()
    tid = enqueue_email("a@example.com", "maybe sent", text_body="b")
    _set(tid, status=MessageStatus.RETRYING, ambiguous_since=utcnow(), next_attempt_at=utcnow())
    _wipe_broker(redis_client)
    report = sweep(grace=0)
    assert report.broker_lost and report.republished == 0 and _queued(redis_client) == Counter()


def test_other_brokers_keep_the_ordinary_path(db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.operations.sweeper import BrokerEpoch
    from worker.sending import publish

    monkeypatch.setattr(publish.app.conf, "broker_write_url", "memory://")
    assert BrokerEpoch.of_broker() is None
    assert sweep().broker_lost is False


# ------------------------------------------------------------------------------------------- the bulk lane


def _bulk_queue(redis_client: Any) -> list[tuple[str, list[str], Any]]:
    """(task name, tracking ids, eta) of every task waiting on the bulk queue, decoded from the kombu message."""
    import base64

    from worker import app

    out = []
    for raw in reversed(redis_client.lrange(app.conf.bulk_queue, 0, -1)):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], list(args[0]), message["headers"].get("eta")))
    return out


def _send_tasks(redis_client: Any) -> Counter[str]:
    """Task names waiting on the (transactional) send queue."""
    return Counter(json.loads(raw)["headers"]["task"] for raw in redis_client.lrange(SEND_QUEUE, 0, -1))


def _enqueue_many_with_broker_down(monkeypatch: pytest.MonkeyPatch, n: int, tag: str) -> list[str]:
    from worker import enqueue_many
    from worker.sending import publish

    with monkeypatch.context() as patch:
        patch.setattr(publish.app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
        return enqueue_many([{"to": f"{tag}{i}@example.com", "subject": f"{tag} {i}", "text_body": "b"}
                             for i in range(n)])


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_lost_bulk_publishes_are_republished_as_send_batch_on_the_bulk_queue(
        backend: str, request: pytest.FixtureRequest, redis_client: Any, base_env: pytest.MonkeyPatch,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    request.getfixturevalue(backend)
    base_env.setenv("BULK_BATCH_SIZE", "3")
    reset_settings()
    _sweeper_has_run()
    bulk = _enqueue_many_with_broker_down(monkeypatch, 7, "bulk")
    single = _enqueue_with_broker_down(monkeypatch, "transactional")
    for tid in [*bulk, single]:
        _age(tid, 120)
    assert _bulk_queue(redis_client) == [] and _queued(redis_client) == Counter()

    report = sweep(grace=60)

    assert report.republished == 8
    batches = _bulk_queue(redis_client)
    assert [name for name, _, _ in batches] == ["mailworker.send_batch"] * 3  # 7 emails, BULK_BATCH_SIZE 3
    assert [len(ids) for _, ids, _ in batches] == [3, 3, 1]
    assert sorted(t for _, ids, _ in batches for t in ids) == sorted(bulk)  # each bulk email once
    assert _send_tasks(redis_client) == Counter({"mailworker.send_email": 1})  # never a send_email for bulk
    assert _queued(redis_client) == Counter({single: 1})
    assert sweep(grace=60).republished == 0  # the repair is on record


def test_bulk_rows_due_later_are_republished_for_their_due_time(db: str, redis_client: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _sweeper_has_run()
    due, later = _enqueue_many_with_broker_down(monkeypatch, 2, "later")
    _age(due, 120)
    _age(later, 120)
    soon = utcnow() + timedelta(seconds=5)
    _set(later, status=MessageStatus.RETRYING, next_attempt_at=soon)
    _wipe_broker(redis_client)  # a loss publishes every row due soon at once, each with its ETA

    report = sweep(grace=60)

    assert report.broker_lost and report.republished == 2
    (first, now_ids, now_eta), (second, later_ids, later_eta) = _bulk_queue(redis_client)
    assert (first, now_ids, now_eta) == ("mailworker.send_batch", [due], None)
    assert (second, later_ids) == ("mailworker.send_batch", [later])
    assert datetime.fromisoformat(later_eta) >= soon - timedelta(seconds=1)  # not claimed before it is due


def test_broker_loss_republishes_bulk_as_batches_and_transactional_as_send_email(
        db: str, redis_client: Any) -> None:
    from worker import enqueue_many

    _sweeper_has_run()
    bulk = enqueue_many([{"to": f"n{i}@example.com", "subject": "news", "text_body": "b"} for i in range(5)])
    single = enqueue_email("a@example.com", "reset", text_body="b")
    assert len(_bulk_queue(redis_client)) == 1 and _queued(redis_client) == Counter({single: 1})
    assert sweep(grace=60).republished == 0  # all on record
    _wipe_broker(redis_client)

    report = sweep(grace=60)

    assert report.broker_lost and report.republished == 6
    batches = _bulk_queue(redis_client)
    assert [(name, sorted(ids)) for name, ids, _ in batches] == [("mailworker.send_batch", sorted(bulk))]
    assert _send_tasks(redis_client) == Counter({"mailworker.send_email": 1})
    assert _queued(redis_client) == Counter({single: 1})


def test_bulk_rows_of_a_dead_worker_are_republished_as_a_batch(db: str, redis_client: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _sweeper_has_run()
    tids = _enqueue_many_with_broker_down(monkeypatch, 2, "dead")
    gone = utcnow() - timedelta(seconds=600)
    for tid in tids:
        _set(tid, status=MessageStatus.SENDING, lease_owner="dead", lease_expires_at=gone, published_at=gone)

    report = sweep(grace=60)

    assert report.expired_leases == 2
    assert [(name, sorted(ids)) for name, ids, _ in _bulk_queue(redis_client)] == [
        ("mailworker.send_batch", sorted(tids))]
    assert _queued(redis_client) == Counter()
