"""Round trips per email: what ``enqueue_email``, one ``deliver()`` and one event send to MariaDB and Redis.

Throughput on a shared 2-core machine swings with other people's load; round-trip counts do not. This runs
the real functions in this process (the fake API answers at once), counts every command PyMySQL and
redis-py put on the wire, and times the single-threaded CPU of each call, so a change to the hot path can be
judged without any noise (``python -m benchmarks.run --only census``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.common import HTML_BODY, SUBJECT, TEXT_BODY, clean_redis, recipient, table, truncate_tables

_COM_PING = 14


@contextmanager
def counting() -> Iterator[tuple[Counter[str], Counter[str]]]:
    """Count MariaDB commands (by SQL verb; PING) and Redis commands (by name) while the block runs."""
    import pymysql.connections
    import redis.connection

    sql: Counter[str] = Counter()
    rds: Counter[str] = Counter()
    execute = pymysql.connections.Connection._execute_command
    packer = redis.connection.PythonRespSerializer  # what redis-py uses without hiredis (as installed here)
    pack = packer.pack
    send = redis.connection.AbstractConnection.send_packed_command

    def _execute(self: Any, command: int, text: Any) -> Any:
        verb = "PING" if command == _COM_PING else (bytes(text).split(b" ", 1)[0].decode().upper()
                                                    if isinstance(text, bytes | bytearray)
                                                    else str(text).split(" ", 1)[0].upper())
        sql[verb] += 1
        return execute(self, command, text)

    def _pack(self: Any, *args: Any) -> Any:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        rds[name.upper()] += 1
        return pack(self, *args)

    def _send(self: Any, command: Any, check_health: bool = True) -> Any:
        rds["(round trips)"] += 1
        return send(self, command, check_health)

    pymysql.connections.Connection._execute_command = _execute
    packer.pack = _pack  # type: ignore[method-assign]
    redis.connection.AbstractConnection.send_packed_command = _send  # type: ignore[method-assign]
    try:
        yield sql, rds
    finally:
        pymysql.connections.Connection._execute_command = execute
        packer.pack = pack  # type: ignore[method-assign]
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


def _describe(c: Counter[str], n: int, skip: str = "") -> str:
    return ", ".join(f"{k} {v / n:g}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]) if k != skip)


def _row(call: str, sql: Counter[str], rds: Counter[str], n: int, cpu: float, server: float | None = None,
         wall: float | None = None) -> list[str]:
    """One table row: round trips and commands per call, single-thread CPU ms per call, and (when measured) the
    MariaDB server's CPU ms and the wall ms per call."""
    return [call, f"{sum(sql.values()) / n:g}", _describe(sql, n), f"{rds['(round trips)'] / n:g}",
            _describe(rds, n, "(round trips)"), f"{1000 * cpu / n:.2f}",
            "-" if server is None else f"{1000 * server / n:.2f}", "-" if wall is None else f"{1000 * wall / n:.2f}"]


def _mariadb_cpu() -> float:
    """User+sys seconds of the MariaDB server process so far (0 when not found). It is the whole shared server,
    so a figure taken from it is an upper bound: anyone else's queries in the same seconds are in it too."""
    import psutil

    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("mariadbd", "mysqld"):
            t = proc.cpu_times()
            return float(t.user + t.system)
    return 0.0


@contextmanager
def timed() -> Iterator[list[float]]:
    """This thread's CPU, the MariaDB server's CPU and the wall seconds the block took: ``[cpu, server, wall]``."""
    out = [0.0, 0.0, 0.0]
    c0, s0, w0 = time.thread_time(), _mariadb_cpu(), time.perf_counter()
    try:
        yield out
    finally:
        out[:] = [time.thread_time() - c0, _mariadb_cpu() - s0, time.perf_counter() - w0]


def _measure(n: int) -> list[list[str]]:
    from worker import enqueue_email
    from worker.sending.delivery import deliver

    truncate_tables()
    warm = [enqueue_email(recipient(i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY) for i in range(20)]
    for tid in warm:
        deliver(tid, owner="bench:census")
    with counting() as (sql, rds), timed() as t:
        ids = [enqueue_email(recipient(i), SUBJECT, text_body=TEXT_BODY, html_body=HTML_BODY) for i in range(n)]
    enq = _row("enqueue_email", sql, rds, n, *t)
    with counting() as (sql, rds), timed() as t:
        outcomes = Counter(deliver(tid, owner="bench:census").kind for tid in ids)
    if outcomes != Counter({"sent": n}):
        raise RuntimeError(f"census deliveries did not all succeed: {dict(outcomes)}")
    dlv = _row("deliver()", sql, rds, n, *t)
    evt = _measure_events(ids)
    clean_redis()
    return [enq, dlv, evt]


def _measure_events(ids: list[str]) -> list[str]:
    """One ``delivered`` event per sent message through ``process_event`` (what an event worker runs)."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from benchmarks.seed import event
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Message
    from worker.tracking.events import process_event

    with session_scope() as session:
        rows = session.execute(select(Message.smtp2go_message_id, Message.id).where(Message.id.in_(ids))).all()
    to = {tid: recipient(i) for i, tid in enumerate(ids)}
    now = datetime.now(UTC)
    events = [event("delivered", str(email_id), to[tid], now) for email_id, tid in rows]
    with counting() as (sql, rds), timed() as t:
        outcomes = Counter(process_event(e)["status"] for e in events)
    if outcomes != Counter({"applied": len(events)}):
        raise RuntimeError(f"census events were not all applied: {dict(outcomes)}")
    return _row("process_event()", sql, rds, len(events), *t)


def measure(n: int = 200) -> dict[str, Any]:
    rows = _measure(n)
    md = table(["per email", "MariaDB round trips", "by command", "Redis round trips", "Redis commands",
                "CPU ms (1 thread)", "MariaDB server CPU ms*", "wall ms"], rows)
    return {"table": md, "rows": rows}


def run(n: int = 200) -> dict[str, Any]:
    """Run :func:`measure` in a child process: the patches must not leak into the benchmark's own process.

    The child talks to a fake API of its own that answers at once: against the send benchmark's 20 ms fake,
    fewer sends would fall in the protections' 0.1 s all-clear window and the counts would drift.
    """
    import json
    import os
    import subprocess

    from benchmarks.common import API_KEY, PYTHON, ROOT
    from benchmarks.fakeproc import FakeProcess

    fake = FakeProcess(0.0, api_key=API_KEY)
    try:
        out = subprocess.run([PYTHON, "-m", "benchmarks.census", str(n)], cwd=ROOT,
                             env={**os.environ, "SMTP2GO_API_URL": fake.url,  # counted on PyMySQL
                                  "DATABASE_URL": os.environ["DATABASE_URL"].replace("+mysqldb://", "+pymysql://"),
                                  "MWBENCH_DRIVER": "pymysql"},
                             capture_output=True, text=True, timeout=600, check=True).stdout
    finally:
        fake.stop()
    return dict(json.loads(out.strip().splitlines()[-1]))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200)))
