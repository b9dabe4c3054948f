"""The send benchmark's anchor row: django-post_office with its Celery integration, on the same stand-in.

Same measurement as the other rows of :mod:`benchmarks.send_bench`: a fresh worker
(``python -m celery -A benchmarks.post_office_app.celery_app worker -P <pool> -c <c>``) with post_office's
``THREADS_PER_PROCESS`` = c, so c sends are in flight as in the other rows; a warm-up of max(20, 2c) emails;
then N ``post_office.mail.send()`` calls from this process as fast as one caller can while the worker drains,
and a wait until every email is ``sent`` in post_office's table. Figures as for mailworker: end-to-end =
N / (last ``last_updated`` of a sent email - first enqueue), p50/p99 = ``last_updated - created`` from the
database. The stand-in's own count is checked too (duplicate sends are reported, never hidden). With
``--mode drain|both`` the row also runs :mod:`benchmarks.send_drain`'s enqueued-then-drained phase: the N
``mail.send()`` calls while no worker runs (rows wait in the table, ``send_queued_mail`` tasks in the queue),
then a fresh worker drains them.

How post_office drains (its design, not ours): each ``mail.send()`` INSERTs the email and publishes one
``send_queued_mail`` task after commit; the first task to take post_office's lock file sends batches of
``BATCH_SIZE`` (100) queued emails through a ``ThreadPool(THREADS_PER_PROCESS)`` until none is left, then
marks the batch sent with one UPDATE and one bulk INSERT of Log rows; every other task finds the lock taken and
returns. So only one process sends at a time: rows with several worker processes (``16x2``) are skipped.

Django lives only in this process (set up on first use, with ``DJANGO_SETTINGS_MODULE`` removed from the
environment again so the mailworker and baseline workers started later do not inherit it) and in the
post_office worker.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from typing import Any

from benchmarks.common import (
    HTML_BODY,
    MYSQL_HOST,
    PREFIX,
    SENDER,
    SUBJECT,
    TEXT_BODY,
    clean_redis,
    percentile,
    recipient,
    say,
)
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import Service, celery_workers, stop_all
from benchmarks.send_drain import Side

DB_NAME = os.environ.get("MWBENCH_PO_DB", "mwbench_po")
QUEUE = f"{PREFIX}.post_office"
SETTINGS = "benchmarks.post_office_app.settings"

_ready = False


def available() -> str | None:
    """``None`` if Django and post_office are installed, else why not (the row is then skipped)."""
    from importlib.util import find_spec

    for name in ("django", "post_office"):  # found, not imported: post_office reads Django settings on import
        if find_spec(name) is None:
            return f"{name} not installed (.venv/bin/pip install -e '.[test,bench]')"
    return None


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, "MWBENCH_PO_DB": DB_NAME,
            "MWBENCH_PO_QUEUE": QUEUE, "MWBENCH_PO_THREADS": str(threads)}


def setup() -> None:
    """Django in this process; our own database ``mwbench_po`` dropped, recreated and migrated."""
    global _ready
    if _ready:
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(f"mysql+pymysql://root@{MYSQL_HOST}:3306/?charset=utf8mb4")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{DB_NAME}`"))
        conn.execute(text(f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    admin.dispose()
    saved = {k: os.environ.get(k) for k in ("DJANGO_SETTINGS_MODULE", "MWBENCH_PO_DB", "MWBENCH_PO_QUEUE")}
    os.environ.update({"DJANGO_SETTINGS_MODULE": SETTINGS, "MWBENCH_PO_DB": DB_NAME, "MWBENCH_PO_QUEUE": QUEUE})
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        import benchmarks.post_office_app.celery_app  # noqa: F401 - the app send_queued_mail publishes with
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _ready = True


def drop() -> None:
    """Drop our database at the end of the run (its rows would only crowd the shared buffer pool)."""
    if not _ready:
        return
    from django.db import connection
    from sqlalchemy import create_engine, text

    connection.close()
    admin = create_engine(f"mysql+pymysql://root@{MYSQL_HOST}:3306/?charset=utf8mb4")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{DB_NAME}`"))
    admin.dispose()


def _truncate() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS=0")
        for table in connection.introspection.table_names(cur):  # post_office's and django_migrations
            if not table.startswith("post_office_"):
                continue
            cur.execute(f"TRUNCATE TABLE {table}")
        cur.execute("SET FOREIGN_KEY_CHECKS=1")


def _sent() -> int:
    from post_office.models import STATUS, Email

    return int(Email.objects.filter(status=STATUS.sent).count())


def _enqueue(n: int, offset: int) -> tuple[float, float, float]:
    """``mail.send()`` n times, as an application would (each publishes ``send_queued_mail`` on commit)."""
    from celery import _state
    from post_office import mail

    from benchmarks.post_office_app.celery_app import app

    previous = _state.get_current_app()
    app.set_current()  # post_office's @shared_task publishes through the current app
    try:
        t0, c0 = time.time(), os.times()
        for i in range(offset, offset + n):
            mail.send(recipient(i), SENDER, subject=SUBJECT, message=TEXT_BODY, html_message=HTML_BODY,
                      headers={"X-Mailworker-Id": str(uuid.uuid4())})
        t1, c1 = time.time(), os.times()
    finally:
        previous.set_current()
    return t0, n / (t1 - t0), 1000 * (c1.user + c1.system - c0.user - c0.system) / n


def _wait(total: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _sent() >= total:
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}: {_sent()} of {total} sent by post_office")


def run_post_office(pool: str, concurrency: int, n: int, fake: FakeProcess, processes: int = 1,
                    mode: str = "concurrent") -> Any:
    """One post_office row; a :class:`benchmarks.send_bench.SendResult` with ``kind="post_office"``: the
    concurrent phase, the drain phase (:mod:`benchmarks.send_drain`, its figures in ``extra``) or both."""
    from benchmarks.send_bench import _name
    from benchmarks.send_drain import with_drain

    if processes != 1:
        raise ValueError("post_office sends under one lock file: one worker process per row")
    setup()

    def reset() -> None:
        _truncate()
        clean_redis()
        fake.reset()

    def start(suffix: str) -> list[Service]:
        return celery_workers(f"po-{_name(pool, concurrency, processes)}{suffix}",
                              "benchmarks.post_office_app.celery_app", QUEUE, pool, concurrency, processes,
                              env=_env(concurrency))

    side = Side("post_office", reset, start, _enqueue, _sent)
    result = None if mode == "drain" else _concurrent(side, pool, concurrency, n, fake)
    if result is not None and mode == "concurrent":
        return result
    return with_drain(result, side, pool, concurrency, processes, n, fake)


def _concurrent(side: Side, pool: str, concurrency: int, n: int, fake: FakeProcess) -> Any:
    from post_office.models import STATUS, Email

    from benchmarks.send_bench import SendResult, _Run

    processes = 1
    side.reset()
    workers = side.start("")
    try:
        warm = max(20, 2 * concurrency)
        _enqueue(warm, 10_000_000)
        _wait(warm, 120, "warm-up sends")
        start = fake.count()
        run = _Run(workers, fake)
        t0, enq_rate, enq_cpu = _enqueue(n, 0)
        _wait(warm + n, 60 + n / 5, "sends")
        worker_cpu, peak, fake_cpu, servers = run.finish(n)
        arrivals = fake.times(start)
        from datetime import UTC, datetime

        rows = list(Email.objects.filter(status=STATUS.sent, created__gte=datetime.fromtimestamp(t0, UTC))
                    .values_list("created", "last_updated"))
        failed = Email.objects.exclude(status=STATUS.sent).count()
    finally:
        stop_all(workers)
    tracking = [tid for tid, _ in arrivals]
    duplicates = len(tracking) - len(set(tracking))
    if duplicates or failed:
        say(f"  post_office: {duplicates} duplicate sends at the stand-in, {failed} emails not sent")
    lat = [(done - created).total_seconds() for created, done in rows]
    last = max(done for _, done in rows).timestamp()
    accepted = max(t for _, t in arrivals) + fake.latency
    result = SendResult("post_office", pool, concurrency, processes, n, enq_rate, enq_cpu, len(rows) / (last - t0),
                        1000 * percentile(lat, 50), 1000 * percentile(lat, 99), worker_cpu, peak, fake_cpu, servers)
    result.extra = {"e2e_accepted_per_s": len(arrivals) / (accepted - t0), "stand_in_sends": len(arrivals),
                    "duplicates": duplicates, "not_sent": failed}
    return result


def census(n: int = 200) -> str:
    """Round trips per email on post_office's side, counted as :mod:`benchmarks.census` counts mailworker's:
    ``n`` ``mail.send()`` calls, then one ``send_queued_mail_until_done()`` in this process against a stand-in
    that answers at once. Run as ``python -m benchmarks.post_office_bench census [N]`` (after
    ``benchmarks.common.configure_env``, which ``__main__`` calls)."""
    from benchmarks.census import counting
    from benchmarks.common import API_KEY, set_api_url, table

    fake = FakeProcess(0.0, api_key=API_KEY)
    set_api_url(fake.url)
    os.environ["MWBENCH_PO_THREADS"] = "16"
    try:
        setup()
        from django.conf import settings
        from post_office.mail import send_queued_mail_until_done

        settings.SMTP2GO_API_URL = fake.url
        _truncate()
        rows: list[tuple[str, Counter[str], Counter[str], float | None]] = []
        with counting() as (sql, rds):
            t0 = time.thread_time()
            _enqueue(n, 0)
            cpu = time.thread_time() - t0
        rows.append(("mail.send() (+ publish)", sql, rds, cpu))
        with counting() as (sql, rds):
            send_queued_mail_until_done()  # its sending threads' CPU is not a caller figure: round trips only
        rows.append((f"send_queued_mail_until_done() ({n} queued), per email", sql, rds, None))
        if _sent() != n or fake.count() != n:
            raise RuntimeError(f"census: {_sent()} sent in the table, {fake.count()} at the stand-in, of {n}")
        out = table(["per email", "MariaDB round trips", "by command", "Redis round trips", "CPU ms (caller)"], [
            [what, f"{sum(s.values()) / n:g}", ", ".join(f"{k} {v / n:g}" for k, v in s.most_common()),
             f"{r['(round trips)'] / n:g}", "-" if c is None else f"{1000 * c / n:.2f}"] for what, s, r, c in rows])
    finally:
        drop()
        clean_redis()
        fake.stop()
    return out


if __name__ == "__main__":
    import sys

    from benchmarks.common import configure_env

    if sys.argv[1:2] != ["census"]:
        raise SystemExit("usage: python -m benchmarks.post_office_bench census [N]")
    configure_env()
    say(census(int(sys.argv[2]) if len(sys.argv) > 2 else 200))
