"""What every ``mailworker`` command shares: one-line errors, JSON or text output, durations and times."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.errors import MailworkerError

F = TypeVar("F", bound=Callable[..., Any])


#: C0 controls but tab and newline, DEL and the C1 controls: a terminal acts on them (ESC starts a sequence that can
#: retitle the window, erase the screen or write the clipboard; 0x9b is a one-byte CSI), so none reaches it.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` as a terminal may show it: control characters (C0 but newline and tab, DEL, C1) removed.

    Everything the CLI prints that it did not write itself (bounce text from remote mail servers, event details,
    errors, subjects, addresses, references) passes through here; the readable text around them stays.
    """
    return _CONTROLS.sub("", str(text))


def one_line(text: object) -> str:
    """Collapse a message to one line (a driver's multi-line text included), without control characters."""
    return " ".join(printable(text).split())


def _database_url_for_errors() -> str:
    raw = (os.environ.get("DATABASE_URL") or "").strip()
    return repr(mask_url(raw)) if raw else "(unset: the embedded SQLite default)"


def mask_url(url: str) -> str:
    """``url`` with its password masked (``***``); unchanged when it has none; host part only if unparsable."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show no credentials at all
        return url.rpartition("@")[2]
    return parsed.render_as_string(hide_password=True) if parsed.password else url


#: Python modules SQLAlchemy imports for a URL's driver; a missing one is a DATABASE_URL problem.
_DB_DRIVERS = {"MySQLdb": "mysql+pymysql://", "pymysql": "mysql+pymysql://", "psycopg2": "postgresql+psycopg://",
               "psycopg": "postgresql+psycopg://", "asyncpg": None, "aiomysql": None, "mysql": "mysql+pymysql://",
               "pysqlite2": None, "cx_Oracle": None, "oracledb": None, "pyodbc": None, "pymssql": None}


def explain(err: BaseException) -> str | None:
    """The one line a user reads for an expected error, or None when the error is a bug (keep its traceback)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    if isinstance(err, (MailworkerError, ValueError)):
        return one_line(err) or type(err).__name__
    if isinstance(err, NoSuchModuleError):
        return (f"DATABASE_URL {_database_url_for_errors()} names a database this install cannot use "
                f"({one_line(err)}); use sqlite:///path or mysql+pymysql://user:pw@host/db")
    if isinstance(err, ArgumentError):
        return (f"DATABASE_URL {_database_url_for_errors()} is not a database URL ({one_line(err)}); "
                "use sqlite:///path or mysql+pymysql://user:pw@host/db")
    if isinstance(err, ImportError) and (err.name or "").split(".")[0] in _DB_DRIVERS:
        driver = (err.name or "").split(".")[0]
        hint = _DB_DRIVERS[driver]
        return (f"DATABASE_URL {_database_url_for_errors()} needs the Python driver {driver!r}, which is not "
                "installed" + (f"; name an installed driver in the URL, e.g. {hint}..." if hint else ""))
    if isinstance(err, DBAPIError):
        detail = one_line(err.orig)[:200] if err.orig is not None else ""
        return (f"database error ({type(err.orig).__name__}: {detail}) at DATABASE_URL "
                f"{_database_url_for_errors()}: is DATABASE_URL right, the database up and "
                "`mailworker db upgrade` done?")
    return None


class FlagError(click.ClickException):
    """A mistake on the command line itself (a flag missing, empty or wrong), found by the command rather than
    by click's parser: one line naming the flag, exit code 2 like click's own usage errors."""

    exit_code = 2


class JsonError(click.ClickException):
    """An error of a ``--json`` command: printed as ``{"error": "..."}`` on stdout, so that stdout holds JSON
    whatever happens (the ``note:`` lines stay text on stderr); the exit code is the original error's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # a class default in click; per error here

    def show(self, file: Any = None) -> None:
        click.echo(json.dumps({"error": self.message}, ensure_ascii=True), file=file)


def wants_json(args: list[str]) -> bool:
    """Whether a command line asks for JSON (``--json`` before any ``--``): decided on the raw arguments, so a
    command line that does not even parse answers in JSON too."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def as_json_error(err: click.ClickException) -> JsonError:
    """``err`` as the JSON object a ``--json`` caller reads (usage errors included, without the usage text)."""
    if isinstance(err, JsonError):
        return err
    return JsonError(one_line(err.format_message()), err.exit_code)


def _is_usage_error(err: BaseException) -> bool:
    return isinstance(err, (click.UsageError, FlagError)) or (
        isinstance(err, JsonError) and isinstance(err.__cause__, (click.UsageError, FlagError)))


def one_line_errors(func: F) -> F:
    """Turn expected errors (configuration, bad input, an unusable or unreachable database) into one line on
    stderr and exit code 1: never a traceback for a mistake the user can fix."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException as err:  # its message may quote stored or remote text
            err.message = printable(err.message)  # type: ignore[misc]  # typed Final; a plain attribute at runtime
            raise
        except Exception as err:  # noqa: BLE001 - explain() decides; anything else re-raises unchanged
            message = explain(err)
            if message is None:
                raise
            raise click.ClickException(message) from err

    return wrapper  # type: ignore[return-value]


_NOTES_SHOWN = "mailworker.stack_notes_shown"


def use_stack() -> None:
    """Say which stack (database and broker) the running command talks to: once per invocation, on stderr.

    A command calls this just before it first uses the settings (database, broker), after checking its own
    flags: ``--help`` and a usage error print no note. :func:`friendly_errors` calls it too when a command
    finished (or failed other than on its usage) without calling it.
    """
    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else {}
    if meta.get(_NOTES_SHOWN):
        return
    meta[_NOTES_SHOWN] = True
    for note in stack_notes():
        click.echo(f"note: {printable(note)}", err=True)


def friendly_errors(func: F) -> F:
    """For commands that use the database or broker: say which stack they talk to (:func:`use_stack`: one line
    on stderr when it is not the obvious one, never for a usage error), and run with :func:`one_line_errors`."""
    inner = one_line_errors(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = inner(*args, **kwargs)
        except click.exceptions.Exit:  # an exit code the command chose (e.g. Ctrl-C): nothing to add
            raise
        except BaseException as err:
            if not _is_usage_error(err) and not isinstance(err, KeyboardInterrupt):
                use_stack()
            raise
        use_stack()
        return result

    return wrapper  # type: ignore[return-value]


def stack_notes(environ: Mapping[str, str] | None = None) -> list[str]:
    """Which stack a command talks to, said once on stderr when it is not what the user set explicitly.

    - a running ``mailworker dev`` (``var/dev.env``) and no DATABASE_URL: its database and broker are used;
    - DATABASE_URL set while a dev stack runs: the whole ``var/dev.env`` is ignored (say so, or the broker and
      the API silently fall back to their defaults); another explicit setting overrides just its own value;
    - no dev stack and no DATABASE_URL: say that no dev stack runs (settings then ask for DATABASE_URL).
    ``MAILWORKER_QUIET=1`` silences these notes.
    """
    from worker.infrastructure.config import DEFAULT_BROKER_URL
    from worker.infrastructure.devenv import dev_env_path, load_dev_env

    env = os.environ if environ is None else environ
    if env.get("MAILWORKER_QUIET", "").strip().lower() in {"1", "true", "yes", "on"}:
        return []
    path = dev_env_path()
    dev = load_dev_env(path)
    shown = _shown_path(path)
    user_db = (env.get("DATABASE_URL") or "").strip()
    user_broker = (env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or "").strip()
    if dev:
        dev_db, dev_broker = dev.get("DATABASE_URL", ""), dev.get("CELERY_BROKER_URL", "")
        if user_db and user_db != dev_db:
            broker = user_broker or DEFAULT_BROKER_URL
            return [f"DATABASE_URL is set in your environment: {shown}'s dev stack is ignored "
                    f"(using database {mask_url(user_db)}, broker {mask_url(broker)}"
                    f"{'' if user_broker else ' (the default)'}); unset DATABASE_URL to use the dev stack"]
        notes = [f"using the dev stack from {shown} (broker {mask_url(user_broker or dev_broker)}, "
                 f"database {mask_url(dev_db)})"]
        for key, value in dev.items():
            mine = (env.get(key) or "").strip()
            if mine and mine != value:
                notes.append(f"{key} is set in your environment: {shown}'s value is ignored")
        return notes
    if not user_db:  # settings loading then says that DATABASE_URL is needed; say why it is not there
        return [f"no dev stack is running ({shown} is absent or stale), so nothing sets DATABASE_URL"]
    return []


def _shown_path(path: Path) -> str:
    from worker.infrastructure.paths import PROJECT_ROOT

    for base in (Path.cwd(), PROJECT_ROOT):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON or as ``render`` writes it. JSON escapes every control character itself
    (``ensure_ascii``: \\u001b, \\u007f, \\u009b); the text form goes through :func:`printable`, since it quotes
    stored text (bounces, errors, subjects, addresses) as received."""
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=True) if as_json else printable(render(data)))


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s`` -> timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "w": "weeks"}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise click.BadParameter(f"{text!r} is not a duration like 90d, 12h, 30m")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def parse_when(text: str | None) -> datetime | None:
    """An ISO date/time (UTC when no zone) or a duration ago (``7d``)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except click.BadParameter:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is neither an ISO date nor a duration like 7d") from err
    return value if value.tzinfo else value.replace(tzinfo=UTC)
