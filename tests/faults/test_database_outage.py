"""MariaDB unreachable for 20 s mid-run: tasks wait and retry; every email ends ``sent``, none lost, none twice.

The shared MariaDB is never stopped: the workers reach it through a TCP proxy of our own, and the "outage"
closes every proxied connection and refuses new ones for 20 s. This process keeps the direct URL to check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.faults.harness import (
    Driver,
    Supervisor,
    TcpProxy,
    WorkerProcess,
    all_sent,
    enqueue_many,
    report,
    send_totals,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

N = 300
OUTAGE_SECONDS = 20


@pytest.fixture
def db_proxy(db: str) -> Iterator[tuple[TcpProxy, str]]:
    url = make_url(db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 3306)).start()
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.stop()


def test_database_unreachable_for_20s(db_proxy: tuple[TcpProxy, str], fake_api: Any,
                                      workers: Callable[..., WorkerProcess]) -> None:
    proxy, proxied_url = db_proxy
    fake_api.set_failure(latency=0.02)
    fake_api.activity_rate_per_minute = 10_000
    started = time.monotonic()
    ids = enqueue_many(N, "dbdown")  # all queued before the worker starts: the outage hits a busy worker
    worker = workers("faultsA", pool="threads", concurrency=8, env=worker_env(DATABASE_URL=proxied_url))
    deadline = time.monotonic() + 60
    while len(fake_api.sends) < N // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sent_before = len(fake_api.sends)
    assert sent_before < N, "everything was sent before the outage"
    proxy.outage()
    outage_started = time.monotonic()
    # The sweeper keeps running (from this process, which still reaches the database), as beat would on a host
    # that can still reach it: re-publishing during the outage must not cause a second send either.
    driver = Driver(grace=3, resend_after=5)
    supervisor = Supervisor(worker)
    while time.monotonic() - outage_started < OUTAGE_SECONDS:
        driver.tick()
        supervisor()
        time.sleep(0.5)
    sent_during = len(fake_api.sends) - sent_before
    proxy.resume()
    took = driver.run_until(all_sent(N), timeout=150, what=f"all {N} sent after the database came back",
                            on_tick=supervisor)

    totals = send_totals(ids, fake_api)
    db_retries = worker.log_text().count("database unavailable")
    report("db_outage", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           failed_over=totals.failed_over, outage_seconds=OUTAGE_SECONDS, sent_before_outage=sent_before,
           api_accepts_during_outage=sent_during, task_retries_on_db_errors=db_retries,
           worker_crashes=supervisor.restarts, recovery_seconds=took,
           ambiguous_resolved=driver.totals.ambiguous_resolved, ambiguous_released=driver.totals.ambiguous_released,
           republished=driver.totals.republished, expired_leases=driver.totals.expired_leases,
           proxied_connections=proxy.accepted, elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert not driver.totals.errors, driver.totals.errors
    assert db_retries > 0, "the outage never reached the workers"
    assert worker.alive, "the worker process died"
