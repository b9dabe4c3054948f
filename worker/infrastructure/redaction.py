"""Keep secrets out of logs.

A logging filter on every handler replaces (a) the exact secret values mailworker knows (API key, SMTP
password, webhook secrets, encryption keys, passwords inside broker/database URLs) and (b) anything that looks
like a credential (``Authorization: Bearer ...``, a token after ``Bearer``, ``X-Smtp2go-Api-Key: ...``,
``api-XXXXXXXX`` keys, ``password=``/``api_key=``/``secret=`` assignments, ``user:password@`` in URLs) with
``[REDACTED]``. It must not eat ordinary words: ``auth=bearer type=text/xml`` (the receiver's own log line for
a 415) keeps its content type, because a ``name=value`` pair or a plain word after "bearer" is not a token.
It is installed by the Celery worker, the webhook app and the CLI, so every process mailworker starts redacts
the same way.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import make_url

REDACTED = "[REDACTED]"
#: Not a credential: ``name=value`` where value goes on (``type=application/xml``). Base64 padding (``abc==``)
#: ends a token, so a real token is never mistaken for one.
_NOT_KEY_VALUE = r"(?![A-Za-z_][\w.-]*=[^=\s'\",}])"
_PATTERNS = [
    # An Authorization header's credentials, whatever they look like.
    (re.compile(r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic)\s+)" + _NOT_KEY_VALUE
                + r"[^\s'\",}]+"), r"\1" + REDACTED),
    # A bearer token anywhere else: something token-shaped -- with a digit, or 20+ characters -- and not an
    # ordinary word or the next key=value of a log line (``auth=bearer type=text/xml`` keeps its type).
    (re.compile(r"(?i)(\bbearer\s+)" + _NOT_KEY_VALUE + r"(?=[A-Za-z._~+/-]*\d|[A-Za-z0-9._~+/-]{20})"
                r"[A-Za-z0-9._~+/-]{8,}=*(?![\w=./+~-])"), r"\1" + REDACTED),
    (re.compile(r"(?i)(x-smtp2go-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + REDACTED),
    # Assignments of secrets: password=..., "api_key": "...", SMTP_PASSWORD=..., client_secret=...
    (re.compile(r"(?i)((?<![A-Za-z0-9])['\"]?(?:api[_-]?key|password|passwd|secret)['\"]?\s*[:=]\s*['\"]?)"
                r"[^\s'\",}]+"), r"\1" + REDACTED),
    (re.compile(r"\bapi-[A-Za-z0-9]{16,}\b"), "api-" + REDACTED),
    (re.compile(r"(\w+://[^:/@\s]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
]
#: Text each pattern above needs (case-insensitively) to match at all: a log line with none of them -- nearly
#: every line -- skips the substitutions (the filter runs on every record; it showed in the profile).
_TRIGGER = re.compile(r"(?i)authorization|bearer|x-smtp2go-api-key|api_key|api-key|apikey|passw|secret|api-|://")


def _current_secrets() -> frozenset[str]:
    """Secret values from the current settings (never empty strings, never very short ones).

    Computed once per settings object: the filter runs on every log record, and parsing two URLs each time
    showed up in the worker's profile.
    """
    from worker.infrastructure.config import get_settings

    try:
        s = get_settings()
    except Exception:  # noqa: BLE001 - redaction must never break logging
        return frozenset()
    return _secrets_of(s)


@lru_cache(maxsize=8)
def _secrets_of(s: Any) -> frozenset[str]:
    values = {s.smtp2go_api_key, s.smtp_password, *s.smtp2go_webhook_secrets, *s.settings_encryption_keys}
    for url in (s.database_url, s.broker_url):
        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001
            password = None
        values.add(str(password) if password else None)
    return frozenset(v for v in values if v and len(v) >= 4)


def redact(text: str, secrets: set[str] | frozenset[str] | None = None) -> str:
    for secret in _longest_first(frozenset(secrets) if secrets is not None else _current_secrets()):
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _TRIGGER.search(text):
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
    return text


@lru_cache(maxsize=32)
def _longest_first(secrets: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(secrets, key=len, reverse=True))  # a secret containing another is replaced whole


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message (and exception text) with secrets removed."""

    def __init__(self, extra_secrets: set[str] | None = None) -> None:
        super().__init__()
        self.extra = extra_secrets or set()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _current_secrets() | self.extra if self.extra else _current_secrets()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        record.msg = redact(message, secrets)
        record.args = None
        if record.exc_info:
            import traceback

            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)), secrets)
            record.exc_info = None
        return True


def install(logger: logging.Logger | None = None, level: int | str = logging.INFO, **_: Any) -> None:
    """Add the filter to every handler of ``logger`` (root by default) that lacks one.

    A logger with no handler at all first gets a plain stderr one at ``level``.
    """
    target = logger or logging.getLogger()
    if not target.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
