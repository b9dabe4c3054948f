"""Engine and session handling.

One engine per database URL per process (cached), created lazily so that importing ``worker`` never connects.
SQLite gets WAL and a busy timeout so the worker, beat and the CLI can share the embedded file.

SQLite transactions follow SQLAlchemy's documented pysqlite recipe ("Enabling Non-Legacy SQLite Transactional
Modes", sqlalchemy.dialects.sqlite): the driver is put in autocommit (``isolation_level = None``) so it never
issues BEGIN/COMMIT on its own, and the engine's ``begin`` event emits ``BEGIN IMMEDIATE``. Why: in its legacy
mode pysqlite opens no transaction before the first INSERT/UPDATE/DELETE, and SQLite ignores ``FOR UPDATE``, so
a "locking read" ran outside any transaction; two event workers could both read ``open_count = n`` and both
write ``n + 1`` (a lost update). Alembic's DDL also becomes transactional (a failed migration rolls back).

Every transaction is IMMEDIATE, readers included: a transaction takes SQLite's single write lock at its start,
so two read-then-write transactions serialize at BEGIN (waiting up to ``busy_timeout``) instead of the second
failing with "database is locked" when it tries to upgrade a stale read snapshot, which a deferred BEGIN would
do. We cannot tell at BEGIN whether a transaction will write, and the cost of treating every one as a writer
is small here: transactions are short, and no network call is made while one is open (the send path commits
its in-flight mark before calling a provider; keep it that way on SQLite or every other writer waits for the
provider). What we give up is WAL's "readers run beside the writer"; the embedded default is for small
installations and the dev stack, MariaDB is the backend for concurrency. One consequence to know: a thread that
holds a transaction and opens a second connection to the same file waits on itself until busy_timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from worker.infrastructure.config import get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}

#: Connections a process keeps pooled when ``DB_POOL_SIZE`` is not set: a thread-pool worker raises it to its
#: thread count (:func:`size_pool_for`), since every thread holds one connection through its whole send.
_DEFAULT_POOL_SIZE = 10
_pool_size = _DEFAULT_POOL_SIZE


#: How long a SQLite connection waits for the write lock (``BEGIN IMMEDIATE``) before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Per connection: hand transaction control to SQLAlchemy (see the module docstring), WAL, waits, FKs."""
    dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own; _sqlite_begin does
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    """Start every SQLite transaction as a writer, so its reads and writes are one serializable unit."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def build_engine(url: str) -> Engine:
    """Create an engine with the options each backend needs."""
    parsed = make_url(url)
    # hide_parameters: a failed statement's message (logged, stored in task results) never carries its values,
    # which include bodies, addresses and encrypted settings.
    kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() in {"mysql", "mariadb"}:
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        parsed = parsed.set(query=query)
        # No pre-ping and no pool reset: the send path checks out one connection per delivery and always ends
        # its transaction (SQLAlchemy's Connection rolls back whatever is left open when it is closed), so a
        # ping and a ROLLBACK per checkout were two of the 19 round trips the benchmark counted per email
        # (docs/benchmarks.md). A connection that died meanwhile (server restart) fails its first statement
        # with a disconnect error: SQLAlchemy invalidates the pool and the task retries (worker.tasks).
        # pool_recycle stays well under MariaDB's wait_timeout (8 h) so idle connections are renewed first.
        # The pool holds as many connections as the process has threads sending. Smaller, the threads beyond it
        # wait for a connection (a hung API call holds one for the whole timeout) and the overflow above
        # pool_size is opened and closed again around sends: a TCP + MariaDB handshake each time.
        pool_size = get_settings().db_pool_size or _pool_size
        kwargs.update(
            pool_pre_ping=False,
            pool_reset_on_return=None,
            pool_recycle=1800,
            pool_size=pool_size,
            max_overflow=max(10, pool_size // 2),
            isolation_level="READ COMMITTED",
            connect_args={"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60},
        )
    return create_engine(parsed, **kwargs)


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = build_engine(url)
            _factories[url] = sessionmaker(bind=engine, expire_on_commit=False)
        return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().database_url
    get_engine(url)
    return _factories[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def size_pool_for(threads: int) -> None:
    """Pool enough connections for ``threads`` concurrent senders (engines built later use it).

    Called when a thread-pool worker starts; ``DB_POOL_SIZE`` overrides it. Engines that already exist are
    disposed so the next use builds one with the new size.
    """
    global _pool_size
    size = max(_DEFAULT_POOL_SIZE, int(threads) + 2)  # + the sweeper/reconciler and a spare
    if size != _pool_size:
        _pool_size = size
        dispose_engines()


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()
