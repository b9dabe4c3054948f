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
    ap = argparse.ArgumentParser(
        prog="mailworker fake-smtp2go", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A local fake of SMTP2Go's v3 API (POST /v3/email/send, /v3/activity/search) with failure "
                    "injection; it can post SMTP2Go-style webhooks for each accepted email.")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    ap.add_argument("--port", type=int, default=8787, help="port to listen on (point SMTP2GO_API_URL at "
                                                           "http://HOST:PORT/v3)")
    ap.add_argument("--api-key", default="api-test-key", help="the only X-Smtp2go-Api-Key accepted (others: 401)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    ap.add_argument("--error-rate", type=float, default=0.0, help="fraction of sends answered 500 (0..1)")
    ap.add_argument("--rate-limit-rate", type=float, default=0.0, help="fraction of sends answered 429 (0..1)")
    ap.add_argument("--timeout-rate", type=float, default=0.0,
                    help="fraction of sends accepted but answered only after --timeout-seconds (0..1)")
    ap.add_argument("--webhook-delay", type=float, default=0.0, help="seconds before each webhook is posted")
    ap.add_argument("--timeout-seconds", type=float, default=60.0, help="how long a timed-out send hangs")
    ap.add_argument("--webhook-url", help="post events here, e.g. http://127.0.0.1:8000/api/webhooks/smtp2go/events "
                                          "(default: no webhooks)")
    auth = ap.add_mutually_exclusive_group()
    auth.add_argument("--webhook-bearer", metavar="TOKEN", help="send webhooks with Authorization: Bearer TOKEN")
    auth.add_argument("--webhook-basic", metavar="USER:PASS", help="send webhooks with HTTP Basic auth")
    ap.add_argument("--webhook-format", choices=("json", "form"), default="json", help="webhook body format")
    ap.add_argument("--events", default="processed,delivered", help="comma-separated webhook events to emit")
    ap.add_argument("--activity-rate", type=int, default=60, help="activity/search requests per minute")
    ap.add_argument("--seed", type=int, help="random seed for reproducible failure injection")
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
