"""Which database errors are an outage worth waiting out, and which are a bug or a missing migration.

A task that retries every ``DBAPIError`` hides a deploy without ``mailworker db upgrade``: an unknown column
retries forever under a "database unavailable" warning. Only errors that go away by themselves are retried:
the server unreachable or the connection lost (SQLAlchemy marks these ``connection_invalidated``; MariaDB client
codes 2002/2003/2006/2013/2055), the server shutting down or out of connections, a lock wait timeout (1205) or
a deadlock (1213), and SQLite's "database is locked". Everything else (an unknown column 1054, a missing table
1146, a syntax error, an integrity error) is a fault in the code or the schema and must fail loudly at once.

Pure functions over exception objects: no connection is needed to classify, so the rules are unit-tested by
constructing the exceptions by hand.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

#: MariaDB/MySQL error numbers that describe an outage, not a fault: retry after a pause.
TRANSIENT_MYSQL_CODES = frozenset({
    1040,  # ER_CON_COUNT_ERROR: too many connections
    1053,  # ER_SERVER_SHUTDOWN: server shutdown in progress
    1205,  # ER_LOCK_WAIT_TIMEOUT
    1213,  # ER_LOCK_DEADLOCK
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2002,  # CR_CONNECTION_ERROR: can't connect through the socket
    2003,  # CR_CONN_HOST_ERROR: can't connect (refused, unreachable)
    2006,  # CR_SERVER_GONE_ERROR: server has gone away
    2013,  # CR_SERVER_LOST: lost connection during query
    2055,  # CR_SERVER_LOST_EXTENDED: lost connection at a given stage
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT: disconnected for inactivity (MySQL 8)
})
#: MariaDB/MySQL error numbers that say the schema is older than the code: a migration was not applied.
SCHEMA_MYSQL_CODES = frozenset({
    1054,  # ER_BAD_FIELD_ERROR: unknown column
    1146,  # ER_NO_SUCH_TABLE
})
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY ("database is locked"), SQLITE_LOCKED ("table is locked")
_SQLITE_BUSY_TEXT = ("database is locked", "database table is locked", "database is busy")
_SQLITE_SCHEMA_TEXT = ("no such column", "no such table", "has no column named")

UPGRADE_HINT = "database schema out of date? run `mailworker db upgrade`"


def _driver_error(err: BaseException) -> BaseException:
    """The DBAPI's own exception under SQLAlchemy's wrapper (or ``err`` itself when it is not wrapped)."""
    if isinstance(err, sa_exc.DBAPIError) and err.orig is not None:
        return err.orig
    return err


def error_code(err: BaseException) -> int | None:
    """The server's (or SQLite's) numeric error code, when the driver gives one."""
    orig = _driver_error(err)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF  # extended codes (e.g. SQLITE_BUSY_SNAPSHOT) carry the primary code in the low byte
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def _is_sqlite(err: BaseException) -> bool:
    return isinstance(_driver_error(err), sqlite3.Error)


def is_transient(err: BaseException) -> bool:
    """True when waiting and trying again can succeed: the database is unreachable, restarting or busy."""
    if isinstance(err, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True  # a pool-level disconnect, or no pooled connection free within pool_timeout
    if not isinstance(err, sa_exc.DBAPIError):
        return False
    if err.connection_invalidated:
        return True  # SQLAlchemy's dialect recognised a disconnect and discarded the connection
    code = error_code(err)
    if _is_sqlite(err):
        text = str(_driver_error(err)).lower()
        return code in _SQLITE_BUSY_CODES or any(t in text for t in _SQLITE_BUSY_TEXT)
    return code in TRANSIENT_MYSQL_CODES


def is_schema_error(err: BaseException) -> bool:
    """True when the error says a column or table the code uses does not exist: a migration is missing."""
    if not isinstance(err, sa_exc.DBAPIError):
        return False
    if _is_sqlite(err):
        text = str(_driver_error(err)).lower()
        return any(t in text for t in _SQLITE_SCHEMA_TEXT)
    return error_code(err) in SCHEMA_MYSQL_CODES


def describe(err: BaseException) -> str:
    """One line naming the driver's error class, its code and its message, never the SQL or its parameters
    (SQLAlchemy's own ``str()`` includes both, and parameters hold addresses and bodies)."""
    orig = _driver_error(err)
    code = error_code(err)
    args: tuple[object, ...] = getattr(orig, "args", ())
    message = args[1] if len(args) > 1 and isinstance(args[0], int) else (args[0] if args else "")
    text = " ".join(str(message).split())[:300]
    head = type(orig).__name__ + (f" {code}" if code is not None else "")
    return f"{head}: {text}" if text else head
