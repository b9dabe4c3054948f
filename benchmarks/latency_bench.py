"""Enqueue -> accepted latency at a steady rate below the peak (the issue asks for it at half of peak load).

The send benchmark enqueues as fast as one caller can, so its p50/p99 are mostly time spent behind the burst.
Here one caller enqueues at a fixed pace (``--rate`` emails/s, default 45: about half of the ~90-98/s a single
threads-16 worker drained in the send benchmark of docs/benchmarks.md) into one fresh mailworker worker against
the 20 ms stand-in, and the latency is ``sent_at - queued_at`` from the database: ``queued_at`` is stamped in
``enqueue_email`` before the INSERT, ``sent_at`` by ``record_accepted`` right after SMTP2Go's stand-in accepted,
so the figure covers the caller's commit and publish, the broker, the claim and the API call.

    .venv/bin/python -m benchmarks.latency_bench [--rate 45] [-n 600] [--pool threads -c 16]

Same isolation as ``benchmarks.run`` (``mwbench<pid>`` names on Redis DB 11, database ``MWBENCH_DB``).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from benchmarks.common import (
    HTML_BODY,
    SEND_QUEUE,
    SUBJECT,
    TEXT_BODY,
    clean_redis,
    configure_env,
    percentile,
    recipient,
    say,
    table,
    truncate_tables,
)


def run(rate: float, n: int, pool: str = "threads", concurrency: int = 16) -> list[str]:
    from sqlalchemy import text

    from benchmarks.common import API_KEY, set_api_url
    from benchmarks.fakeproc import FakeProcess
    from benchmarks.procs import celery_workers, stop_all
    from benchmarks.send_bench import LATENCY, _sent_count, _wait
    from worker import enqueue_email
    from worker.infrastructure.db import get_engine

    fake = FakeProcess(LATENCY, api_key=API_KEY)
    set_api_url(fake.url)
    truncate_tables()
    clean_redis()
    workers = celery_workers(f"mw-latency-{pool}{concurrency}", "worker", SEND_QUEUE, pool, concurrency, 1)
    try:
        warm = max(20, 2 * concurrency)
        for i in range(warm):
            enqueue_email(recipient(10_000_000 + i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY)
        _wait(lambda: _sent_count()[0], warm, 120, "warm-up sends")
        t0 = datetime.now(UTC).replace(tzinfo=None)  # queued_at is stored as naive UTC
        start = time.perf_counter()
        for i in range(n):  # paced: the i-th email is due at start + i / rate; a late caller catches up unpaced
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            enqueue_email(recipient(i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY)
        achieved = n / (time.perf_counter() - start)
        _wait(lambda: _sent_count()[0], warm + n, 60 + n / 5, "sends")
        with get_engine().connect() as conn:
            rows = conn.execute(text("SELECT queued_at, sent_at FROM messages WHERE status = 'sent' "
                                     "AND queued_at >= :t0"), {"t0": t0}).all()
    finally:
        stop_all(workers)
        fake.stop()
    lat = [1000 * (s - q).total_seconds() for q, s in rows]
    return [f"{pool} {concurrency}", f"{rate:g}", f"{achieved:.1f}", str(len(lat)), f"{percentile(lat, 50):.0f}",
            f"{percentile(lat, 95):.0f}", f"{percentile(lat, 99):.0f}", f"{max(lat):.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=45.0, help="emails per second from the one caller")
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("--pool", default="threads")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    args = ap.parse_args()
    configure_env()
    from benchmarks.common import reset_database

    reset_database()
    row = run(args.rate, args.n, args.pool, args.concurrency)
    say(table(["pool", "target rate/s", "achieved rate/s", "emails", "p50 ms", "p95 ms", "p99 ms", "max ms"], [row]))


if __name__ == "__main__":
    main()
