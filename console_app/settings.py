"""The console's configuration, read from the environment once at start-up."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


class ConsoleConfigError(RuntimeError):
    """The console cannot start (one line, shown as is)."""


@dataclass(frozen=True)
class ConsoleSettings:
    username: str
    password: str
    #: Signs CSRF tokens: ``CONSOLE_SECRET_KEY``, else derived from the credentials (the same in every worker).
    secret_key: bytes
    metrics_public: bool
    #: Overview warning thresholds (fractions 0..1 of sent mail).
    warn_delivery_below: float
    warn_bounce_above: float
    warn_spam_above: float
    #: Age (seconds) of the oldest waiting email past which the overview warns.
    warn_oldest_queued_seconds: float
    page_size: int


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConsoleConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _float(name: str) -> tuple[float, str] | None:
    """The variable as a number, with its raw text for messages; None when it is unset or blank."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw), raw
    except ValueError:
        raise ConsoleConfigError(f"{name}={raw!r} is not a number") from None


def _fraction(name: str, default: float) -> float:
    parsed = _float(name)
    if parsed is None:
        return default
    value, raw = parsed
    if value > 1:  # "5" means 5 %
        value /= 100
    if not 0 <= value <= 1:
        raise ConsoleConfigError(f"{name}={raw!r} must be between 0 and 1 (or a percentage)")
    return value


def _number(name: str, default: float) -> float:
    parsed = _float(name)
    if parsed is None:
        return default
    value, raw = parsed
    if value <= 0:
        raise ConsoleConfigError(f"{name}={raw!r} must be positive")
    return value


def parse_basic_auth(raw: str | None) -> tuple[str, str]:
    if raw is None or not raw.strip():
        raise ConsoleConfigError("CONSOLE_BASIC_AUTH is not set: the console refuses to start without "
                                 "CONSOLE_BASIC_AUTH=user:password")
    user, sep, password = raw.strip().partition(":")
    if not sep or not user or not password:
        raise ConsoleConfigError("CONSOLE_BASIC_AUTH must be user:password (both non-empty)")
    return user, password


def load_console_settings(*, basic_auth: str | None = None, metrics_public: bool | None = None) -> ConsoleSettings:
    user, password = parse_basic_auth(basic_auth if basic_auth is not None else os.environ.get("CONSOLE_BASIC_AUTH"))
    explicit = os.environ.get("CONSOLE_SECRET_KEY", "").strip()
    secret = (explicit.encode() if explicit
              else hashlib.sha256(b"mailworker-console-csrf\0" + f"{user}:{password}".encode()).digest())
    return ConsoleSettings(
        username=user,
        password=password,
        secret_key=secret,
        metrics_public=_bool("METRICS_PUBLIC", False) if metrics_public is None else metrics_public,
        warn_delivery_below=_fraction("CONSOLE_WARN_DELIVERY_BELOW", 0.95),
        warn_bounce_above=_fraction("CONSOLE_WARN_BOUNCE_ABOVE", 0.05),
        warn_spam_above=_fraction("CONSOLE_WARN_SPAM_ABOVE", 0.001),
        warn_oldest_queued_seconds=_number("CONSOLE_WARN_OLDEST_QUEUED_SECONDS", 600),
        page_size=int(_number("CONSOLE_PAGE_SIZE", 50)),
    )
