"""Redis restarted mid-run, and Redis flushed mid-run (broker messages lost): every email still ends ``sent``.

These tests never touch the machine's shared Redis: they start a redis-server of their own (no persistence, so
a restart loses everything, like a flush) and point the workers and this process at it. Recovery is the
sweeper's job: the database rows are the truth, and rows whose broker message vanished are re-published.
The last tests keep ``SWEEP_REPUBLISH_AFTER`` at its 300 s default: the loss itself must be noticed at the next
sweep (the broker epoch marker), so mail moves again within 2 minutes, with nothing sent twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults import harness
from tests.faults.harness import (
    Driver,
    PrivateRedis,
    Supervisor,
    WorkerProcess,
    all_sent,
    enqueue_many,
    report,
    send_totals,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

N = 300


def _run(name: str, fault: Callable[[PrivateRedis], list[str]], private_redis: PrivateRedis, fake_api: Any,
         workers: Callable[..., WorkerProcess]) -> None:
    fake_api.set_failure(latency=0.02)
    started = time.monotonic()
    env = worker_env(CELERY_BROKER_URL=private_redis.url)
    ids = enqueue_many(N, name)  # all in the broker before the worker starts: the fault hits a full queue
    worker = workers("faultsA", pool="threads", concurrency=8, env=env)
    # Mid-run: a good part sent, a good part still waiting in the broker.
    deadline = time.monotonic() + 60
    while len(fake_api.sends) < N // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sent_before = len(fake_api.sends)
    assert sent_before < N, "everything was sent before the fault"
    fault_started = time.monotonic()
    ids += fault(private_redis)
    fault_seconds = time.monotonic() - fault_started
    driver = Driver(grace=3, reconcile=True, resend_after=5)
    supervisor = Supervisor(worker)
    took = driver.run_until(all_sent(len(ids)), timeout=150, what=f"all {len(ids)} sent after {name}",
                            on_tick=supervisor)
    totals = send_totals(ids, fake_api)
    log = worker.log_text()
    reconnects = log.count("Connection to broker lost") + log.count("Cannot connect to")
    report(name, sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost, failed_over=totals.failed_over,
           sent_before_fault=sent_before, fault_seconds=fault_seconds, worker_reconnects=reconnects,
           worker_crashes=supervisor.restarts,
           recovery_seconds=took,
           republished=driver.totals.republished,
           expired_leases=driver.totals.expired_leases, ambiguous_resolved=driver.totals.ambiguous_resolved,
           elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert worker.alive, "the worker process died"
    if name == "redis_restart":
        assert reconnects >= 1, "the worker never noticed the restart"


def _restart(server: PrivateRedis) -> list[str]:
    server.kill()
    down = time.monotonic()
    # Enqueued while the broker is down: the call must still succeed (the sweeper publishes the rows later).
    ids = enqueue_many(3, "while-down")
    time.sleep(max(0.0, 3 - (time.monotonic() - down)))  # down long enough for the worker to notice
    server.start()
    return ids


def _flush(server: PrivateRedis) -> list[str]:
    server.flushall()
    return enqueue_many(3, "after-flush")


def test_redis_restarted_mid_run(private_redis: PrivateRedis, fake_api: Any,
                                 workers: Callable[..., WorkerProcess]) -> None:
    _run("redis_restart", _restart, private_redis, fake_api, workers)


def test_redis_flushed_mid_run(private_redis: PrivateRedis, fake_api: Any,
                               workers: Callable[..., WorkerProcess]) -> None:
    _run("redis_flush", _flush, private_redis, fake_api, workers)


# ----------------------------------------------------- the loss noticed at once, SWEEP_REPUBLISH_AFTER at 300 s


def _wipe(server: PrivateRedis) -> list[str]:
    """Everything in the (private) Redis is gone, key by key."""
    server.delete_every_key()
    return enqueue_many(3, "after-wipe")


@pytest.mark.parametrize("fault", [_wipe, _restart], ids=["flushed", "restarted"])
def test_lost_broker_noticed_at_the_next_sweep(fault: Callable[[PrivateRedis], list[str]], private_redis: PrivateRedis,
                                               fake_api: Any, workers: Callable[..., WorkerProcess],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.operations.sweeper import sweep

    republish_after = 300.0  # the default: a publish on record is otherwise left alone for 5 minutes
    monkeypatch.setitem(harness.FAULT_ENV, "SWEEP_REPUBLISH_AFTER", str(int(republish_after)))
    fake_api.set_failure(latency=0.02)
    assert sweep(grace=3, republish_after=republish_after).broker_lost  # a new Redis: the marker is set now
    ids = enqueue_many(N, f"epoch-{fault.__name__.strip('_')}")
    before = sweep(grace=3, republish_after=republish_after)
    assert (before.broker_lost, before.republished) == (False, 0)  # the ordinary path: all on record
    worker = workers("faultsE", pool="threads", concurrency=8,
                     env=worker_env(CELERY_BROKER_URL=private_redis.url))
    deadline = time.monotonic() + 60
    while len(fake_api.sends) < N // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sent_before = len(fake_api.sends)
    assert sent_before < N, "everything was sent before the fault"

    ids += fault(private_redis)
    lost_at = time.monotonic()
    first = sweep(grace=3, republish_after=republish_after)
    assert first.broker_lost, "the sweep after the loss did not notice it"
    assert first.republished > 0
    driver = Driver(grace=3, reconcile=True, resend_after=5)
    supervisor = Supervisor(worker)
    took = driver.run_until(all_sent(len(ids)), timeout=120 - (time.monotonic() - lost_at),
                            what=f"all {len(ids)} sent within 2 minutes of the loss", on_tick=supervisor)
    totals = send_totals(ids, fake_api)
    report(f"epoch_{fault.__name__.strip('_')}", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           sent_before_fault=sent_before, republished_at_once=first.republished,
           republished_later=driver.totals.republished, recovery_seconds=time.monotonic() - lost_at,
           driver_seconds=took)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert worker.alive, "the worker process died"
