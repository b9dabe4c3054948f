"""The fake as a foreground process: ``mailworker fake-smtp2go`` and ``python -m worker.devtools.fake_smtp2go``.

``mailworker dev`` runs it as a child so the whole stack works without an SMTP2Go account; the flags mirror
the constructor of :class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go`.
"""

from __future__ import annotations

import argparse
import signal
import threading

from worker.devtools.fake_smtp2go.server import FakeSMTP2Go


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until Ctrl-C / SIGTERM (``mailworker fake-smtp2go``, local dev)."""
    ap = argparse.ArgumentParser(prog="fake-smtp2go", description="A local fake of SMTP2Go's v3 API.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument("--api-key", default="api-test-key")
    for opt in ("latency", "error-rate", "rate-limit-rate", "timeout-rate", "webhook-delay"):
        ap.add_argument(f"--{opt}", type=float, default=0.0)
    ap.add_argument("--timeout-seconds", type=float, default=60.0)
    ap.add_argument("--webhook-url")
    auth = ap.add_mutually_exclusive_group()
    auth.add_argument("--webhook-bearer", metavar="TOKEN")
    auth.add_argument("--webhook-basic", metavar="USER:PASS")
    ap.add_argument("--webhook-format", choices=("json", "form"), default="json")
    ap.add_argument("--events", default="processed,delivered", help="comma-separated webhook events to emit")
    ap.add_argument("--activity-rate", type=int, default=60, help="activity/search requests per minute")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    webhook_auth = (("bearer", a.webhook_bearer) if a.webhook_bearer
                    else ("basic", a.webhook_basic) if a.webhook_basic else None)
    fake = FakeSMTP2Go(
        api_key=a.api_key, host=a.host, port=a.port, latency=a.latency, error_rate=a.error_rate,
        rate_limit_rate=a.rate_limit_rate, timeout_rate=a.timeout_rate, timeout_seconds=a.timeout_seconds,
        webhook_url=a.webhook_url, webhook_auth=webhook_auth, webhook_format=a.webhook_format,
        webhook_events=tuple(e.strip() for e in a.events.split(",") if e.strip()),
        webhook_delay=a.webhook_delay, seed=a.seed, activity_rate_per_minute=a.activity_rate)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    fake.start()
    print(f"fake SMTP2Go API listening on {fake.url} (POST {fake.url}/email/send)", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0
