"""Benchmark 1, the send pipeline: ``enqueue_email`` -> Celery on Redis -> SMTP2Go API (fake) -> ``sent``.

For each row -- pool, concurrency and number of worker processes -- the baseline (a bare Celery task making the
same HTTP call, see ``benchmarks.baseline_app``) and mailworker run back to back against the same fake, which
answers after a set latency (20 ms). Each row: fresh worker processes (usually one; ``threads 16x2`` is two
separate ``celery worker`` processes with distinct node names on the same queue, each ``-P threads -c 16``, so
32 in flight), a warm-up, then N emails enqueued from this process as fast as one caller can while the workers
consume. Figures:

- enqueue calls/s: ``enqueue_email`` (baseline: ``send_task``) in a loop, while the worker runs;
- end-to-end emails/s: N / (last ``sent`` - first enqueue);
- p50/p99 enqueue->sent: mailworker from ``queued_at``/``sent_at`` in the database; the baseline from the
  publish time to the fake's arrival time plus the latency (its response time);
- worker CPU per email: user+sys seconds of the worker process tree(s) over the measured part / N, summed
  over all the row's worker processes;
- peak worker RSS: the tree's RSS (summed over the row's worker processes) sampled every half second, peak of
  that sum;
- "of c/latency": e2e emails/s as a share of the latency bound, concurrency x processes / 20 ms.

That is the ``concurrent`` phase. ``--mode drain`` (``benchmarks.run``) measures instead N emails enqueued
with no worker running, then drained by fresh workers (:mod:`benchmarks.send_drain`), and ``--mode both`` (the
default) runs both phases in every row; the drain figures go in ``SendResult.extra`` (``drain_*``), the tables
are in :mod:`benchmarks.send_report`.

Rows are ``(pool, concurrency, processes)``: :data:`CONFIGS` by default, or ``--configs`` of
``benchmarks.run`` (:func:`parse_configs`, e.g. ``threads:8,threads:16x2,prefork:2``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.common import (
    BASELINE_QUEUE,
    HTML_BODY,
    SEND_QUEUE,
    SUBJECT,
    TEXT_BODY,
    clean_redis,
    percentile,
    recipient,
    say,
    truncate_tables,
)
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import LOG_DIR, Sampler, Service, celery_workers, proc_cpu, stop_all, trees_cpu
from benchmarks.profiling import Recorder, summarize
from benchmarks.send_drain import MODES, Side, warm_count, with_drain
from benchmarks.send_report import drain_line, has_drain, line, render_anchor, render_drain_anchor, report

#: (pool, concurrency, processes) rows: prefork at the core count, one threads process at 8/16/32/64 (sends are
#: network-bound; 16 is the Procfile's and the django-post_office comparison's headline row), and one threads-16
#: process per core (the recommended production layout: several processes sidestep the GIL contention of one
#: process with many threads).
CONFIGS: list[tuple[str, int, int]] = [("prefork", os.cpu_count() or 2, 1), ("threads", 8, 1), ("threads", 16, 1),
                                       ("threads", 32, 1), ("threads", 64, 1),
                                       ("threads", 16, os.cpu_count() or 2)]

POOLS = ("prefork", "threads", "solo", "eventlet", "gevent")


def parse_configs(spec: str) -> list[tuple[str, int, int]]:
    """``"threads:8,threads:16x2,prefork:2"`` -> ``[("threads", 8, 1), ("threads", 16, 2), ("prefork", 2, 1)]``.

    Each item is ``pool:concurrency`` or ``pool:concurrencyxprocesses``; raises ``ValueError`` on anything else.
    """
    configs: list[tuple[str, int, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        pool, sep, rest = item.partition(":")
        conc, _, procs = rest.lower().partition("x")
        try:
            concurrency, processes = int(conc), int(procs or 1)
        except ValueError:
            concurrency = processes = 0
        if not sep or pool not in POOLS or concurrency < 1 or processes < 1:
            raise ValueError(f"bad send configuration {item!r}: expected pool:concurrency[xprocesses] with pool "
                             f"one of {', '.join(POOLS)}, e.g. threads:16x2")
        configs.append((pool, concurrency, processes))
    if not configs:
        raise ValueError(f"no send configurations in {spec!r}")
    return configs


def label(pool: str, concurrency: int, processes: int = 1) -> str:
    """``threads 8`` for one worker process, ``threads 16x2`` for two processes of 16 threads each."""
    return f"{pool} {concurrency}" if processes == 1 else f"{pool} {concurrency}x{processes}"


@dataclass
class SendResult:
    kind: str  # baseline | post_office | mailworker
    pool: str
    concurrency: int  # per worker process (-c)
    processes: int  # separate worker processes on the queue; concurrency x processes in flight
    n: int
    enqueue_per_s: float
    enqueue_cpu_ms: float
    e2e_per_s: float
    p50_ms: float
    p99_ms: float
    worker_cpu_ms: float
    peak_rss_mb: float
    fake_cpu_ms: float
    server_cpu_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # row-specific figures (post_office: stand-in checks)

    @property
    def ceiling(self) -> float:
        """The latency bound: every worker slot (of every process) busy with nothing but the API call."""
        return self.concurrency * self.processes / LATENCY

    @property
    def label(self) -> str:
        return label(self.pool, self.concurrency, self.processes)


LATENCY = 0.020


def _server_pids() -> dict[str, int]:
    """MariaDB and Redis server processes, read-only: their CPU is part of each email's real cost.

    Other people's test runs use the same servers, so these figures are upper bounds (noted in the docs).
    """
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["name", "pid"]):
        name = proc.info["name"] or ""
        if name in ("mariadbd", "mysqld"):
            found["mariadb"] = proc.info["pid"]
        elif name == "redis-server":
            found["redis"] = proc.info["pid"]
    return found


def _sent_count() -> tuple[int, int]:
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    with get_engine().connect() as conn:
        rows: dict[str, int] = {str(status): int(count) for status, count in conn.execute(
            text("SELECT status, COUNT(*) FROM messages GROUP BY status")).all()}
    return int(rows.get("sent", 0)), int(rows.get("failed", 0))


def _wait(done: Callable[[], int], total: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done() >= total:
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}: {done()} of {total}")


class _Run:
    """What one measured phase needs to know on both sides (baseline and mailworker).

    Worker CPU and RSS are summed over all the row's worker processes (each with its process tree).
    """

    def __init__(self, workers: list[Service], fake: FakeProcess) -> None:
        self.pids, self.fake = [w.pid for w in workers], fake
        self.servers = _server_pids()
        self.cpu0 = trees_cpu(self.pids)
        self.fake0 = fake.cpu()
        self.server0 = {k: proc_cpu(p) for k, p in self.servers.items()}
        self.sampler = Sampler(self.pids, interval=0.5).start()

    def finish(self, n: int) -> tuple[float, float, float, dict[str, float]]:
        cpu = trees_cpu(self.pids) - self.cpu0
        fake_cpu = self.fake.cpu() - self.fake0
        servers = {k: 1000 * (proc_cpu(p) - self.server0[k]) / n for k, p in self.servers.items()}
        self.sampler.stop()
        return 1000 * cpu / n, self.sampler.peak / 2**20, 1000 * fake_cpu / n, servers


def _enqueue_product(n: int, offset: int) -> tuple[float, float, float]:
    from worker import enqueue_email

    t0, c0 = time.time(), os.times()
    for i in range(offset, offset + n):
        enqueue_email(recipient(i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY)
    t1, c1 = time.time(), os.times()
    return t0, n / (t1 - t0), 1000 * (c1.user + c1.system - c0.user - c0.system) / n


def _name(pool: str, concurrency: int, processes: int) -> str:
    return f"{pool}{concurrency}" if processes == 1 else f"{pool}{concurrency}x{processes}"


def run_product(pool: str, concurrency: int, n: int, fake: FakeProcess, profile_to: Path | None = None,
                tag: str = "", app: str = "worker", kind: str = "mailworker", processes: int = 1,
                mode: str = "concurrent") -> SendResult:
    """One mailworker row: the concurrent phase, the drain phase (:mod:`benchmarks.send_drain`) or both."""
    def reset() -> None:
        truncate_tables()
        clean_redis()
        fake.reset()

    def start(suffix: str) -> list[Service]:
        return celery_workers(f"mw-{_name(pool, concurrency, processes)}{tag}{suffix}", app, SEND_QUEUE, pool,
                              concurrency, processes)

    side = Side(kind, reset, start, _enqueue_product, lambda: _sent_count()[0])
    result = None if mode == "drain" else _product_concurrent(side, pool, concurrency, n, fake, profile_to,
                                                              processes)
    if result is not None and mode == "concurrent":
        return result
    return with_drain(result, side, pool, concurrency, processes, n, fake)


def _product_concurrent(side: Side, pool: str, concurrency: int, n: int, fake: FakeProcess,
                        profile_to: Path | None, processes: int) -> SendResult:
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    if profile_to is not None and processes != 1:
        raise ValueError("profile_to needs a single worker process (processes=1)")
    side.reset()
    workers = side.start("")
    try:
        warm = warm_count(concurrency, processes)
        _enqueue_product(warm, 10_000_000)
        _wait(side.done, warm, 120, "warm-up sends")
        run = _Run(workers, fake)
        recorder = None
        if profile_to is not None:
            recorder = Recorder(workers[0].pid, profile_to, subprocesses=pool == "prefork")
        t0, enq_rate, enq_cpu = _enqueue_product(n, 0)
        _wait(side.done, warm + n, 60 + n / 5, "sends")
        if recorder is not None:
            recorder.stop()
        worker_cpu, peak, fake_cpu, servers = run.finish(n)
        with get_engine().connect() as conn:
            rows = conn.execute(text("SELECT queued_at, sent_at FROM messages WHERE status = 'sent' "
                                     "AND queued_at >= :t0"),
                                {"t0": datetime.fromtimestamp(t0, UTC).replace(tzinfo=None)}).all()
    finally:
        stop_all(workers)
    lat = [(s - q).total_seconds() for q, s in rows]
    last = max(s for _, s in rows).replace(tzinfo=UTC).timestamp()
    return SendResult(side.kind, pool, concurrency, processes, n, enq_rate, enq_cpu, len(rows) / (last - t0),
                      1000 * percentile(lat, 50), 1000 * percentile(lat, 99), worker_cpu, peak, fake_cpu,
                      servers)


def _enqueue_baseline(n: int, offset: int) -> tuple[float, float, float, dict[str, float]]:
    from benchmarks.baseline_app import app

    published: dict[str, float] = {}
    t0, c0 = time.time(), os.times()
    for i in range(offset, offset + n):
        tid = str(uuid.uuid4())
        published[tid] = time.time()
        app.send_task("mwbench.baseline_send", args=[tid, recipient(i)], task_id=tid)
    t1, c1 = time.time(), os.times()
    return t0, n / (t1 - t0), 1000 * (c1.user + c1.system - c0.user - c0.system) / n, published


def run_baseline(pool: str, concurrency: int, n: int, fake: FakeProcess, processes: int = 1,
                 mode: str = "concurrent") -> SendResult:
    """One baseline row: the concurrent phase, the drain phase (:mod:`benchmarks.send_drain`) or both."""
    def reset() -> None:
        clean_redis()
        fake.reset()

    def start(suffix: str) -> list[Service]:
        return celery_workers(f"base-{_name(pool, concurrency, processes)}{suffix}", "benchmarks.baseline_app",
                              BASELINE_QUEUE, pool, concurrency, processes)

    side = Side("baseline", reset, start, _enqueue_baseline, fake.count)
    result = None if mode == "drain" else _baseline_concurrent(side, pool, concurrency, n, fake, processes)
    if result is not None and mode == "concurrent":
        return result
    return with_drain(result, side, pool, concurrency, processes, n, fake)


def _baseline_concurrent(side: Side, pool: str, concurrency: int, n: int, fake: FakeProcess,
                         processes: int) -> SendResult:
    side.reset()
    workers = side.start("")
    try:
        warm = warm_count(concurrency, processes)
        _enqueue_baseline(warm, 10_000_000)
        _wait(fake.count, warm, 120, "warm-up sends")
        start = fake.count()
        run = _Run(workers, fake)
        t0, enq_rate, enq_cpu, published = _enqueue_baseline(n, 0)
        _wait(fake.count, start + n, 60 + n / 5, "sends")
        worker_cpu, peak, fake_cpu, servers = run.finish(n)
        arrivals = fake.times(start)
    finally:
        stop_all(workers)
    done = [(tid, t + fake.latency) for tid, t in arrivals if tid in published]
    lat = [t - published[tid] for tid, t in done if tid is not None]
    last = max(t for _, t in done)
    return SendResult("baseline", pool, concurrency, processes, n, enq_rate, enq_cpu, len(done) / (last - t0),
                      1000 * percentile(lat, 50), 1000 * percentile(lat, 99), worker_cpu, peak, fake_cpu,
                      servers)


def run(n: int, configs: list[tuple[str, int, int]] | None = None, profile: bool = True,
        post_office: bool = True, mode: str = "both") -> dict[str, object]:
    """All rows, baseline, django-post_office (the anchor, see ``benchmarks.post_office_bench``; one worker
    process only, and only if Django and post_office are installed) then mailworker per
    ``(pool, concurrency, processes)`` configuration (default :data:`CONFIGS`); then one profiled mailworker run
    (threads 32, one process, concurrent).

    ``mode``: ``concurrent`` (enqueue while the workers drain), ``drain`` (enqueue all N, then drain, see
    :mod:`benchmarks.send_drain`) or ``both`` (each row runs the concurrent phase, then the drain phase).
    """
    from benchmarks import post_office_bench
    from benchmarks.common import set_api_url

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if post_office and (why := post_office_bench.available()) is not None:
        say(f"django-post_office rows skipped: {why}")
        post_office = False
    fake = FakeProcess(LATENCY, api_key=_api_key())
    set_api_url(fake.url)
    results: list[SendResult] = []
    try:
        for pool, conc, procs in configs or CONFIGS:
            runners: list[Callable[..., SendResult]] = [run_baseline]
            if post_office and procs == 1:
                runners.append(post_office_bench.run_post_office)
            elif post_office:
                say(f"  post_office        {label(pool, conc, procs)}: skipped (post_office sends from one process "
                    f"at a time, under its lock file)")
            runners.append(run_product)
            for runner in runners:
                res = runner(pool, conc, n, fake, processes=procs, mode=mode)
                results.append(res)
                if mode != "drain":
                    say(line(res))
                if has_drain(res):
                    say(drain_line(res))
        from benchmarks import census

        counts = census.run()
        profile_md = ""
        if profile:
            out = LOG_DIR / "send-threads32.pyspy.txt"
            run_product("threads", 32, max(300, n // 2), fake, profile_to=out, tag="-profiled")
            profile_md = summarize(out)
    finally:
        fake.stop()
        if post_office:
            post_office_bench.drop()
    report(results, mode, counts["table"], profile_md)
    return {"results": [r.__dict__ | {"ceiling": r.ceiling, "label": r.label} for r in results],
            "mode": mode, "anchor": render_anchor(results) if mode != "drain" else "",
            "drain_anchor": render_drain_anchor(results) if mode != "concurrent" else "",
            "configs": [list(c) for c in configs or CONFIGS], "profile": profile_md, "census": counts}


def _api_key() -> str:
    from benchmarks.common import API_KEY

    return API_KEY
