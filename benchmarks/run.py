"""``python -m benchmarks.run [--quick] [--only send|webhook|scale|census|bulk|lanes] [-n N] [--configs ...]``.

Runs the send-pipeline, webhook-ingest and scale benchmarks against real MariaDB and Redis on 127.0.0.1, prints
each figure with its ratio to a baseline measured in the same run, and saves everything as JSON (the path is
printed at the end). The environment is set up before ``worker`` is imported, because ``celeryconfig`` reads
the broker and queue names at import time.

The send benchmark runs a django-post_office anchor row (``benchmarks.post_office_bench``, Django project in
``benchmarks/post_office_app``) beside the bare baseline and mailworker in every single-process configuration,
printed with the ratios mailworker / post_office and mailworker / bare; ``--no-post-office`` skips it.

``--mode`` picks the send benchmark's measurement: ``concurrent`` (N enqueued by one caller while the workers
drain; end-to-end = N / (last sent - first enqueue)), ``drain`` (N enqueued with no worker running, then fresh
workers drain them; rate from the stand-in's first to last acceptance, ``benchmarks.send_drain``) or ``both``
(the default: every row runs both phases, and both sets of tables are printed).

``--configs`` replaces the send benchmark's rows (``benchmarks.send_bench.CONFIGS``) with a comma-separated list
of ``pool:concurrency`` or ``pool:concurrencyxprocesses``, e.g. ``--configs threads:8,threads:16x2,prefork:2``
(``16x2``: two separate worker processes of 16 threads each on the same queue), for quick targeted runs.

``--only bulk`` and ``--only lanes`` (:mod:`benchmarks.bulk_bench`): 3,000 personalised emails through
``enqueue_many`` and the bulk lane against django-post_office's ``mail.send_many`` and the bare baseline, and
20,000 bulk emails draining in the Procfile's ``mailworker worker`` while a transactional email is enqueued
every 250 ms. ``make bench`` runs them too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PREFIX, ROOT, clean_redis, configure_env, say


def _machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N everywhere (a smoke run, ~3 minutes)")
    ap.add_argument("--only", choices=("send", "webhook", "scale", "census", "bulk", "lanes"), action="append",
                    help="run only this benchmark (repeatable)")
    ap.add_argument("-n", type=int, default=None, help="emails per send row (default 2000, --quick 300)")
    ap.add_argument("--memory-emails", type=int, default=None,
                    help="emails in the memory run (default 10000, --quick 3000; the spec asks for 20000, which "
                         "takes ~8 minutes on its own on a busy 2-core machine)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    ap.add_argument("--no-post-office", action="store_true",
                    help="skip the django-post_office anchor rows of the send benchmark (they run by default "
                         "when the bench extra is installed: pip install -e '.[test,bench]')")
    ap.add_argument("--configs", default=None, metavar="POOL:C[xP],...",
                    help="send rows to run instead of the default ones, e.g. threads:8,threads:16x2,prefork:2 "
                         "(C threads/processes per worker, P worker processes, default 1)")
    ap.add_argument("--mode", choices=("concurrent", "drain", "both"), default="both",
                    help="send benchmark: concurrent (one caller enqueues while the workers drain), drain (all N "
                         "enqueued with no worker running, then fresh workers drain them) or both, each row "
                         "running one phase after the other (default both)")
    ap.add_argument("--bulk-emails", type=int, default=None,
                    help="emails per bulk row (default 3000, --quick 600)")
    ap.add_argument("--bulk-threads", default=None, metavar="T,...",
                    help="thread counts of the bulk rows, same for every kind (default 4,16: the bulk lane's "
                         "default and the send benchmark's headline row)")
    ap.add_argument("--lanes-emails", type=int, default=None,
                    help="bulk emails draining in the lanes benchmark (default 20000, --quick 3000)")
    ap.add_argument("--json", type=Path, default=None, help="where to save results (default var/bench-*.json)")
    args = ap.parse_args(argv)
    only = set(args.only or ("send", "webhook", "scale", "bulk", "lanes"))
    try:
        bulk_threads = tuple(int(t) for t in (args.bulk_threads or "4,16").split(",") if t.strip())
    except ValueError:
        ap.error(f"--bulk-threads: expected comma-separated thread counts, got {args.bulk_threads!r}")
    if not bulk_threads or min(bulk_threads) < 1:
        ap.error(f"--bulk-threads: expected thread counts >= 1, got {args.bulk_threads!r}")
    n = args.n or (300 if args.quick else 2000)
    configs = None
    if args.configs is not None:
        from benchmarks.send_bench import parse_configs  # imports no ``worker`` code: safe before configure_env

        try:
            configs = parse_configs(args.configs)
        except ValueError as exc:
            ap.error(str(exc))

    configure_env()
    from benchmarks.common import reset_database
    from benchmarks.profiling import py_spy

    profile = not args.no_profile
    if profile and py_spy() is None:
        say("py-spy not found: profiles skipped (.venv/bin/pip install py-spy to get them)")
        profile = False

    machine = _machine()
    say(f"# mailworker benchmarks ({'quick' if args.quick else 'full'}) -- {machine['cpus']} CPUs, "
        f"{machine['memory_gb']} GB, Python {machine['python']}, load {machine['load_avg_at_start']}")
    say(f"names: {PREFIX}.* on Redis DB 11, MariaDB database mwbench")
    reset_database()
    results: dict[str, Any] = {"machine": machine, "quick": args.quick, "n": n}
    started = time.monotonic()
    try:
        if "send" in only:
            from benchmarks import send_bench

            say(f"\n## 1. Send pipeline: {n} emails per row, API latency {send_bench.LATENCY * 1000:.0f} ms")
            results["send"] = send_bench.run(n, configs=configs, profile=profile,
                                             post_office=not args.no_post_office, mode=args.mode)
        if only == {"census"}:  # round trips per email only: quick and deterministic, for hot-path work
            from benchmarks import census

            results["census"] = census.run(args.n or 300)
            say(results["census"]["table"])
        if "webhook" in only:
            from benchmarks import webhook_bench

            say("\n## 2. Webhook ingest")
            results["webhook"] = webhook_bench.run(quick=args.quick, profile=profile)
        if "scale" in only:
            from benchmarks import scale_bench

            say("\n## 3. Scale")
            results["scale"] = scale_bench.run(quick=args.quick, memory_emails=args.memory_emails)
        if "bulk" in only:
            from benchmarks import bulk_bench

            bulk_n = args.bulk_emails or (600 if args.quick else bulk_bench.BULK_N)
            say(f"\n## 4. Bulk: {bulk_n} personalised emails, stand-in 20 ms + 0.2 ms per email of a batch, "
                f"load {os.getloadavg()}")
            results["bulk"] = bulk_bench.run_bulk(bulk_n, bulk_threads, post_office=not args.no_post_office)
        if "lanes" in only:
            from benchmarks import bulk_bench

            lanes_n = args.lanes_emails or (3000 if args.quick else bulk_bench.LANES_N)
            say(f"\n## 5. Lanes: {lanes_n} bulk emails draining in the Procfile's `mailworker worker`, one "
                f"transactional email every 250 ms, load {os.getloadavg()}")
            results["lanes"] = bulk_bench.run_lanes(lanes_n)
    finally:
        clean_redis()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_avg_at_end"] = os.getloadavg()
    out = args.json or ROOT / "var" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    say(f"\ndone in {results['seconds']:.0f} s (load average now {results['load_avg_at_end']}); results saved to "
        f"{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
