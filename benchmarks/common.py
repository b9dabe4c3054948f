"""Shared set-up for the benchmarks: isolated names, the environment, the test email, small statistics.

Isolation matters because other people run heavy test suites on the same Redis and MariaDB: every queue and
Redis key starts with ``mwbench<pid>`` on Redis DB 11 (ours), and the database is ``mwbench`` (dropped and
recreated by us). :func:`configure_env` must run before anything imports ``worker``, because ``celeryconfig``
reads the broker URL and queue names at import time.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: Inherited by every process a run starts (workers, the census), so they all clean up the same names.
PREFIX = os.environ.get("MWBENCH_PREFIX") or f"mwbench{os.getpid()}"
REDIS_DB = int(os.environ.get("MWBENCH_REDIS_DB", "11"))
BROKER_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
MYSQL_HOST = os.environ.get("MWBENCH_MYSQL_HOST", "127.0.0.1")
DB_NAME = os.environ.get("MWBENCH_DB", "mwbench")
ADMIN_URL = f"mysql+pymysql://root@{MYSQL_HOST}:3306/?charset=utf8mb4"
#: The product's MariaDB driver in the workers and the caller: ``pymysql`` (pure Python, the default install) or
#: ``mysqldb`` (mysqlclient, C; ``pip install mysqlclient`` with libmariadb-dev). The census always uses PyMySQL:
#: it counts round trips by patching it.
DRIVER = os.environ.get("MWBENCH_DRIVER", "pymysql")
DATABASE_URL = f"mysql+{DRIVER}://root@{MYSQL_HOST}:3306/{DB_NAME}?charset=utf8mb4"
#: Fake credentials for the local simulator and receiver; nothing real ever sees them.
API_KEY = "api-bench-key-0123456789"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - benchmark-only
SENDER = "Shop <orders@shop.example.com>"
SEND_QUEUE = f"{PREFIX}.send"
EVENTS_QUEUE = f"{PREFIX}.events"
MAINTENANCE_QUEUE = f"{PREFIX}.maintenance"
BASELINE_QUEUE = f"{PREFIX}.baseline"

#: The benchmark email: a typical transactional message (about 3 KB of bodies, one recipient).
SUBJECT = "Your order #1042 has shipped"
TEXT_BODY = ("Hello,\n\nyour order #1042 is on its way. Track it at https://shop.example.com/t/1042.\n" * 12)
HTML_BODY = ("<p>Hello,</p><p>your order <b>#1042</b> is on its way. "
             "<a href='https://shop.example.com/t/1042'>Track it</a>.</p>\n" * 16)


def recipient(i: int) -> str:
    return f"customer{i}@example.net"


def baseline_payload(tracking_id: str, to: str) -> dict[str, Any]:
    """Byte for byte the JSON the product posts for the benchmark email (see ``worker.sending.transports.smtp2go``)."""
    return {
        "sender": SENDER,
        "to": [to],
        "custom_headers": [{"header": "X-Mailworker-Id", "value": tracking_id}],
        "subject": SUBJECT,
        "text_body": TEXT_BODY,
        "html_body": HTML_BODY,
    }


def configure_env(api_url: str = "http://127.0.0.1:9/v3") -> dict[str, str]:
    """Point this process (and the workers it starts) at our own database, Redis DB and queue names."""
    env = {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "MAILWORKER_SEND_QUEUE": SEND_QUEUE,
        "MAILWORKER_EVENTS_QUEUE": EVENTS_QUEUE,
        "MAILWORKER_MAINTENANCE_QUEUE": MAINTENANCE_QUEUE,
        "MWBENCH_BASELINE_QUEUE": BASELINE_QUEUE,
        "MAIL_DEFAULT_SENDER": SENDER,
        "SMTP2GO_API_KEY": API_KEY,
        "SMTP2GO_API_URL": api_url,
        "SMTP2GO_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "MAILWORKER_DEV_ENV_FILE": "/nonexistent/mwbench.env",
        "PYTHONPATH": str(ROOT),
        "MWBENCH_PREFIX": PREFIX,
    }
    for name in ("REDIS_URL", "SMTP_HOST", "SETTINGS_ENCRYPTION_KEY", "SMTP2GO_RATE_LIMIT"):
        os.environ.pop(name, None)
    os.environ.update(env)
    if "worker.infrastructure.config" in sys.modules:
        from worker.infrastructure.config import reset_settings

        reset_settings()
    return dict(os.environ)


def set_api_url(url: str) -> None:
    os.environ["SMTP2GO_API_URL"] = url
    from worker.infrastructure.config import reset_settings

    reset_settings()


def reset_database() -> None:
    """Drop and recreate our own database, then migrate it (never touches any other database)."""
    from sqlalchemy import create_engine, text

    from worker.infrastructure.db import dispose_engines
    from worker.infrastructure.migrate import upgrade

    dispose_engines()
    admin = create_engine(ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{DB_NAME}`"))
        conn.execute(text(f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    admin.dispose()
    upgrade(DATABASE_URL)


def truncate_tables() -> None:
    """Empty our tables between rows so every row starts from the same table size."""
    from sqlalchemy import text

    from worker.infrastructure.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for table in ("tracking_events", "attachments", "recipients", "messages", "suppressions"):
            conn.execute(text(f"TRUNCATE TABLE {table}"))
        conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))


def clean_redis() -> None:
    """Delete our keys only: queues and protection state start with PREFIX; bindings name our queues."""
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    try:
        keys = list(client.scan_iter(f"{PREFIX}*"))
        # kombu's exchange bindings: sets named after an exchange or queue (`_kombu.binding.<x>`, and
        # `_kombu.binding_permanent.<x>` since kombu 5.5) plus a zset of binding deadlines.
        for binding in client.scan_iter("_kombu.binding*"):
            if PREFIX.encode() in binding:
                keys.append(binding)
            elif client.type(binding) == b"set":
                members: set[bytes] = client.smembers(binding)  # type: ignore[assignment]
                for member in members:
                    if PREFIX.encode() in member:
                        client.srem(binding, member)
            elif client.type(binding) == b"zset":
                for member in client.zrange(binding, 0, -1):  # type: ignore[union-attr]
                    if PREFIX.encode() in member:
                        client.zrem(binding, member)
        if keys:
            client.delete(*keys)
        # kombu keeps unacked deliveries in two DB-wide keys; drop only entries that name our queues.
        for tag, payload in client.hscan_iter("unacked"):
            if PREFIX.encode() in payload:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table (printed, and pasted into docs/benchmarks.md as is)."""
    body = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)
