"""Benchmark 2, webhook ingest and event application.

Ingest: authenticated single-event JSON POSTs per second into ``webhook_app.wsgi:app`` versus
``benchmarks.baseline_webhook:app`` (one LPUSH of the raw body), both under the same server: by default the
Procfile's ``web`` configuration (``webhook_app.gunicorn_conf``: 2 gevent workers with the header and body
deadlines of ``webhook_app.gunicorn_worker``); ``MWBENCH_WEB_SERVER=gthread`` gives the previous
``-w 2 --threads 4`` sync/threads line, for comparison with older reports.
The load generator is ``wrk`` when installed (C, so it leaves the CPU to the servers on a 2-core box), else a
Python keep-alive client in two processes. Baseline and product alternate for ``rounds`` rounds and the
means are compared, so drifting background load hits both.

Apply: N ``mailworker.process_event`` tasks (delivered/open/click for already-sent messages) are queued, a
worker is started, and the rate comes from the database: N / (last ``applied_at`` - first ``received_at``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    EVENTS_QUEUE,
    PREFIX,
    PYTHON,
    WEBHOOK_SECRET,
    clean_redis,
    say,
    table,
    truncate_tables,
)
from benchmarks.procs import LOG_DIR, Service, celery_worker, tree_cpu
from benchmarks.profiling import Recorder, summarize

PATH = "/api/webhooks/smtp2go/events"
SERVERS = {
    "procfile": ["--config", "python:webhook_app.gunicorn_conf", "-w", "2", "--graceful-timeout", "5"],
    "gthread": ["-w", "2", "--threads", "4", "--timeout", "30", "--graceful-timeout", "5"],
}
SERVER = os.environ.get("MWBENCH_WEB_SERVER", "procfile")
GUNICORN = SERVERS[SERVER]
BODY = json.dumps({"event": "delivered", "id": "c2f1d8e3ab5f4f7e9d4c3b2a1f0e9d8c", "email_id": "1t9QkX-4Rb2Wm8YzK-Q7aP",
                   "time": "2026-11-20T09:14:05Z", "sendtime": "2026-11-20T09:14:02.118204+00:00",
                   "rcpt": "alice@example.com", "sender": "support@example.org",
                   "host": "mx1.example.com [203.0.113.25]", "context": "Unavailable",
                   "message": "250 2.0.0 Ok: queued as 4Xk2pQ", "srchost": "198.51.100.7"})
EVENT_CONFIGS = [("prefork", 2), ("threads", 16)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gunicorn(name: str, app: str) -> tuple[Service, str]:
    port = _free_port()
    env = dict(os.environ, MWBENCH_WEBHOOK_KEY=f"{PREFIX}.webhook-baseline", LOG_LEVEL="INFO")
    svc = Service(name, [PYTHON, "-m", "gunicorn", *GUNICORN, "-b", f"127.0.0.1:{port}", app], env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return svc, base
        except OSError:
            time.sleep(0.2)
    svc.stop()
    raise RuntimeError(f"{name} did not answer /healthz; see {svc.log_path}")


def _wrk(url: str, seconds: float, connections: int = 16) -> dict[str, float]:
    script = Path(tempfile.gettempdir()) / f"{PREFIX}-post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {WEBHOOK_SECRET}"\n'
    )
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = {q: _ms(re.search(rf"^\s+{q}%\s+([\d.]+\w+)", out, re.M)) for q in ("50", "99")}
    return {"rps": rps, "requests": total, "errors": int(bad.group(1)) if bad else 0, "p50_ms": lat["50"],
            "p99_ms": lat["99"]}


def _ms(match: re.Match[str] | None) -> float:
    if not match:
        return float("nan")
    value = match.group(1)
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def _py_load(url: str, seconds: float) -> dict[str, float]:
    """Fallback when wrk is missing: 2 processes x 8 keep-alive http.client connections."""
    from benchmarks.loadgen import run_load

    return run_load(url, BODY.encode(), {"Content-Type": "application/json",
                                         "Authorization": f"Bearer {WEBHOOK_SECRET}"}, seconds)


def ingest(seconds: float, rounds: int) -> dict[str, Any]:
    load = _wrk if shutil.which("wrk") else _py_load
    apps = [("baseline", "benchmarks.baseline_webhook:app"), ("mailworker", "webhook_app.wsgi:app")]
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind, _ in apps}
    for r in range(rounds):
        for kind, app in apps:
            clean_redis()
            svc, base = _gunicorn(f"web-{kind}-{r}", app)
            try:
                load(base + PATH, 2)  # warm-up: imports, connection pools, secret store
                cpu0 = tree_cpu(svc.pid)
                res = load(base + PATH, seconds)
                res["cpu_ms"] = 1000 * (tree_cpu(svc.pid) - cpu0) / max(1, res["requests"])
            finally:
                svc.stop()
            runs[kind].append(res)
            say(f"  {kind:16} round {r + 1}: {res['rps']:7.0f} req/s  p50 {res['p50_ms']:.1f} ms  p99 "
                f"{res['p99_ms']:.1f} ms  non-2xx {res['errors']}  server CPU {res['cpu_ms']:.2f} ms/req")
    clean_redis()

    def mean(kind: str, key: str) -> float:
        return sum(x[key] for x in runs[kind]) / len(runs[kind])

    ratios = {kind: mean(kind, "rps") / mean("baseline", "rps") for kind, _ in apps}
    ratio = ratios["mailworker"]
    rows = [[kind, f"{mean(kind, 'rps'):,.0f}", "" if kind == "baseline" else
             f"**{ratios[kind]:.2f}x** {'ok' if ratios[kind] >= 0.7 else 'MISS'}", f"{mean(kind, 'p50_ms'):.1f}",
             f"{mean(kind, 'p99_ms'):.1f}", f"{mean(kind, 'cpu_ms'):.2f}",
             str(sum(int(x["errors"]) for x in runs[kind]))] for kind, _ in apps]
    md = table(["receiver", "POSTs/s", "vs base (>=0.7)", "p50 ms", "p99 ms", "server CPU ms/req", "non-2xx"],
               rows)
    return {"runs": runs, "ratio": ratio, "ratios": ratios, "table": md, "tool": load.__name__.strip("_"),
            "server": SERVER, "gunicorn": GUNICORN}


def profile_receiver(seconds: float) -> str:
    """py-spy (GIL samples) over both gunicorn workers of the real receiver under the same load."""
    load = _wrk if shutil.which("wrk") else _py_load
    svc, base = _gunicorn("web-profiled", "webhook_app.wsgi:app")
    out = LOG_DIR / "webhook.pyspy.txt"
    try:
        load(base + PATH, 2)
        recorder = Recorder(svc.pid, out, subprocesses=True)
        time.sleep(0.5)
        load(base + PATH, seconds)
        recorder.stop()
    finally:
        svc.stop()
        clean_redis()
    return summarize(out)


def apply_events(n: int, pool: str, concurrency: int, profile_to: Path | None = None) -> dict[str, Any]:
    """Queue ``n`` events for already-sent messages, start an event worker, time until all are applied."""
    from sqlalchemy import text

    from benchmarks.seed import event, seed_messages
    from worker.celery_app import app
    from worker.infrastructure.db import get_engine

    truncate_tables()
    clean_redis()
    messages = seed_messages(max(1, n // 3), status="sent", bodies=False)
    rng = random.Random(3)
    now = datetime.now(UTC)
    events = [event(kind, email_id, rcpt, now + timedelta(seconds=k))
              for _, email_id, rcpt in messages for k, kind in enumerate(("delivered", "open", "click"))][:n]
    rng.shuffle(events)
    with app.connection_for_write() as conn:
        for ev in events:
            app.send_task("mailworker.process_event", args=[ev], connection=conn)
    worker = celery_worker(f"events-{pool}{concurrency}", "worker", EVENTS_QUEUE, pool, concurrency)
    cpu0 = tree_cpu(worker.pid)
    recorder = Recorder(worker.pid, profile_to, subprocesses=pool == "prefork") if profile_to else None
    try:
        deadline = time.monotonic() + 60 + n / 5
        engine = get_engine()
        while time.monotonic() < deadline:
            with engine.connect() as c:
                applied = c.execute(text("SELECT COUNT(*) FROM tracking_events WHERE applied_at IS NOT NULL")
                                    ).scalar_one()
            if applied >= len(events):
                break
            time.sleep(0.2)
        cpu = tree_cpu(worker.pid) - cpu0
        if recorder is not None:
            recorder.stop()
        with engine.connect() as c:
            first, last, count = c.execute(text("SELECT MIN(received_at), MAX(applied_at), COUNT(*) FROM "
                                                "tracking_events WHERE applied_at IS NOT NULL")).one()
    finally:
        worker.stop()
    clean_redis()
    rate = count / max(1e-6, (last - first).total_seconds())
    return {"pool": pool, "concurrency": concurrency, "events": count, "per_s": rate,
            "cpu_ms": 1000 * cpu / max(1, count), "profile": summarize(profile_to) if profile_to else ""}


def run(quick: bool = False, profile: bool = True) -> dict[str, Any]:
    tool = "wrk -t2 -c16" if shutil.which("wrk") else "python"
    say(f"ingest ({SERVER}): gunicorn {' '.join(GUNICORN)}; load: {tool}")
    result = ingest(seconds=5 if quick else 10, rounds=1 if quick else 2)
    n = 400 if quick else 1500
    applied = []
    for pool, conc in EVENT_CONFIGS:
        res = apply_events(n, pool, conc,
                           profile_to=LOG_DIR / "events.pyspy.txt" if profile and pool == "threads" else None)
        applied.append(res)
        say(f"  events applied, {pool} {conc}: {res['per_s']:.0f} events/s, worker CPU {res['cpu_ms']:.2f} ms/event")
    result["apply"] = applied
    result["apply_table"] = table(["event worker", "events", "applied/s", "worker CPU ms/event"],
                                  [[f"{a['pool']} {a['concurrency']}", a["events"], f"{a['per_s']:,.0f}",
                                    f"{a['cpu_ms']:.2f}"] for a in applied])
    if profile:
        result["profile"] = profile_receiver(5)
    say()
    say(result["table"])
    say()
    say(result["apply_table"])
    if profile:
        say("\npy-spy profile of the receiver (both gunicorn workers, GIL samples):")
        say(result["profile"])
        say("\npy-spy profile of the event worker (threads):")
        say(next(a["profile"] for a in applied if a["profile"]))
    say(f"(logs in {LOG_DIR})")
    return result
