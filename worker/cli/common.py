"""What every ``mailworker`` command shares: one-line errors, JSON or text output, durations and times."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from worker.errors import MailworkerError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn expected errors into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return func(*args, **kwargs)
        except (MailworkerError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        except (OperationalError, ProgrammingError) as err:
            raise click.ClickException(
                f"database error ({type(err.orig).__name__}): is DATABASE_URL right and "
                "`mailworker db upgrade` done?"
            ) from err

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else render(data))


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
