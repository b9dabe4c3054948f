"""Faults in the middle of a bulk run: 5,000 emails enqueued through ``enqueue_many`` (``send_batch`` tasks of
``BULK_BATCH_SIZE`` on the bulk queue), then a ``kill -9`` of the worker, or every broker key deleted. Both end
with every email accepted exactly once at the fake SMTP2Go (counted by ``X-Mailworker-Id``): 0 lost, 0 duplicated.

- **kill -9**: the batch that was in flight is left ``sending`` with its in-flight mark under a dead lease. The
  sweeper republishes those rows (as ``send_batch``) once the lease runs out; the take-over parks them as
  ambiguous; reconciliation settles the parked emails of that batch with one activity search over the batch's
  window (SMTP2Go had them: ``sent``, never resent; it did not: released and sent again). Batches the dead worker
  had prefetched are republished from their still-``queued`` rows.
- **broker keys deleted** (a flush, key by key, in a redis-server of the test's own: never FLUSHALL/FLUSHDB on a
  shared database): the next sweep notices the loss (the epoch marker is gone) and republishes every pending row
  at once, bulk rows as ``send_batch`` chunks on the bulk queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.faults.harness import (
    ALL_QUEUES,
    Driver,
    PrivateRedis,
    Supervisor,
    WorkerProcess,
    all_sent,
    purge_unacked,
    report,
    send_totals,
    worker_env,
)
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

N = 5000
#: 50 batches: enough that a fault lands mid-run with batches done, in flight and waiting.
BATCH_SIZE = 100


def _bulk_queue() -> str:
    from worker.celery_app import app

    return str(app.conf.bulk_queue)


@pytest.fixture
def bulk_workers(tmp_path: Path, redis_client: Any, db: str, base_env: pytest.MonkeyPatch
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """Like the suite's ``workers`` fixture, on the bulk queue too; ``BULK_BATCH_SIZE`` here and in the workers."""
    base_env.setenv("BULK_BATCH_SIZE", str(BATCH_SIZE))
    started: list[WorkerProcess] = []

    def start(name: str, *, pool: str = "prefork", concurrency: int = 4, env: dict[str, str] | None = None
              ) -> WorkerProcess:
        proc = WorkerProcess(name, tmp_path, env or worker_env(), pool=pool, concurrency=concurrency,
                             queues=f"{ALL_QUEUES},{_bulk_queue()}")
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
        purge_unacked(redis_client)


def _enqueue_bulk(tag: str) -> list[str]:
    from worker import enqueue_many

    ids = enqueue_many([{"to": f"{tag}{i}@example.com", "subject": f"{tag} #{i}", "text_body": f"body {i}"}
                        for i in range(N)])
    assert len(set(ids)) == N
    return ids


def _inflight() -> int:
    with session_scope() as session:
        return int(session.scalar(
            select(func.count()).select_from(Message)
            .where(Message.status == MessageStatus.SENDING, Message.inflight_since.is_not(None))) or 0)


def _wait_sent(fake_api: Any, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(fake_api.sends) < at_least:
        assert time.monotonic() < deadline, f"only {len(fake_api.sends)} sent in {timeout}s"
        time.sleep(0.02)


def _requests(fake_api: Any, path: str, since: int = 0) -> int:
    return sum(1 for r in fake_api.requests[since:] if r.get("path") == path)


def test_kill9_mid_bulk_then_new_worker(fake_api: Any, bulk_workers: Callable[..., WorkerProcess]) -> None:
    fake_api.set_failure(latency=0.02)
    fake_api.activity_rate_per_minute = 10_000
    started = time.monotonic()
    ids = _enqueue_bulk("kill")
    first = bulk_workers("bulkA")

    _wait_sent(fake_api, N // 4)
    # Slow answers for a moment, so the kill surely lands while a batch is in flight (accepted by the fake, the
    # answer not yet read: the emails that must not be sent again).
    fake_api.set_failure(latency=3.0)
    deadline = time.monotonic() + 30
    while _inflight() < 2:
        assert time.monotonic() < deadline, "no batch in flight"
        time.sleep(0.01)
    first.kill9()
    fake_api.set_failure(latency=0.02)
    sent_at_kill = len(fake_api.sends)
    requests_at_kill = len(fake_api.requests)
    inflight_at_kill = _inflight()
    assert sent_at_kill < N, "everything was sent before the kill"

    bulk_workers("bulkB")
    driver = Driver(grace=5, resend_after=5)
    took = driver.run_until(all_sent(N), timeout=200, what=f"all {N} sent after the kill")

    totals = send_totals(ids, fake_api)
    report("bulk_kill9", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           sent_before_kill=sent_at_kill, in_flight_at_kill=inflight_at_kill,
           ambiguous_resolved=driver.totals.ambiguous_resolved,
           ambiguous_released=driver.totals.ambiguous_released,
           republished=driver.totals.republished + driver.totals.expired_leases,
           batch_requests_after=_requests(fake_api, "/email/batch", requests_at_kill),
           single_requests_after=_requests(fake_api, "/email/send", requests_at_kill),
           activity_searches=len(fake_api.activity_queries), recovery_seconds=took,
           elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert totals.via_api == N
    assert inflight_at_kill >= 2, "the kill did not catch a batch in flight"
    # The batch in flight at the kill went through the ambiguous path: found at SMTP2Go, or released unsent.
    assert driver.totals.ambiguous_resolved >= 1
    assert driver.totals.ambiguous_resolved + driver.totals.ambiguous_released >= inflight_at_kill
    # ... settled per batch (one search over its window), not one search per email.
    assert len(fake_api.activity_queries) < inflight_at_kill
    assert not driver.totals.errors, driver.totals.errors


def test_broker_flushed_mid_bulk(private_redis: PrivateRedis, fake_api: Any,
                                 bulk_workers: Callable[..., WorkerProcess]) -> None:
    from worker.operations.sweeper import sweep

    fake_api.set_failure(latency=0.02)
    started = time.monotonic()
    assert sweep(grace=3).broker_lost  # a new Redis: the epoch marker is written now
    ids = _enqueue_bulk("flush")
    waiting = private_redis_len(private_redis, _bulk_queue())
    assert waiting == N // BATCH_SIZE  # one send_batch per chunk, all in the broker
    worker = bulk_workers("bulkF", env=worker_env(CELERY_BROKER_URL=private_redis.url))

    _wait_sent(fake_api, N // 3)
    sent_before = len(fake_api.sends)
    requests_before = len(fake_api.requests)
    assert sent_before < N, "everything was sent before the flush"
    deleted = private_redis.delete_every_key()

    first = sweep(grace=3)
    assert first.broker_lost, "the sweep after the flush did not notice it"
    assert first.republished > 0
    driver = Driver(grace=3, reconcile=True, resend_after=5)
    supervisor = Supervisor(worker)
    took = driver.run_until(all_sent(N), timeout=200, what=f"all {N} sent after the flush", on_tick=supervisor)

    totals = send_totals(ids, fake_api)
    single_after = _requests(fake_api, "/email/send", requests_before)
    report("bulk_flush", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           sent_before_flush=sent_before, keys_deleted=deleted, republished_at_once=first.republished,
           republished_later=driver.totals.republished, worker_crashes=supervisor.restarts,
           batch_requests_after=_requests(fake_api, "/email/batch", requests_before),
           single_requests_after=single_after, recovery_seconds=took, elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert single_after == 0  # the repair republished the bulk rows as batches, never one send_email each
    assert worker.alive, "the worker process died"


def private_redis_len(server: PrivateRedis, key: str) -> int:
    import redis

    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        length: Any = client.llen(key)
        return int(length)
    finally:
        client.close()
