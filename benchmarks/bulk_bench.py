"""Bulk sending and lanes (``python -m benchmarks.run --only bulk`` / ``--only lanes``).

The stand-in is the fake SMTP2Go in its own process answering every request after 20 ms, plus 0.2 ms per email
of an ``/email/batch`` request (a single ``/email/send`` is 20 ms). Acceptance = the fake's arrival time plus
that delay (:meth:`benchmarks.fakeproc.FakeProcess.accepts`), one clock for every kind of row.

**Bulk** (:func:`run_bulk`): N = 3,000 personalised emails (own address, subject and bodies each), per thread
count T, three rows on the same stand-in:

- ``mailworker``: ``enqueue_many(items)`` (lane ``bulk``: one ``send_batch`` task per ``BULK_BATCH_SIZE``) drained
  by the bulk lane's worker (``celery -A worker worker -P threads -c T -Q <bulk queue>``, what ``mailworker
  worker`` runs for the lane);
- ``post_office``: ``mail.send_many(kwargs_list)`` of the same emails (one ``bulk_create``, one
  ``send_queued_mail`` task on commit) drained by its Celery integration, ``-P threads -c T`` with
  ``THREADS_PER_PROCESS`` = T (the project of :mod:`benchmarks.post_office_bench`);
- ``baseline``: the bare "Celery task + one HTTP call" (:mod:`benchmarks.baseline_app`), N ``send_task`` calls.

Each worker starts fresh and takes a warm-up (200 emails) first. Figures: end-to-end emails/s = N distinct
emails / (last acceptance - the start of the enqueue call); CPU ms per email of the worker process tree over the
measured part; MariaDB round trips per email, counted in the real run -- the caller's in this process
(:func:`benchmarks.census.counting`) and the worker's in the worker process (:mod:`benchmarks.counted`); the
stand-in's distinct / duplicate / missing counts.

**Lanes** (:func:`run_lanes`): the Procfile's ``mailworker worker`` (its default lanes and concurrencies, with
``MALLOC_ARENA_MAX=2`` as the Procfile sets it) as a subprocess; a child process enqueues N = 20,000 bulk emails
with ``enqueue_many`` while this process enqueues one transactional ``enqueue_email`` every 250 ms until the bulk
emails are all sent. Figures: transactional enqueue (just before the call) -> acceptance p50/p95/max, and the
bulk drain rate (first to last bulk acceptance, and from the start of the bulk enqueue).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks import counted
from benchmarks.common import (
    API_KEY,
    BASELINE_QUEUE,
    PREFIX,
    PYTHON,
    ROOT,
    SENDER,
    clean_redis,
    percentile,
    recipient,
    say,
    table,
    truncate_tables,
)
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import LOG_DIR, Service, celery_workers, stop_all, trees_cpu

LATENCY = 0.020
PER_EMAIL = 0.0002
BULK_N = 3000
LANES_N = 20000
THREADS = (4, 16)  # the bulk lane's default BULK_CONCURRENCY, and the send benchmark's headline thread count
WARM = 200
TICK = 0.25
BULK_QUEUE = f"{PREFIX}.bulk"

_PARA = ("We picked these for you this week: {n} new arrivals in your size, free returns until the end of the "
         "month, and {pct}% off one item with your code.\n")
_HTML = ("<p>{name}, we picked <b>{n} new arrivals</b> for you. "
         "<a href='https://shop.example.com/p/{i}'>See them</a>.</p>\n")


def personal(i: int) -> tuple[str, str, str]:
    """Email ``i``'s own subject, text and HTML (about 3 KB, like the send benchmark's email)."""
    name = f"Customer {i}"
    subject = f"{name}, {i % 40 + 3} picks for you this week"
    text = f"Hello {name},\n\n" + _PARA.format(n=i % 40 + 3, pct=10 + i % 15) * 8 + f"\nYour code: SAVE{i:07d}\n"
    html = _HTML.format(name=name, n=i % 40 + 3, i=i) * 14 + f"<p>Your code: <b>SAVE{i:07d}</b></p>"
    return subject, text, html


def mailworker_items(n: int, offset: int) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + n):
        subject, text, html = personal(i)
        out.append({"to": recipient(i), "subject": subject, "text_body": text, "html_body": html})
    return out


def post_office_items(n: int, offset: int) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + n):
        subject, text, html = personal(i)
        out.append({"recipients": [recipient(i)], "sender": SENDER, "subject": subject, "message": text,
                    "html_message": html, "headers": {"X-Mailworker-Id": str(uuid.uuid4())}})
    return out


@dataclass
class BulkRow:
    kind: str
    threads: int
    n: int
    enqueue_s: float
    enqueue_cpu_ms: float
    e2e_per_s: float
    drain_per_s: float
    worker_cpu_ms: float
    caller_sql: float
    worker_sql: float
    worker_sql_by: dict[str, float]
    distinct: int
    duplicates: int
    lost: int
    requests: tuple[int, int]
    last_accept_s: float
    extra: dict[str, float] = field(default_factory=dict)
    statements: dict[str, float] = field(default_factory=dict)  # MWBENCH_COUNT_DETAIL=1: per statement opening


def _wait(done: Callable[[], int], total: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done() >= total:
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}: {done()} of {total}")


def _counted_worker(name: str, app: str, queue: str, threads: int, env: dict[str, str] | None = None
                    ) -> tuple[Service, str]:
    path = str(LOG_DIR / f"{name}.counts.json")
    argv = [PYTHON, "-m", "benchmarks.counted", path, "-A", app, "worker", "-P", "threads", "-c", str(threads),
            "-Q", queue, "-n", f"{PREFIX}-{name}@%h", "--loglevel", "INFO", "--without-mingle",
            "--without-gossip"]
    service = Service(name, argv, env)
    service.wait_for(" ready.")
    return service, path


def _sent_mailworker() -> int:
    from benchmarks.send_bench import _sent_count

    return _sent_count()[0]


def _measure(kind: str, threads: int, n: int, fake: FakeProcess, workers: list[Service], counts: str | None,
             enqueue: Callable[[], object], done: Callable[[], int], already: int) -> BulkRow:
    """The measured part of one row: the workers run and are warm; ``enqueue`` hands over the N emails."""
    from benchmarks.census import counting
    from benchmarks.send_bench import _Run

    start = fake.count()
    req0 = fake.requests()
    run = _Run(workers, fake)
    w0 = counted.read(counts) if counts else Counter()
    c0 = os.times()
    with counting() as (sql, _rds):
        t0 = time.time()
        enqueue()
        t1 = time.time()
    c1 = os.times()
    _wait(done, already + n, 120 + n / 5, f"{kind} sends")
    cpu = trees_cpu(run.pids) - run.cpu0
    run.finish(n)
    time.sleep(0.5)  # the counts file is rewritten every 0.2 s
    w1 = counted.read(counts) if counts else Counter()
    accepts = fake.accepts(start)
    req1 = fake.requests()
    first: dict[str, float] = {}
    for tid, t in accepts:
        if tid is not None:
            first[tid] = min(t, first.get(tid, t))
    times = sorted(first.values())
    delta = w1 - w0
    worker_sql = Counter({k: v for k, v in delta.items() if not k.startswith("stmt: ")})
    statements = {k[6:]: v / n for k, v in delta.most_common() if k.startswith("stmt: ")}
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return BulkRow(kind, threads, n, t1 - t0, 1000 * (c1.user + c1.system - c0.user - c0.system) / n,
                   len(first) / (times[-1] - t0), (len(times) - 1) / span, 1000 * cpu / n,
                   sum(sql.values()) / n, sum(worker_sql.values()) / n,
                   {k: v / n for k, v in worker_sql.most_common()}, len(first),
                   len(accepts) - sum(tid is None for tid, _ in accepts) - len(first), n - len(first),
                   (req1[0] - req0[0], req1[1] - req0[1]), times[-1] - t0, statements=statements)


def _mailworker_row(threads: int, n: int, fake: FakeProcess) -> BulkRow:
    from worker import enqueue_many

    truncate_tables()
    clean_redis()
    fake.reset()
    worker, counts = _counted_worker(f"bulk-mw-t{threads}", "worker", BULK_QUEUE, threads)
    try:
        enqueue_many(mailworker_items(WARM, 10_000_000))
        _wait(_sent_mailworker, WARM, 120, "mailworker warm-up")
        items = mailworker_items(n, 0)
        return _measure("mailworker", threads, n, fake, [worker], counts, lambda: enqueue_many(items),
                        _sent_mailworker, WARM)
    finally:
        stop_all([worker])


def _post_office_row(threads: int, n: int, fake: FakeProcess) -> BulkRow:
    from benchmarks import post_office_bench as po

    po.setup()
    po._truncate()
    clean_redis()
    fake.reset()
    worker, counts = _counted_worker(f"bulk-po-t{threads}", "benchmarks.post_office_app.celery_app", po.QUEUE,
                                     threads, env=po._env(threads))

    def send_many(items: list[dict[str, Any]]) -> None:
        from celery import _state
        from post_office import mail

        from benchmarks.post_office_app.celery_app import app

        previous = _state.get_current_app()
        app.set_current()  # post_office's @shared_task publishes through the current app
        try:
            mail.send_many(items)
        finally:
            previous.set_current()

    try:
        send_many(post_office_items(WARM, 10_000_000))
        _wait(po._sent, WARM, 120, "post_office warm-up")
        items = post_office_items(n, 0)
        row = _measure("post_office", threads, n, fake, [worker], counts, lambda: send_many(items), po._sent,
                       WARM)
        from post_office.models import STATUS, Email

        row.extra["not_sent"] = Email.objects.exclude(status=STATUS.sent).count()
        return row
    finally:
        stop_all([worker])


def _baseline_row(threads: int, n: int, fake: FakeProcess) -> BulkRow:
    from benchmarks.send_bench import _enqueue_baseline

    clean_redis()
    fake.reset()
    workers = celery_workers(f"bulk-base-t{threads}", "benchmarks.baseline_app", BASELINE_QUEUE, "threads", threads)
    def enqueue() -> None:
        _enqueue_baseline(n, 0)

    try:
        _enqueue_baseline(WARM, 10_000_000)
        _wait(fake.count, WARM, 120, "baseline warm-up")
        return _measure("baseline", threads, n, fake, workers, None, enqueue, fake.count, WARM)
    finally:
        stop_all(workers)


def bulk_table(rows: list[BulkRow]) -> str:
    po = {r.threads: r for r in rows if r.kind == "post_office"}
    out = []
    for r in rows:
        ratio = ""
        if r.kind == "mailworker" and r.threads in po:
            x = r.e2e_per_s / po[r.threads].e2e_per_s
            ratio = f"**{x:.1f}x** {'ok' if x >= 5 else 'MISS'}"
        single, batches = r.requests
        out.append([f"threads {r.threads}", r.kind, f"{r.enqueue_s:.2f}", f"{r.enqueue_cpu_ms:.2f}",
                    f"{r.e2e_per_s:,.0f}", ratio, f"{r.drain_per_s:,.0f}", f"{r.worker_cpu_ms:.2f}",
                    f"{r.caller_sql:.2f}", f"{r.worker_sql:.2f}",
                    ", ".join(f"{k} {v:.2f}" for k, v in r.worker_sql_by.items() if v >= 0.005) or "-",
                    f"{single:,} + {batches:,}", f"{r.distinct:,} / {r.duplicates} / {r.lost}"])
    return table(["threads", "kind", "enqueue call s", "caller CPU ms/email", "e2e emails/s",
                  "vs post_office (>=5x)", "drain emails/s", "worker CPU ms/email", "caller SQL/email",
                  "worker SQL/email", "worker SQL by command", "requests (send + batch)",
                  "distinct / dup / missing"], out)


def run_bulk(n: int = BULK_N, threads: tuple[int, ...] = THREADS, post_office: bool = True) -> dict[str, Any]:
    from benchmarks import post_office_bench
    from benchmarks.common import set_api_url
    from worker.celery_app import app

    if app.conf.bulk_queue != BULK_QUEUE:
        raise RuntimeError(f"bulk queue is {app.conf.bulk_queue!r}, expected {BULK_QUEUE!r}")
    if post_office and (why := post_office_bench.available()) is not None:
        say(f"django-post_office rows skipped: {why}")
        post_office = False
    fake = FakeProcess(LATENCY, api_key=API_KEY, batch_latency_per_email=PER_EMAIL)
    set_api_url(fake.url)
    rows: list[BulkRow] = []
    try:
        for t in threads:
            runners: list[Callable[[int, int, FakeProcess], BulkRow]] = [_baseline_row]
            if post_office:
                runners.append(_post_office_row)
            runners.append(_mailworker_row)
            for runner in runners:
                row = runner(t, n, fake)
                rows.append(row)
                say(f"  {row.kind:<12} threads {t:>2}: {row.e2e_per_s:,.0f} emails/s end to end "
                    f"({row.last_accept_s:.2f} s), worker CPU {row.worker_cpu_ms:.2f} ms/email, "
                    f"SQL {row.caller_sql:.2f} + {row.worker_sql:.2f}/email, "
                    f"{row.distinct} distinct, {row.duplicates} dup, {row.lost} missing")
    finally:
        fake.stop()
        if post_office:
            post_office_bench.drop()
    md = bulk_table(rows)
    say(md)
    return {"rows": [asdict(r) for r in rows], "table": md, "latency_ms": LATENCY * 1000,
            "per_email_ms": PER_EMAIL * 1000}


# --- lanes -----------------------------------------------------------------------------------------------------


def _lane_counts() -> dict[tuple[str, str], int]:
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    with get_engine().connect() as conn:
        return {(str(lane), str(status)): int(c) for lane, status, c in conn.execute(
            text("SELECT lane, status, COUNT(*) FROM messages GROUP BY lane, status")).all()}


def _sent_in(lane: str) -> int:
    return sum(c for (ln, st), c in _lane_counts().items() if ln == lane and st == "sent")


def _procfile_worker() -> Service:
    """``env MALLOC_ARENA_MAX=2 mailworker worker --loglevel INFO``, as the Procfile runs it; ready when every
    lane's Celery worker has logged ``ready.``."""
    from worker.operations.lanes import LANES

    argv = [str(ROOT / ".venv" / "bin" / "mailworker"), "worker", "--loglevel", "INFO"]
    if not os.path.exists(argv[0]):
        argv[0] = str(os.path.join(os.path.dirname(PYTHON), "mailworker"))
    service = Service("lanes-procfile-worker", argv, {**os.environ, "MALLOC_ARENA_MAX": "2"})
    deadline = time.monotonic() + 90
    while service.log_text().count(" ready.") < len(LANES):
        if time.monotonic() > deadline or service.proc.poll() is not None:
            tail = "\n".join(service.log_text().splitlines()[-30:])
            service.stop()
            raise RuntimeError(f"mailworker worker did not become ready; log tail:\n{tail}")
        time.sleep(0.2)
    return service


def _bulk_enqueue_child(n: int, offset: int) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "benchmarks.bulk_bench", "enqueue", str(n), str(offset)], cwd=ROOT,
                            env=dict(os.environ), stdout=subprocess.PIPE, text=True)


def run_lanes(n: int = LANES_N, timeout: float = 1200.0) -> dict[str, Any]:
    from benchmarks.common import HTML_BODY, TEXT_BODY, set_api_url
    from worker import enqueue_email, enqueue_many

    fake = FakeProcess(LATENCY, api_key=API_KEY, batch_latency_per_email=PER_EMAIL)
    set_api_url(fake.url)
    truncate_tables()
    clean_redis()
    service = _procfile_worker()
    try:
        warm_tx = [enqueue_email(recipient(20_000_000 + i), "Reset your password", text_body=TEXT_BODY,
                                 html_body=HTML_BODY) for i in range(20)]
        enqueue_many(mailworker_items(WARM, 10_000_000))
        _wait(lambda: _sent_in("bulk") + _sent_in("transactional"), WARM + len(warm_tx), 120, "lanes warm-up")
        start = fake.count()
        cpu0 = trees_cpu([service.pid])
        load0 = os.getloadavg()
        tx: dict[str, float] = {}
        enqueue_ms: list[float] = []
        stop = threading.Event()

        def ticker() -> None:
            k, nxt = 0, time.monotonic()
            while not stop.is_set():
                nxt += TICK
                t = time.time()
                tid = enqueue_email(recipient(30_000_000 + k), f"Reset your password ({k})", text_body=TEXT_BODY,
                                    html_body=HTML_BODY)
                enqueue_ms.append(1000 * (time.time() - t))
                tx[tid] = t
                k += 1
                stop.wait(max(0.0, nxt - time.monotonic()))

        t0 = time.time()
        child = _bulk_enqueue_child(n, 0)
        thread = threading.Thread(target=ticker, name="transactional-ticker", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while _sent_in("bulk") < WARM + n:
            if time.monotonic() > deadline:
                stop.set()
                raise RuntimeError(f"lanes: {_sent_in('bulk') - WARM} of {n} bulk emails sent after {timeout:.0f} s")
            time.sleep(0.5)
        stop.set()
        thread.join(timeout=10)
        out, _ = child.communicate(timeout=60)
        enq = json.loads(out.strip().splitlines()[-1])
        _wait(lambda: _sent_in("transactional"), len(warm_tx) + len(tx), 60, "the last transactional emails")
        cpu = trees_cpu([service.pid]) - cpu0
        load1 = os.getloadavg()
        accepts = fake.accepts(start)
    finally:
        service.stop()
        fake.stop()
    first: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for tid, t in accepts:
        if tid is not None:
            counts[tid] += 1
            first[tid] = min(t, first.get(tid, t))
    lat = [first[tid] - t for tid, t in tx.items() if tid in first]
    bulk_times = sorted(t for tid, t in first.items() if tid not in tx)
    missing_tx = sum(tid not in first for tid in tx)
    result = {
        "n_bulk": n, "transactional": len(tx), "tx_missing": missing_tx,
        "tx_p50_ms": 1000 * percentile(lat, 50), "tx_p95_ms": 1000 * percentile(lat, 95),
        "tx_max_ms": 1000 * max(lat), "tx_enqueue_p50_ms": percentile(enqueue_ms, 50),
        "bulk_enqueue_s": enq["t1"] - enq["t0"], "bulk_distinct": len(bulk_times),
        "bulk_drain_per_s": (len(bulk_times) - 1) / (bulk_times[-1] - bulk_times[0]),
        "bulk_e2e_per_s": len(bulk_times) / (bulk_times[-1] - t0), "bulk_last_s": bulk_times[-1] - t0,
        "duplicates": sum(c - 1 for c in counts.values()), "worker_cpu_ms": 1000 * cpu / (n + len(tx)),
        "load_before": load0, "load_after": load1,
    }
    result["table"] = lanes_table(result)
    say(result["table"])
    return result


def lanes_table(r: dict[str, Any]) -> str:
    ok = "ok" if r["tx_p95_ms"] < 1000 else "MISS"
    return table(["bulk emails", "transactional (every 250 ms)", "tx p50 ms", "tx p95 ms (<1000)", "tx max ms",
                  "bulk enqueue_many s", "bulk drain emails/s", "bulk e2e emails/s", "worker CPU ms/email",
                  "duplicates / missing"],
                 [[f"{r['n_bulk']:,}", f"{r['transactional']}", f"{r['tx_p50_ms']:,.0f}",
                   f"**{r['tx_p95_ms']:,.0f}** {ok}", f"{r['tx_max_ms']:,.0f}", f"{r['bulk_enqueue_s']:.1f}",
                   f"{r['bulk_drain_per_s']:,.0f}", f"{r['bulk_e2e_per_s']:,.0f}", f"{r['worker_cpu_ms']:.2f}",
                   f"{r['duplicates']} / {r['n_bulk'] - r['bulk_distinct'] + r['tx_missing']}"]])


def _enqueue_main(n: int, offset: int) -> None:
    """The lanes benchmark's bulk caller, in a process of its own (no GIL shared with the transactional one)."""
    from worker import enqueue_many

    items = mailworker_items(n, offset)
    c0 = os.times()
    t0 = time.time()
    enqueue_many(items)
    t1 = time.time()
    c1 = os.times()
    print(json.dumps({"t0": t0, "t1": t1, "cpu": c1.user + c1.system - c0.user - c0.system}), flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["enqueue"]:
        raise SystemExit("usage: python -m benchmarks.bulk_bench enqueue N OFFSET (run by benchmarks.run)")
    _enqueue_main(int(sys.argv[2]), int(sys.argv[3]))
