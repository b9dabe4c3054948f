"""Connection pool sizing, and which database errors a task waits out (an outage) or fails on at once (a
missing migration, a bug): the rules by hand-built exceptions, then a real MariaDB and a closed port."""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pymysql
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from tests.conftest import MARIADB_ADMIN_URL, MARIADB_HOST
from worker.celery_app import app as celery_app
from worker.infrastructure import db as worker_db
from worker.infrastructure.config import reset_settings
from worker.infrastructure.dberrors import describe, error_code, is_schema_error, is_transient


@pytest.fixture
def pool_reset() -> Iterator[None]:
    yield
    worker_db._pool_size = worker_db._DEFAULT_POOL_SIZE
    worker_db.dispose_engines()


def test_threads_worker_pools_a_connection_per_thread(db: str, redis_client: Any, pool_reset: None) -> None:
    from celery.contrib.testing.worker import start_worker

    assert worker_db.get_engine().pool.size() == 10  # type: ignore[attr-defined]
    with start_worker(celery_app, pool="threads", concurrency=24, perform_ping_check=False, loglevel="WARNING",
                      queues=["mw-pool-size-test"], shutdown_timeout=10):
        engine = worker_db.get_engine()
        assert engine.pool.size() == 26  # type: ignore[attr-defined]
        # 26 threads can hold a connection each at the same moment, none waits for the pool.
        conns = [engine.connect() for _ in range(26)]
        assert engine.pool.checkedout() == 26  # type: ignore[attr-defined]
        for conn in conns:
            conn.close()


def test_prefork_children_keep_the_default(db: str, pool_reset: None) -> None:
    from types import SimpleNamespace

    from worker.celery_app import _size_db_pool

    _size_db_pool(sender=SimpleNamespace(pool_cls="prefork", concurrency=8))
    assert worker_db.get_engine().pool.size() == 10  # type: ignore[attr-defined]
    _size_db_pool(sender=SimpleNamespace(pool_cls="threads", concurrency=40))
    assert worker_db.get_engine().pool.size() == 42  # type: ignore[attr-defined]


def test_db_pool_size_setting_wins(db: str, base_env: pytest.MonkeyPatch, pool_reset: None) -> None:
    from types import SimpleNamespace

    from worker.celery_app import _size_db_pool

    base_env.setenv("DB_POOL_SIZE", "5")
    reset_settings()
    _size_db_pool(sender=SimpleNamespace(pool_cls="threads", concurrency=40))
    assert worker_db.get_engine().pool.size() == 5  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- error classification


def _wrapped(orig: Exception, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """The exception SQLAlchemy raises around a driver error (the class it would pick for it)."""
    err = sa_exc.DBAPIError.instance("UPDATE messages SET status=%(s)s", {"s": "secret@example.com"}, orig,
                                     sqlite3.Error if isinstance(orig, sqlite3.Error) else pymysql.err.Error,
                                     connection_invalidated=invalidated)
    assert isinstance(err, sa_exc.DBAPIError)
    return err


@pytest.mark.parametrize("orig", [
    pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '10.0.0.5' (111)"),
    pymysql.err.OperationalError(2006, "MySQL server has gone away"),
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
    pymysql.err.OperationalError(2055, "Lost connection to server at 'reading initial communication packet'"),
    pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction"),
    pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction"),
    pymysql.err.OperationalError(1040, "Too many connections"),
    sqlite3.OperationalError("database is locked"),
], ids=lambda e: f"{type(e).__module__}-{e.args[0]}")
def test_outages_are_transient(orig: Exception) -> None:
    err = _wrapped(orig)
    assert isinstance(err, sa_exc.OperationalError)
    assert is_transient(err) and not is_schema_error(err)


def test_a_connection_sqlalchemy_invalidated_is_transient_whatever_the_code() -> None:
    assert is_transient(_wrapped(pymysql.err.InterfaceError(0, ""), invalidated=True))
    assert not is_transient(_wrapped(pymysql.err.InterfaceError(0, "")))


def test_pool_timeouts_and_disconnects_are_transient() -> None:
    assert is_transient(sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"))
    assert is_transient(sa_exc.DisconnectionError("connection closed"))


@pytest.mark.parametrize("orig", [
    pymysql.err.OperationalError(1054, "Unknown column 'messages.held_since' in 'field list'"),
    pymysql.err.ProgrammingError(1146, "Table 'mailworker.tracking_events' doesn't exist"),
    sqlite3.OperationalError("no such column: messages.held_since"),
    sqlite3.OperationalError("no such table: tracking_events"),
    sqlite3.OperationalError("table messages has no column named held_since"),
], ids=lambda e: f"{type(e).__module__}-{e.args[0]}")
def test_missing_schema_is_not_transient_and_says_so(orig: Exception) -> None:
    err = _wrapped(orig)
    assert not is_transient(err) and is_schema_error(err)


@pytest.mark.parametrize("orig", [
    pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"),
    pymysql.err.IntegrityError(1062, "Duplicate entry 'Order-1' for key 'idempotency_key'"),
    pymysql.err.OperationalError(1045, "Access denied for user 'mail'@'10.0.0.7'"),
    sqlite3.IntegrityError("UNIQUE constraint failed: messages.idempotency_key"),
    sqlite3.OperationalError("near \"SELEC\": syntax error"),
], ids=lambda e: f"{type(e).__module__}-{e.args[0]}")
def test_faults_are_neither_transient_nor_schema(orig: Exception) -> None:
    err = _wrapped(orig)
    assert not is_transient(err) and not is_schema_error(err)


def test_errors_outside_the_database_layer_are_not_transient() -> None:
    assert not is_transient(ValueError("x")) and not is_schema_error(ValueError("x"))
    assert not is_transient(sa_exc.NoResultFound("No row was found"))


def test_describe_names_class_code_and_message_never_the_sql_or_its_parameters() -> None:
    err = _wrapped(pymysql.err.OperationalError(1054, "Unknown column 'held_since' in 'field list'"))
    assert error_code(err) == 1054
    line = describe(err)
    assert line == "OperationalError 1054: Unknown column 'held_since' in 'field list'"
    assert "secret@example.com" in str(err)  # SQLAlchemy's own text has the parameters; ours does not
    assert describe(_wrapped(sqlite3.OperationalError("database is locked"))) == (
        "OperationalError: database is locked")


# --------------------------------------------------------------------------------------- the tasks, for real


@pytest.fixture
def mariadb_missing_a_column(base_env: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A database migrated to head, holding one queued message, whose ``messages.lease_owner`` was then dropped
    (what a deploy of newer code on an older schema looks like). Yields (url, tracking id)."""
    name = f"mwtest_dberr_{os.getpid()}"
    admin = create_engine(MARIADB_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = f"mysql+pymysql://root@{MARIADB_HOST}:3306/{name}?charset=utf8mb4"
    from worker.infrastructure.migrate import upgrade

    upgrade(url)
    tracking_id = str(uuid.uuid4())
    engine = create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO messages (id, status, sender, size_bytes, attempts, crashes, queued_at, updated_at,"
            " text_body) VALUES (:id, 'queued', 's@example.org', 0, 0, 0, :now, :now, 'hi')"),
            {"id": tracking_id, "now": now})
        conn.execute(text(
            "INSERT INTO recipients (message_id, address, kind, status, open_count, click_count)"
            " VALUES (:id, 'a@example.com', 'to', 'queued', 0, 0)"), {"id": tracking_id})
        conn.execute(text("ALTER TABLE messages DROP COLUMN lease_owner"))
    engine.dispose()
    base_env.setenv("DATABASE_URL", url)
    reset_settings()
    worker_db.dispose_engines()
    yield url, tracking_id
    worker_db.dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def test_send_task_fails_at_once_on_a_missing_column(mariadb_missing_a_column: tuple[str, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Regression: an unknown column was retried forever as "database unavailable"."""
    from worker.tasks import send_email

    url, tracking_id = mariadb_missing_a_column
    caplog.set_level(logging.WARNING, logger="worker.tasks")
    result = send_email.apply(args=[tracking_id])
    assert result.failed()
    assert isinstance(result.result, sa_exc.OperationalError) and error_code(result.result) == 1054
    records = [r for r in caplog.records if r.name == "worker.tasks"]
    assert [r.levelno for r in records] == [logging.ERROR]  # no "unavailable" retry warning before it
    assert "run `mailworker db upgrade`" in records[0].getMessage()
    assert "1054" in records[0].getMessage() and tracking_id in records[0].getMessage()
    engine = create_engine(url)
    with engine.connect() as conn:  # the row is untouched, waiting for the upgrade
        assert conn.execute(text("SELECT status FROM messages WHERE id = :id"), {"id": tracking_id}).scalar() == (
            "queued")
    engine.dispose()


def test_send_task_retries_an_unreachable_database_then_gives_up(base_env: pytest.MonkeyPatch,
                                                                 closed_port: int,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Connection refused is an outage: a WARNING per retry naming the error, a bounded count, then the task
    fails loudly (the row, wherever the database is, is republished by the sweeper later). ``apply`` runs the
    retries eagerly, without their countdowns."""
    from worker.tasks import SEND_DB_RETRIES, send_email

    base_env.setenv("DATABASE_URL", f"mysql+pymysql://root@127.0.0.1:{closed_port}/mailworker?charset=utf8mb4")
    reset_settings()
    worker_db.dispose_engines()
    caplog.set_level(logging.WARNING, logger="worker.tasks")
    try:
        result = send_email.apply(args=[str(uuid.uuid4())])
    finally:
        worker_db.dispose_engines()
    assert result.failed() and error_code(result.result) == 2003
    records = [r for r in caplog.records if r.name == "worker.tasks"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == SEND_DB_RETRIES
    assert all("database unavailable" in w and "OperationalError 2003" in w for w in warnings)
    assert f"retry {SEND_DB_RETRIES}/{SEND_DB_RETRIES} in 60s" in warnings[-1]
    errors = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "giving up" in errors[0] and f"after {SEND_DB_RETRIES} retries" in errors[0]


def test_event_task_fails_at_once_on_a_missing_table(sqlite_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """The events task takes the same rules (on SQLite here: a dropped table reads "no such table")."""
    from worker.tasks import process_event

    with worker_db.get_engine().begin() as conn:
        conn.execute(text("DROP TABLE tracking_events"))
    caplog.set_level(logging.WARNING, logger="worker.tasks")
    result = process_event.apply(args=[{"event": "open", "id": "ev-1", "email_id": "em-1",
                                        "rcpt": "a@example.com", "time": "2026-11-20T09:31:18Z"}])
    assert result.failed() and isinstance(result.result, sa_exc.OperationalError)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker.tasks"]
    assert len(messages) == 1 and messages[0][0] == logging.ERROR
    assert "mailworker db upgrade" in messages[0][1] and "event=ev-1" in messages[0][1]
    assert "no such table: tracking_events" in messages[0][1]
