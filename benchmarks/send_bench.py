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
    table,
    truncate_tables,
)
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import LOG_DIR, Sampler, Service, celery_workers, proc_cpu, stop_all, trees_cpu
from benchmarks.profiling import Recorder, summarize

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
                tag: str = "", app: str = "worker", kind: str = "mailworker", processes: int = 1) -> SendResult:
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    if profile_to is not None and processes != 1:
        raise ValueError("profile_to needs a single worker process (processes=1)")
    truncate_tables()
    clean_redis()
    fake.reset()
    workers = celery_workers(f"mw-{_name(pool, concurrency, processes)}{tag}", app, SEND_QUEUE, pool,
                             concurrency, processes)
    try:
        warm = max(20, 2 * concurrency * processes)
        _enqueue_product(warm, 10_000_000)
        _wait(lambda: _sent_count()[0], warm, 120, "warm-up sends")
        run = _Run(workers, fake)
        recorder = None
        if profile_to is not None:
            recorder = Recorder(workers[0].pid, profile_to, subprocesses=pool == "prefork")
        t0, enq_rate, enq_cpu = _enqueue_product(n, 0)
        _wait(lambda: _sent_count()[0], warm + n, 60 + n / 5, "sends")
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
    return SendResult(kind, pool, concurrency, processes, n, enq_rate, enq_cpu, len(rows) / (last - t0),
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


def run_baseline(pool: str, concurrency: int, n: int, fake: FakeProcess, processes: int = 1) -> SendResult:
    clean_redis()
    fake.reset()
    workers = celery_workers(f"base-{_name(pool, concurrency, processes)}", "benchmarks.baseline_app",
                             BASELINE_QUEUE, pool, concurrency, processes)
    try:
        warm = max(20, 2 * concurrency * processes)
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


def render(results: list[SendResult]) -> str:
    """The report table: each post_office and mailworker row carries its ratios to the baseline row of its
    configuration (the verdicts are mailworker's targets; post_office's ratios are printed bare)."""
    rows = []
    base: SendResult | None = None
    for r in results:
        if r.kind == "baseline":
            base = r
        vs = r.e2e_per_s / base.e2e_per_s if base and r.kind != "baseline" else None
        cpu_vs = r.worker_cpu_ms / base.worker_cpu_ms if base and r.kind != "baseline" else None
        verdict = r.kind == "mailworker"
        rows.append([
            r.label, r.kind, f"{r.enqueue_per_s:,.0f}", f"{r.e2e_per_s:,.0f}",
            "" if vs is None else f"**{vs:.2f}x**" + (f" {'ok' if vs >= 0.8 else 'MISS'}" if verdict else ""),
            f"{100 * r.e2e_per_s / r.ceiling:.0f}%", f"{r.p50_ms:,.0f}", f"{r.p99_ms:,.0f}",
            f"{r.worker_cpu_ms:.2f}", "" if cpu_vs is None else f"**{cpu_vs:.2f}x**" +
            (f" {'ok' if cpu_vs <= 2 else 'MISS'}" if verdict else ""), f"{r.peak_rss_mb:,.0f}",
        ])
    return table(["pool", "kind", "enqueue/s", "e2e emails/s", "e2e vs base (>=0.8)", "of c/latency",
                  "p50 ms", "p99 ms", "worker CPU ms/email", "CPU vs base (<=2)", "peak RSS MB"], rows)


def render_anchor(results: list[SendResult]) -> str:
    """One line per configuration that has a django-post_office row: the three end-to-end rates side by side
    and the ratios the issue's targets are about (mailworker >= 1.3x post_office and >= 0.8x the bare baseline).
    """
    by_label: dict[str, dict[str, SendResult]] = {}
    for r in results:
        by_label.setdefault(r.label, {})[r.kind] = r
    rows = []
    for name, kinds in by_label.items():
        base, po, mw = kinds.get("baseline"), kinds.get("post_office"), kinds.get("mailworker")
        if po is None:
            continue

        def rate(r: SendResult | None) -> str:
            return "-" if r is None else f"{r.e2e_per_s:,.0f}"

        def ratio(a: SendResult | None, b: SendResult | None, target: float | None = None) -> str:
            if a is None or b is None:
                return "-"
            x = a.e2e_per_s / b.e2e_per_s
            return f"**{x:.2f}x**" + ("" if target is None else f" {'ok' if x >= target else 'MISS'}")

        rows.append([name, rate(base), rate(po), rate(mw), ratio(mw, po, 1.3), ratio(mw, base, 0.8),
                     ratio(po, base), f"{po.worker_cpu_ms:.2f}", "-" if mw is None else f"{mw.worker_cpu_ms:.2f}"])
    return table(["pool", "bare e2e/s", "post_office e2e/s", "mailworker e2e/s", "mailworker / post_office (>=1.3)",
                  "mailworker / bare (>=0.8)", "post_office / bare", "post_office worker CPU ms/email",
                  "mailworker worker CPU ms/email"], rows)


def render_costs(results: list[SendResult]) -> str:
    """Where each email's CPU goes, per process, so the 2-core CPU bound can be read off directly."""
    rows = []
    for r in results:
        db, rd = r.server_cpu_ms.get("mariadb"), r.server_cpu_ms.get("redis")
        total = r.enqueue_cpu_ms + r.worker_cpu_ms + r.fake_cpu_ms + (db or 0) + (rd or 0)
        rows.append([r.label, r.kind, f"{r.enqueue_cpu_ms:.2f}", f"{r.worker_cpu_ms:.2f}",
                     f"{r.fake_cpu_ms:.2f}", "-" if db is None else f"{db:.2f}", "-" if rd is None else
                     f"{rd:.2f}", f"{total:.2f}", f"{2000 / total:,.0f}"])
    return table(["pool", "kind", "enqueue (caller)", "worker", "fake API", "mariadb*", "redis*",
                  "total ms/email", "2-core bound emails/s"], rows)


def run(n: int, configs: list[tuple[str, int, int]] | None = None, profile: bool = True,
        post_office: bool = True) -> dict[str, object]:
    """All rows, baseline, django-post_office (the anchor, see ``benchmarks.post_office_bench``; one worker
    process only, and only if Django and post_office are installed) then mailworker per
    ``(pool, concurrency, processes)`` configuration (default :data:`CONFIGS`); then one profiled mailworker run
    (threads 32, one process).
    """
    from benchmarks import post_office_bench
    from benchmarks.common import set_api_url

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
                res = runner(pool, conc, n, fake, processes=procs)
                results.append(res)
                _line(res)
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
    say()
    say(render(results))
    say()
    if any(r.kind == "post_office" for r in results):
        say("Against django-post_office (the same stand-in, MariaDB, broker and in-flight count):")
        say(render_anchor(results))
        say()
    say(render_costs(results))
    say()
    say("Round trips per email (in-process, deterministic; CPU is one thread with no contention):")
    say(counts["table"])
    if profile_md:
        say()
        say("py-spy profile of the mailworker worker, threads 32:")
        say(profile_md)
    return {"results": [r.__dict__ | {"ceiling": r.ceiling, "label": r.label} for r in results],
            "anchor": render_anchor(results),
            "configs": [list(c) for c in configs or CONFIGS], "profile": profile_md, "census": counts}


def _line(r: SendResult) -> None:
    conc = str(r.concurrency) if r.processes == 1 else f"{r.concurrency}x{r.processes}"
    say(f"  {r.kind:16} {r.pool:8} c={conc:<3} enqueue {r.enqueue_per_s:7.0f}/s  e2e "
        f"{r.e2e_per_s:6.0f}/s  p50 {r.p50_ms:6.0f} ms  p99 {r.p99_ms:6.0f} ms  cpu "
        f"{r.worker_cpu_ms:5.2f} ms/email  rss {r.peak_rss_mb:5.0f} MB")


def _api_key() -> str:
    from benchmarks.common import API_KEY

    return API_KEY
