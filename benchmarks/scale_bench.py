"""Benchmark 3, scale: a full table must not make enqueue or the sweeper slower, and memory must stay flat.

- enqueue and sweeper cost on an empty table versus 100,000 production-like rows (``benchmarks.seed``);
- EXPLAIN on MariaDB of the statements the product actually runs -- captured from the engine while the real
  functions execute (sweeper, claim, event look-up by ``smtp2go_message_id``, ...), so the plans shown are for
  the real SQL, not a hand-written copy -- with every ``type = ALL`` (full table scan) flagged;
- worker RSS sampled every second over a long run (20,000 emails; --quick 3,000), fed by bulk inserts plus
  ``publish_send`` (the enqueue path is measured above; here it would only eat the CPU the worker needs).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import (
    HTML_BODY,
    SEND_QUEUE,
    SUBJECT,
    TEXT_BODY,
    clean_redis,
    recipient,
    say,
    table,
    truncate_tables,
)
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import celery_worker, tree_rss

ROWS = 100_000
ORPHANS = 200


@contextmanager
def _database(url: str) -> Iterator[None]:
    """Point ``worker`` at another database for a moment (settings and engines are cached per URL)."""
    import os

    from worker.infrastructure.config import reset_settings

    before = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = url
    reset_settings()
    try:
        yield
    finally:
        os.environ["DATABASE_URL"] = before
        reset_settings()


def _enqueue_chunk(n: int, offset: int) -> float:
    from worker import enqueue_email

    t0 = time.perf_counter()
    for i in range(offset, offset + n):
        enqueue_email(recipient(i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY)
    return time.perf_counter() - t0


def _sweep_once() -> float:
    from worker.operations.sweeper import sweep

    t0 = time.perf_counter()
    sweep()
    return 1000 * (time.perf_counter() - t0)


def add_foreign_orphans(count: int) -> None:
    """Events for mail this system never sent (another sender on the same SMTP2Go account): they stay
    orphans for ORPHAN_REPAIR_WINDOW (3 days), and every sweep looks at them again."""
    from benchmarks.seed import event
    from worker.tracking.events import process_event

    now = datetime.now(UTC)
    for i in range(count):
        process_event(event("delivered", f"foreign-{i:06d}-{uuid.uuid4().hex[:8]}", f"someone{i}@example.org", now))


def orphan_link_ms(repeat: int = 3) -> float:
    from worker.tracking.events import link_orphan_events

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        link_orphan_events()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def compare(empty_url: str, n: int, chunk: int = 50) -> dict[str, float]:
    """enqueue and sweep on the empty and the full database, alternating in small chunks.

    Alternating means a burst of background load (other test suites on this machine) lands on both sides
    instead of on whichever happened to run second.
    """
    spent = {"empty": 0.0, "full": 0.0}
    sweeps: dict[str, list[float]] = {"empty": [], "full": []}
    for k in range(0, n, chunk):
        for side in ("empty", "full"):
            if side == "empty":
                with _database(empty_url):
                    spent[side] += _enqueue_chunk(chunk, k)
                    sweeps[side].append(_sweep_once())
            else:
                spent[side] += _enqueue_chunk(chunk, k)
                sweeps[side].append(_sweep_once())
        clean_redis()
    done = (n // chunk) * chunk
    return {"enqueue_empty": done / spent["empty"], "enqueue_full": done / spent["full"],
            "sweep_empty_ms": statistics.median(sweeps["empty"]), "sweep_full_ms": statistics.median(sweeps["full"])}


class _Capture:
    """Records every statement the engine sends, rendered with its parameters (PyMySQL ``mogrify``)."""

    def __init__(self) -> None:
        from sqlalchemy import event

        from worker.infrastructure.db import get_engine

        self.label = ""
        self.statements: list[tuple[str, str]] = []
        event.listen(get_engine(), "before_cursor_execute", self._on_execute)

    def _on_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                    executemany: bool) -> None:
        if self.label and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            self.statements.append((self.label, cursor.mogrify(statement, parameters)))

    @contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        self.label = label
        try:
            yield
        finally:
            self.label = ""


def explain(sample: list[tuple[str, str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """Run the product code paths that matter at scale, EXPLAIN every statement they issued."""

    from benchmarks.seed import event
    from worker.infrastructure.db import get_engine
    from worker.infrastructure.models import Transport
    from worker.operations.sweeper import sweep
    from worker.sending import jobs as send_store
    from worker.sending import lifecycle
    from worker.tracking.events import link_orphan_events, process_event

    cap = _Capture()
    delivered = next(s for s in sample if s[1])
    with cap.labelled("sweeper: sweep()"):
        sweep()
    with cap.labelled("deliver: claim + load"), get_engine().connect() as conn:
        lease = lifecycle.claim(conn, delivered[0], owner="bench:explain", lease_seconds=60)
        send_store.load_job(conn, delivered[0])
        conn.rollback()
    with cap.labelled("event: lookup by smtp2go_message_id + apply"):
        process_event(event("open", delivered[1], delivered[2], datetime.now(UTC)))
    with cap.labelled("deliver: record_accepted (+ pending events)"), get_engine().connect() as conn:
        lease = lifecycle.claim(conn, delivered[0], owner="bench:explain", lease_seconds=60)
        if lease is not None:
            lifecycle.record_accepted(conn, lease, Transport.SMTP2GO, delivered[1])
        conn.rollback()
    with cap.labelled("sweeper: link_orphan_events()"):
        link_orphan_events()
    clean_redis()
    plans: list[dict[str, Any]] = []
    seen: set[str] = set()
    with get_engine().connect() as conn:
        for label, sql in cap.statements:
            key = label + sql.split(" WHERE ")[0] + str(len(sql))
            if key in seen:
                continue
            seen.add(key)
            # ANALYZE runs the statement and reports the rows it really read (r_rows) next to the plan;
            # inside a transaction that is rolled back, so UPDATEs change nothing.
            trans = conn.begin()
            try:
                for row in conn.exec_driver_sql("ANALYZE " + sql.replace("%", "%%")).mappings():
                    plans.append({"query": label, "sql": " ".join(sql.split()), **dict(row)})
            finally:
                trans.rollback()
    rows = [[p["query"], f"`{_gist(p['sql'])}`", p["table"] or "-", p["type"] or "-", p["key"] or "-",
             _num(p["rows"]), _num(p.get("r_rows")), (p["Extra"] or "")[:70],
             "**FULL SCAN**" if p["type"] == "ALL" else "ok"] for p in plans]
    return table(["code path", "statement", "table", "type", "key", "rows (est.)", "r_rows (read)", "Extra",
                  "check"], rows), plans


def _gist(sql: str) -> str:
    """``SELECT … FROM messages WHERE messages.status = …``: enough to recognise the statement."""
    sql = re.sub(r"^(SELECT|UPDATE \w+ SET) .*? (FROM|WHERE) ", r"\1 … \2 ", sql)
    sql = re.sub(r"'[^']*'", "?", sql)
    return (sql[:90] + "…") if len(sql) > 90 else sql


def _num(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):,.0f}"
    except (TypeError, ValueError):
        return str(value)


def _feed(total: int, batch: int = 500) -> Iterator[int]:
    """Insert ``batch`` new queued messages and publish them; yields how many were published so far."""
    from sqlalchemy import insert

    from benchmarks.seed import new_message_rows
    from worker.infrastructure.db import get_engine
    from worker.infrastructure.models import Message, Recipient
    from worker.sending.publish import publish_send

    done = 0
    while done < total:
        n = min(batch, total - done)
        messages, recipients = new_message_rows(n, offset=done)
        with get_engine().begin() as conn:
            conn.execute(insert(Message), messages)
            conn.execute(insert(Recipient), recipients)
        for m in messages:
            publish_send(m["id"])
        done += n
        yield done


def memory(total: int, fake: FakeProcess, pool: str = "threads", concurrency: int = 16) -> dict[str, Any]:
    """RSS of a send worker sampled every second over ``total`` emails; start/mid/end and the slope.

    The worker runs as the Procfile runs it: threads pool, 16 threads, ``MALLOC_ARENA_MAX=2`` (unless the
    environment sets another value: ``MALLOC_ARENA_MAX= python -m benchmarks.run ...`` measures glibc's default).
    """
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    clean_redis()
    engine = get_engine()

    def sent() -> int:
        with engine.connect() as c:
            return int(c.execute(text("SELECT COUNT(*) FROM messages WHERE status = 'sent' AND "
                                      "subject = :s"), {"s": SUBJECT + " (memory run)"}).scalar_one())

    base = sent()  # a previous run's rows may still be there
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    if not env["MALLOC_ARENA_MAX"]:
        del env["MALLOC_ARENA_MAX"]
    worker = celery_worker(f"mem-{pool}{concurrency}", "worker", SEND_QUEUE, pool, concurrency, env=env)
    samples: list[tuple[float, int, int]] = []  # (t, sent, rss)
    try:
        feeder = _feed(total)
        published = next(feeder)
        t0 = next_sample = time.monotonic()
        deadline = t0 + 120 + total / 10
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                done = sent() - base
                samples.append((now - t0, done, tree_rss(worker.pid)))
                next_sample += 1.0
                if done >= total:
                    break
                if published < total and published - done < 1500:
                    published = next(feeder)
            time.sleep(0.05)
    finally:
        worker.stop()
        clean_redis()
    return _memory_summary(samples, total, pool, concurrency)


def _memory_summary(samples: list[tuple[float, int, int]], total: int, pool: str, conc: int) -> dict[str, Any]:
    """Start = first sample after 10% of the emails (pools and caches warm), mid = 50%, end = last."""
    warm = [s for s in samples if s[1] >= total * 0.1] or samples
    mid = next((s for s in warm if s[1] >= total * 0.5), warm[len(warm) // 2])
    start, end = warm[0], warm[-1]
    xs, ys = [s[1] for s in warm], [s[2] / 2**20 for s in warm]
    slope = statistics.linear_regression(xs, ys).slope * 10_000 if len(set(xs)) > 1 else 0.0
    mb = 2**20
    return {"pool": pool, "concurrency": conc, "emails": samples[-1][1] if samples else 0,
            "seconds": samples[-1][0] if samples else 0, "start_mb": start[2] / mb, "mid_mb": mid[2] / mb,
            "end_mb": end[2] / mb, "peak_mb": max(s[2] for s in samples) / mb,
            "slope_mb_per_10k": slope, "samples": [(round(t, 1), n, round(r / mb, 1)) for t, n, r in samples]}


def _empty_database() -> str:
    """A second database of ours, migrated and empty: the "empty table" side of the comparison."""
    from sqlalchemy import create_engine, text

    from benchmarks.common import ADMIN_URL, DB_NAME, MYSQL_HOST
    from worker.infrastructure.migrate import upgrade

    name = f"{DB_NAME}_empty"
    admin = create_engine(ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    admin.dispose()
    url = f"mysql+pymysql://root@{MYSQL_HOST}:3306/{name}?charset=utf8mb4"
    upgrade(url)
    return url


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from benchmarks.common import ADMIN_URL
    from worker.infrastructure.db import dispose_engines

    dispose_engines()
    admin = create_engine(ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{make_url(url).database}`"))
    admin.dispose()


def run(quick: bool = False, memory_emails: int | None = None) -> dict[str, Any]:
    from sqlalchemy import text

    from benchmarks.common import API_KEY, set_api_url
    from benchmarks.seed import seed_messages
    from worker.infrastructure.db import get_engine

    truncate_tables()
    clean_redis()
    empty_url = _empty_database()
    t0 = time.perf_counter()
    sample = seed_messages(ROWS)
    seeded = time.perf_counter() - t0
    with get_engine().connect() as conn:
        conn.execute(text("ANALYZE TABLE messages, recipients"))
        size = conn.execute(text("SELECT ROUND(data_length / 1048576), ROUND(index_length / 1048576) FROM "
                                 "information_schema.tables WHERE table_schema = DATABASE() AND "
                                 "table_name = 'messages'")).one()
        pool = conn.execute(text("SELECT @@innodb_buffer_pool_size / 1048576")).scalar_one()
    say(f"  seeded {ROWS:,} messages in {seeded:.0f} s (messages: {size[0]} MB data + {size[1]} MB indexes; "
        f"InnoDB buffer pool {pool:.0f} MB)")
    try:
        with _database(empty_url):
            compare(empty_url, 50, chunk=50)  # warm both engines and the broker connection
        cmp = compare(empty_url, 200 if quick else 600)
        for url in (empty_url, None):
            with _database(url) if url else contextlib.nullcontext():
                add_foreign_orphans(ORPHANS)
                cmp["orphans_empty_ms" if url else "orphans_full_ms"] = orphan_link_ms()
    finally:
        _drop_database(empty_url)
    cost = table(["", "empty table", f"{ROWS:,} rows", "full / empty"], [
        ["enqueue_email calls/s", f"{cmp['enqueue_empty']:,.0f}", f"{cmp['enqueue_full']:,.0f}",
         f"{cmp['enqueue_full'] / cmp['enqueue_empty']:.2f}x"],
        ["sweep() ms (median)", f"{cmp['sweep_empty_ms']:.1f}", f"{cmp['sweep_full_ms']:.1f}",
         f"{cmp['sweep_full_ms'] / cmp['sweep_empty_ms']:.2f}x"],
        [f"link_orphan_events() ms, {ORPHANS} foreign orphans (median of 3)", f"{cmp['orphans_empty_ms']:.1f}",
         f"{cmp['orphans_full_ms']:,.1f}", f"{cmp['orphans_full_ms'] / cmp['orphans_empty_ms']:,.0f}x"],
    ])
    say(cost)
    plans_md, plans = explain(sample)
    full_scans = [p for p in plans if p["type"] == "ALL"]
    say()
    say(plans_md)
    say(f"  full scans: {len(full_scans)}")

    fake = FakeProcess(0.020, API_KEY)
    set_api_url(fake.url)
    try:
        mem = memory(memory_emails or (3_000 if quick else 20_000), fake)
    finally:
        fake.stop()
        truncate_tables()  # 500 MB of rows would crowd everyone else's data out of the shared buffer pool
    say()
    arenas = os.environ.get("MALLOC_ARENA_MAX", "2") or "unset"
    say(f"  memory over {mem['emails']:,} emails ({mem['pool']} {mem['concurrency']}, MALLOC_ARENA_MAX={arenas}, "
        f"{mem['seconds']:.0f} s): "
        f"start {mem['start_mb']:.1f} MB, mid {mem['mid_mb']:.1f} MB, end {mem['end_mb']:.1f} MB, peak "
        f"{mem['peak_mb']:.1f} MB, slope {mem['slope_mb_per_10k']:+.2f} MB per 10k emails")
    return {**cmp, "seed_seconds": seeded, "table_mb": [float(size[0]), float(size[1])], "buffer_pool_mb": pool,
            "cost_table": cost, "explain_table": plans_md, "plans": plans, "full_scans": len(full_scans),
            "memory": mem}
