"""The embedded SQLite default under threads: no lost updates, reads inside the transaction, writers in turn.

pysqlite's legacy mode begins no transaction before the first write, so the locking read that event
processing relies on ran outside any transaction and two workers could both read ``open_count = n`` and both
write ``n + 1``. ``worker.infrastructure.db`` now emits ``BEGIN IMMEDIATE`` itself; these tests pin what that buys.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from tests.threads import run_threads
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import Message, MessageStatus, Recipient, RecipientKind, RecipientStatus, Transport
from worker.tracking.events import process_event

THREADS = 8


def _sent_message(address: str, smtp2go_id: str, status: MessageStatus = MessageStatus.SENT) -> str:
    tracking_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    sent = status == MessageStatus.SENT
    with session_scope() as session:
        message = Message(id=tracking_id, status=status, transport=Transport.SMTP2GO if sent else None,
                          sender="support@example.org", subject="s", text_body="hi",
                          smtp2go_message_id=smtp2go_id if sent else None, queued_at=now,
                          sent_at=now if sent else None)
        message.recipients.append(Recipient(
            address=address, kind=RecipientKind.TO, open_count=0, click_count=0,
            status=RecipientStatus.SENT if sent else RecipientStatus.QUEUED, sent_at=now if sent else None))
        session.add(message)
    return tracking_id


def test_concurrent_opens_on_sqlite_lose_no_update(sqlite_db: str) -> None:
    """8 threads x 5 distinct ``open`` events for one recipient: ``open_count`` is exactly 40."""
    tracking_id = _sent_message("alice@example.com", "em-sqlite-opens")
    start = datetime(2026, 11, 20, 9, 31, tzinfo=UTC)
    per_thread = 5
    statuses: list[str] = []

    def work(i: int) -> None:
        for k in range(per_thread):
            n = i * per_thread + k
            result = process_event({"event": "open", "id": f"open-{n}", "email_id": "em-sqlite-opens",
                                    "rcpt": "alice@example.com",
                                    "time": (start + timedelta(seconds=n)).isoformat()})
            statuses.append(result["status"])

    run_threads(THREADS, work)
    assert statuses == ["applied"] * (THREADS * per_thread)
    with session_scope() as session:
        recipient = session.scalars(select(Recipient).where(Recipient.message_id == tracking_id)).one()
        assert recipient.open_count == THREADS * per_thread
        assert recipient.opened_at == start


def test_reads_happen_inside_the_transaction(sqlite_db: str) -> None:
    """A SELECT opens the transaction (pysqlite alone would run it in autocommit): the recipe is in force."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        conn.rollback()
        assert not conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]


def test_a_second_writer_waits_for_the_first(sqlite_db: str) -> None:
    """``BEGIN IMMEDIATE``: a transaction that has only read still holds the write lock, so a second one
    waits at its BEGIN (bounded by busy_timeout) instead of reading a value the first is about to change."""
    engine = get_engine()
    begun = threading.Event()
    second_done = threading.Event()
    order: list[str] = []

    def second() -> None:
        begun.wait(10)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            order.append("second began")
            conn.rollback()
        second_done.set()

    t = threading.Thread(target=second)
    t.start()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # read only, yet the write lock is ours
        begun.set()
        # The positive signal that the second connection is blocked: it has not begun after 0.5 s, and it does
        # begin (below) as soon as we end our transaction.
        assert not second_done.wait(0.5)
        order.append("first ended")
        conn.rollback()
    assert second_done.wait(10)
    t.join(10)
    assert order == ["first ended", "second began"]
