"""``kill -9`` a worker in the middle of 500 sends, start a new one: every email ends ``sent``, none twice.

The kill leaves rows in flight (status ``sending``, ``inflight_since`` set, lease held by a dead process). After
the lease runs out the sweeper re-publishes them; the new worker's take-over sees the in-flight mark and parks
each as *ambiguous* instead of sending again; reconciliation asks the (fake) SMTP2Go activity search and marks
the ones SMTP2Go had accepted ``sent``, and releases the ones that never reached it for a normal resend.
Messages the dead worker had prefetched (unacked in Redis, visibility timeout an hour) are re-published by the
sweeper because their rows are still ``queued``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import wait_until
from tests.faults.harness import Driver, WorkerProcess, all_sent, enqueue_many, report, send_totals
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

N = 500


def _inflight() -> int:
    with session_scope() as session:
        return int(session.scalar(
            select(func.count()).select_from(Message)
            .where(Message.status == MessageStatus.SENDING, Message.inflight_since.is_not(None))) or 0)


def test_kill9_mid_run_then_new_worker(fake_api: Any, workers: Callable[..., WorkerProcess]) -> None:
    fake_api.set_failure(latency=0.02)
    fake_api.activity_rate_per_minute = 10_000
    started = time.monotonic()
    ids = enqueue_many(N, "kill")
    first = workers("faultsA", pool="prefork", concurrency=4)

    wait_until(lambda: len(fake_api.sends) >= N // 4, timeout=90, interval=0.02, message="a quarter sent")
    # Slow answers for a moment, so the kill surely lands while sends are in flight (accepted by the API, the
    # answer not yet read: the case that must not be resent), however busy this machine is.
    fake_api.set_failure(latency=2.0)
    wait_until(lambda: _inflight() >= 2, timeout=30, interval=0.01, message="sends in flight")
    first.kill9()
    fake_api.set_failure(latency=0.02)
    sent_at_kill = len(fake_api.sends)
    with session_scope() as session:
        in_flight_ids = list(session.scalars(select(Message.id).where(Message.status == MessageStatus.SENDING)))
        inflight_marked = int(session.scalar(
            select(func.count()).select_from(Message)
            .where(Message.status == MessageStatus.SENDING, Message.inflight_since.is_not(None))) or 0)
    assert inflight_marked >= 2, "the kill did not catch sends in flight"

    workers("faultsB", pool="prefork", concurrency=4)
    # SEND_LEASE_SECONDS=5: the dead worker's leases expire after 5 s; the fake's activity search has no lag, so
    # an ambiguous send that is not found after 5 s never reached it and may be resent.
    driver = Driver(grace=5, resend_after=5)
    driver.run_until(all_sent(N), timeout=150, what=f"all {N} sent")

    totals = send_totals(ids, fake_api)
    with session_scope() as session:
        took_over = session.scalars(select(Message).where(Message.id.in_(in_flight_ids))).all()
        crashes = sum(m.crashes for m in took_over)
    report("kill9", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           failed_over=totals.failed_over, leased_at_kill=len(in_flight_ids), in_flight_at_kill=inflight_marked,
           sent_before_kill=sent_at_kill,
           ambiguous_resolved=driver.totals.ambiguous_resolved,
           ambiguous_released=driver.totals.ambiguous_released, takeovers=crashes,
           republished=driver.totals.republished + driver.totals.expired_leases,
           elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert totals.via_api == N
    assert all(m.status == MessageStatus.SENT for m in took_over)
    # Every send in flight at the kill went through the ambiguous path: found at SMTP2Go, or released unsent.
    assert driver.totals.ambiguous_resolved >= 1
    assert driver.totals.ambiguous_resolved + driver.totals.ambiguous_released >= inflight_marked
    assert not driver.totals.errors, driver.totals.errors
