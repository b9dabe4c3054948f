"""Two worker hosts (separate processes, different node names) on one broker and one database, every task
published three times: each email is sent exactly once, and the duplicate deliveries are refused by the claim."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.harness import Driver, WorkerProcess, all_sent, enqueue_many, report, send_totals
from worker.sending.publish import publish_send

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

N = 300
COPIES = 3
_OUTCOME = re.compile(r"succeeded in [0-9.e-]+s: \{'tracking_id': '([0-9a-f-]+)', 'outcome': '(\w+)'")


def _outcomes(worker: WorkerProcess) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for tid, outcome in _OUTCOME.findall(worker.log_text()):
        found.setdefault(outcome, []).append(tid)
    return found


def test_two_hosts_duplicate_publishes_no_duplicate_sends(fake_api: Any, workers: Callable[..., WorkerProcess],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake_api.set_failure(latency=0.02)
    started = time.monotonic()
    # Store the rows without publishing, then publish every id COPIES times back to back (id1 id1 id1 id2 ...),
    # and only then start both hosts: adjacent copies are taken by different hosts at the same moment.
    with monkeypatch.context() as patch:
        patch.setattr("worker.api.enqueue.publish_send", lambda *a, **k: True)
        ids = enqueue_many(N, "twohosts")
    for tid in ids:
        for _ in range(COPIES):
            assert publish_send(tid)
    host_a = workers("faultsA", pool="threads", concurrency=8, wait=False)
    host_b = workers("faultsB", pool="prefork", concurrency=2, wait=False)
    host_a.wait_ready()
    host_b.wait_ready()
    driver = Driver(grace=30, reconcile=False)  # a safety net only: nothing is lost in this test
    took = driver.run_until(all_sent(N), timeout=150, what=f"all {N} sent")

    def executed() -> int:
        return sum(len(v) for w in (host_a, host_b) for v in _outcomes(w).values())

    # Wait for the last duplicate deliveries to be consumed and logged (each is refused by the claim).
    deadline = time.monotonic() + 30
    while executed() < N * COPIES + driver.totals.republished and time.monotonic() < deadline:
        time.sleep(0.2)
    a, b = _outcomes(host_a), _outcomes(host_b)
    totals = send_totals(ids, fake_api)
    sent_a, sent_b = len(a.get("sent", [])), len(b.get("sent", []))
    skipped = len(a.get("skipped", [])) + len(b.get("skipped", []))
    report("two_hosts", sent=totals.sent, duplicates=totals.duplicates, lost=totals.lost,
           failed_over=totals.failed_over, publishes=N * COPIES + driver.totals.republished, sent_by_a=sent_a,
           sent_by_b=sent_b, duplicate_deliveries_refused=skipped, seconds=took,
           elapsed=time.monotonic() - started)
    assert totals.lost == 0, totals.not_sent
    assert totals.duplicates == 0, totals.duplicate_ids
    assert all(fake_api.count_for(tid) == 1 for tid in ids)
    assert sent_a + sent_b == N, "every id is sent by exactly one delivery across both hosts"
    assert set(a.get("sent", [])).isdisjoint(b.get("sent", []))
    assert sent_a > 0 and sent_b > 0, "both hosts took part"
    assert skipped == N * COPIES + driver.totals.republished - N
