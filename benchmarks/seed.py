"""Bulk rows for the benchmarks: messages that already went through the system, inserted in seconds.

Going through ``enqueue_email`` and a worker for 100,000 rows would take half an hour on 2 cores, and the
scale benchmark only needs the table to *look* like a production one: mostly finished mail spread over a
month, a sprinkle of scheduled and retrying mail, one recipient each, real-sized bodies. SQLAlchemy Core
``insert`` with a list of dicts becomes one multi-row ``INSERT`` per chunk (PyMySQL ``executemany``).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import HTML_BODY, SENDER, SUBJECT, TEXT_BODY, recipient

#: Message status -> share of the seeded table; recipient status follows from it.
MIX: list[tuple[str, float, str]] = [
    ("delivered", 0.85, "delivered"),
    ("sent", 0.10, "sent"),
    ("bounced", 0.02, "bounced"),
    ("failed", 0.01, "failed"),
    ("complained", 0.005, "complained"),
    ("suppressed", 0.01, "suppressed"),
    ("retrying", 0.003, "queued"),  # waiting for a retry an hour from now
    ("queued", 0.002, "queued"),  # scheduled with send_at days ahead
]


def _status(rng: random.Random) -> tuple[str, str]:
    roll, acc = rng.random(), 0.0
    for status, share, rstatus in MIX:
        acc += share
        if roll < acc:
            return status, rstatus
    return "delivered", "delivered"


def seed_messages(count: int, *, offset: int = 0, status: str | None = None, bodies: bool = True,
                  chunk: int = 5000, seed: int = 7) -> list[tuple[str, str, str]]:
    """Insert ``count`` messages with one recipient each; returns ``(id, smtp2go email_id, rcpt)``.

    ``status`` forces one status (``"sent"`` for the event benchmark), else the production-like MIX. Rows go
    in as plain tuples through the driver's ``executemany`` (batched multi-row INSERTs): the ORM's per-value
    type processing would make seeding 100,000 rows take minutes instead of seconds.
    """
    from worker.infrastructure.db import get_engine

    rng = random.Random(seed + offset)
    now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as the UTCDateTime column type stores it
    engine = get_engine()
    out: list[tuple[str, str, str]] = []
    m_sql = (f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "  # noqa: S608 - constant column names
             f"VALUES ({', '.join(['%s'] * len(_MESSAGE_COLUMNS))})")
    r_sql = ("INSERT INTO recipients (message_id, address, kind, status, open_count, click_count, sent_at) "
             "VALUES (%s, %s, %s, %s, %s, %s, %s)")
    text_body, html_body = (TEXT_BODY, HTML_BODY) if bodies else ("x", None)
    for start in range(offset, offset + count, chunk):
        messages: list[tuple[Any, ...]] = []
        recipients: list[tuple[Any, ...]] = []
        for i in range(start, min(offset + count, start + chunk)):
            mstatus, rstatus = (status, "sent") if status else _status(rng)
            mid, rcpt = str(uuid.uuid4()), recipient(i)
            queued = now - timedelta(seconds=rng.uniform(120, 30 * 86400))
            final = mstatus not in ("queued", "retrying")
            accepted = mstatus in ("delivered", "sent", "bounced", "complained")
            email_id = f"bench{i:09d}-{mid[:8]}" if accepted else ""
            nxt = (now + timedelta(hours=1) if mstatus == "retrying"
                   else now + timedelta(days=rng.uniform(1, 5)) if mstatus == "queued" else None)
            sent_at = queued + timedelta(seconds=2) if accepted else None
            messages.append((
                mid, mstatus, "smtp2go" if accepted else None, SENDER, SUBJECT, text_body, html_body,
                len(TEXT_BODY) + len(HTML_BODY), 1 if final else 2, 1 if final else 2, 0, 0, False,
                email_id or None, f"<{mid}@shop.example.com>", queued, nxt if mstatus == "queued" else None,
                nxt, queued if mstatus != "queued" else None, sent_at,
                queued + timedelta(minutes=30) if mstatus == "failed" else None,
                queued + timedelta(seconds=5) if mstatus == "delivered" else None, queued + timedelta(seconds=5),
            ))
            recipients.append((mid, rcpt, "to", rstatus, 0, 0, sent_at))
            out.append((mid, email_id, rcpt))
        with engine.begin() as conn:
            conn.exec_driver_sql(m_sql, messages)
            conn.exec_driver_sql(r_sql, recipients)
    return out


_MESSAGE_COLUMNS = ("id", "status", "transport", "sender", "subject", "text_body", "html_body", "size_bytes",
                    "attempts", "api_attempts", "smtp_attempts", "crashes", "api_abandoned", "smtp2go_message_id",
                    "message_id_header", "queued_at", "send_at", "next_attempt_at", "published_at", "sent_at",
                    "failed_at", "email_delivered_at", "updated_at")


def event(kind: str, email_id: str, rcpt: str, when: datetime) -> dict[str, Any]:
    """An SMTP2Go JSON webhook event shaped like tests/fixtures/smtp2go/webhook_*.json."""
    ev: dict[str, Any] = {"event": kind, "id": uuid.uuid4().hex, "email_id": email_id,
                          "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "sendtime": when.isoformat(),
                          "rcpt": rcpt, "sender": "orders@shop.example.com", "srchost": "198.51.100.7"}
    if kind == "delivered":
        ev.update({"host": "mx1.example.com [203.0.113.25]", "context": "Unavailable",
                   "message": "250 2.0.0 Ok: queued as 4Xk2pQ"})
    elif kind in ("open", "click"):
        ev.update({"user-agent": "Mozilla/5.0 (X11; Linux x86_64)", "srchost": "203.0.113.90"})
        if kind == "click":
            ev["url"] = "https://shop.example.com/t/1042"
    return ev


def new_message_rows(count: int, *, offset: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows as ``enqueue_email`` writes them (queued, due now, one recipient), for the memory run's feeder."""
    now = datetime.now(UTC)
    messages, recipients = [], []
    for i in range(offset, offset + count):
        mid = str(uuid.uuid4())
        messages.append({
            "id": mid, "status": "queued", "sender": SENDER, "subject": SUBJECT + " (memory run)",
            "text_body": TEXT_BODY, "html_body": HTML_BODY, "size_bytes": len(TEXT_BODY) + len(HTML_BODY),
            "attempts": 0, "api_attempts": 0, "smtp_attempts": 0, "crashes": 0, "api_abandoned": False,
            "message_id_header": f"<{mid.replace('-', '')}@shop.example.com>", "queued_at": now,
            "updated_at": now,
        })
        recipients.append({"message_id": mid, "address": recipient(i), "kind": "to", "status": "queued",
                           "open_count": 0, "click_count": 0})
    return messages, recipients
