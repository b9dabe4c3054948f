"""Settings, built in one place from the one definition of every variable (:mod:`.settings_spec`).

Every other module asks :func:`get_settings` instead of reading ``os.environ`` so that defaults, parsing and
the error for a missing secret live together. Which variables exist, how each is parsed, its default and its
documentation are declared in :mod:`worker.infrastructure.settings_spec`; this module turns those declarations
into the typed :class:`Settings` (and the receiver's :class:`ReceiverSettings`) and adds the checks that need
more than one variable or a library (database drivers, broker transports). Settings are cached; tests (and the
CLI, after it changes the environment) call :func:`reset_settings`.

Loading validates: a missing ``DATABASE_URL``, a URL of the wrong shape or for a driver that is not installed,
a broker URL no transport understands -- each is one :class:`~worker.errors.ConfigurationError` line naming the
variable, raised when the process starts rather than on the first email. There is no silent database default:
the embedded SQLite file (:func:`embedded_database_url`) is used only when ``DATABASE_URL`` names it, which
``mailworker dev`` (and so ``make run``) does for its children and publishes in ``var/dev.env``.

Secrets never appear in ``repr(settings)``: secret fields print as ``'***'`` and passwords inside URLs as
``user:***@host`` (:func:`mask_url`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache

from worker.errors import ConfigurationError
from worker.infrastructure import settings_spec as spec
from worker.infrastructure.paths import PROJECT_ROOT
from worker.infrastructure.settings_spec import DEFAULT_BROKER_URL, DEFAULT_SMTP2GO_API_URL, MASK, mask_url

DEFAULT_SQLITE_PATH = PROJECT_ROOT / "var" / "mailworker.db"
#: What a MySQL/MariaDB URL looks like (the driver that ships with mailworker, and the charset emoji need).
MYSQL_URL_EXAMPLE = "mysql+pymysql://USER:PASSWORD@HOST/mailworker?charset=utf8mb4"
_SUPPORTED_BACKENDS = ("mysql", "mariadb", "sqlite")

__all__ = ["DEFAULT_BROKER_URL", "DEFAULT_SMTP2GO_API_URL", "MASK", "PROJECT_ROOT", "ReceiverSettings", "Settings",
           "apply_dev_env", "check_api_url", "check_broker_url", "check_database_url", "embedded_database_url",
           "get_settings", "load_receiver_settings", "load_settings", "mask_url", "reset_settings"]


def embedded_database_url() -> str:
    """The embedded SQLite file under ``var/``: only ever used when DATABASE_URL names it explicitly."""
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def _missing_database_url() -> ConfigurationError:
    return ConfigurationError(
        f"DATABASE_URL is not set: point it at your database ({MYSQL_URL_EXAMPLE}), or set "
        f"DATABASE_URL={embedded_database_url()} for the embedded SQLite file "
        "(`mailworker dev` and `make run` do that for you)")


def check_database_url(value: str, name: str = "DATABASE_URL") -> str:
    """``value`` when it is a SQLAlchemy URL mailworker can use with an installed driver; else one line naming
    ``name`` and the problem (the password never appears in it)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = mask_url(value)
    examples = f"{MYSQL_URL_EXAMPLE} or sqlite:////absolute/path/mailworker.db"
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as err:
        raise ConfigurationError(f"{name}={shown!r} is not a database URL: expected {examples}") from err
    backend = url.get_backend_name()
    if backend not in _SUPPORTED_BACKENDS:
        raise ConfigurationError(f"{name}={shown!r}: {backend} is not supported; mailworker runs on "
                                 f"MySQL/MariaDB or SQLite: {examples}")
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except (NoSuchModuleError, ImportError) as err:
        if backend == "sqlite":
            raise ConfigurationError(f"{name}={shown!r}: unknown SQLite driver {url.drivername!r}; "
                                     "use sqlite:////absolute/path/mailworker.db") from err
        query = dict(url.query)
        query.setdefault("charset", "utf8mb4")
        suggestion = url.set(drivername="mysql+pymysql", query=query).render_as_string(hide_password=True)
        driver = url.drivername.partition("+")[2] or "default MySQLdb (mysqlclient)"
        raise ConfigurationError(f"{name}={shown!r}: the {driver} driver is not installed; use PyMySQL, which "
                                 f"mailworker ships with: {suggestion}") from err
    if backend in ("mysql", "mariadb") and not url.database:
        raise ConfigurationError(f"{name}={shown!r} names no database: expected {MYSQL_URL_EXAMPLE}")
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(f"{name}={shown!r} is an in-memory database, which no other process sees: "
                                 "use a file, sqlite:////absolute/path/mailworker.db")
    return value


def check_api_url(value: str, name: str = "SMTP2GO_API_URL") -> str:
    """``value`` when it is an absolute http(s) URL with a host (where ``/email/send`` is appended); else one
    line naming ``name`` and what was wrong (any password in it masked)."""
    from urllib.parse import urlsplit

    shown = mask_url(value)
    expected = f"expected an http(s) URL like {DEFAULT_SMTP2GO_API_URL}"
    try:
        split = urlsplit(value)
        split.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as err:
        raise ConfigurationError(f"{name}={shown!r} is not a usable URL ({err}): {expected}") from err
    if split.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"{name}={shown!r} is not an http(s) URL: {expected}")
    try:
        usable = bool(split.hostname and split.hostname.encode("idna")) and not any(c.isspace() for c in value)
    except UnicodeError:  # an empty or over-long label: no request could ever be made
        usable = False
    if not usable:
        raise ConfigurationError(f"{name}={shown!r} names no usable host: {expected}")
    return value


def check_broker_url(value: str, name: str = "CELERY_BROKER_URL") -> str:
    """``value`` when every URL in it (Celery allows a ``;``-separated failover list) has a transport kombu
    knows and, for Redis, a numeric port and database; else one line naming ``name``."""
    from kombu.transport import TRANSPORT_ALIASES

    shown = mask_url(value)
    example = "redis://HOST:6379/0"
    for part in (p.strip() for p in value.split(";")):
        scheme, sep, rest = part.partition("://")
        transport = scheme.partition("+")[0].lower()
        if not sep or not transport:
            raise ConfigurationError(f"{name}={shown!r} is not a broker URL: expected {example}")
        if transport not in TRANSPORT_ALIASES:
            raise ConfigurationError(f"{name}={shown!r}: unknown broker transport {scheme!r}; expected {example}")
        if transport in ("redis", "rediss"):
            from urllib.parse import urlsplit

            try:
                split = urlsplit(part)
                split.port  # noqa: B018 - raises ValueError on a port that is not a number
            except ValueError as err:
                raise ConfigurationError(f"{name}={shown!r}: the port is not a number; expected {example}") from err
            db = split.path.strip("/")
            if db and not db.isdigit():
                raise ConfigurationError(f"{name}={shown!r}: the Redis database {db!r} is not a number; "
                                         f"expected {example}")
    return value


#: Fields whose values are secrets: ``repr`` shows only whether they are set (the spec's ``secret`` flag).
SECRET_FIELDS = frozenset(s.field for s in spec.declared() if s.secret and s.field)
#: URL fields: ``repr`` masks the password inside them (the spec's ``url`` flag).
URL_FIELDS = frozenset(s.field for s in spec.declared() if s.url and s.field)


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the workers, the CLI and applications read from the environment: each field is filled by the
    setting declared with that ``field`` in :mod:`.settings_spec`. ``repr`` masks secrets and URL passwords."""

    database_url: str
    broker_url: str
    smtp2go_api_key: str | None = field(repr=False)
    smtp2go_api_url: str
    smtp2go_webhook_secrets: tuple[str, ...] = field(repr=False)
    allow_unauthenticated_webhooks: bool
    smtp_host: str | None
    smtp_port: int
    smtp_username: str | None
    smtp_password: str | None = field(repr=False)
    smtp_security: str
    smtp_timeout: float
    smtp_ca_file: str | None
    mail_default_sender: str | None
    settings_encryption_keys: tuple[str, ...] = field(repr=False)
    send_max_retries: int
    smtp_max_retries: int
    send_retry_backoff: float
    send_retry_backoff_max: float
    smtp2go_timeout: float
    smtp2go_connect_timeout: float
    smtp2go_ca_file: str | None
    smtp2go_rate_limit: float
    smtp2go_breaker_threshold: int
    smtp2go_breaker_window: float
    smtp2go_breaker_cooldown: float
    send_lease_seconds: int
    max_task_crashes: int
    smtp_unknown_resend_after: float
    reconcile_resend_after: float
    module_cache_seconds: float
    db_pool_size: int
    webhook_max_body_bytes: int
    sweep_interval: float
    sweep_republish_after: float
    retention_days: int
    #: Status callbacks: the total deadline of one HTTP attempt, the Python hook's time limit, and the address
    #: ranges callback URLs may reach besides public addresses.
    callback_timeout: float = 10.0
    callback_hook_timeout: float = 10.0
    callback_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: The spam complaint rate (7 days) at or above which the sweeper warns and the console turns red.
    complaint_rate_threshold: float = 0.003
    #: Emails one ``mailworker.send_batch`` task claims and sends together (BULK_BATCH_SIZE).
    bulk_batch_size: int = 100

    def __repr__(self) -> str:
        return spec.masked_repr(self)

    __str__ = __repr__

    def worst_case_attempt_seconds(self) -> float:
        """The longest one transport call can take: the API's connect + read timeouts, or an SMTP exchange
        (connect, EHLO/STARTTLS/AUTH, envelope, DATA: each socket operation bounded by ``SMTP_TIMEOUT``; four
        of them waiting their full timeout is the worst we plan for)."""
        return max(self.smtp2go_connect_timeout + self.smtp2go_timeout, 4 * self.smtp_timeout)

    def validate(self) -> None:
        """Refuse settings under which the send path cannot keep its promise (checked at start-up)."""
        needed = self.worst_case_attempt_seconds() * 1.1 + 2  # + the database writes around the call
        if self.send_lease_seconds < needed:
            raise ConfigurationError(
                f"SEND_LEASE_SECONDS={self.send_lease_seconds} is shorter than the worst-case send attempt "
                f"(needs {needed:.0f}s: SMTP2GO_CONNECT_TIMEOUT + SMTP2GO_TIMEOUT, or 4 x SMTP_TIMEOUT, plus 10%): "
                "a second worker could take over a message that is still being sent")
        if self.smtp_unknown_resend_after < 0 or self.reconcile_resend_after < 0:
            raise ConfigurationError("SMTP_UNKNOWN_RESEND_AFTER and RECONCILE_RESEND_AFTER must not be negative")

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)

    def require_encryption_keys(self) -> tuple[str, ...]:
        """The settings-encryption keys, or a loud error naming the variable."""
        if not self.settings_encryption_keys:
            raise ConfigurationError(
                "SETTINGS_ENCRYPTION_KEY is not set: it is needed to store module settings encrypted "
                "(generate one with `mailworker module keygen`)"
            )
        return self.settings_encryption_keys


def apply_dev_env() -> None:
    """Let ``mailworker`` in another shell use a running ``mailworker dev`` (it writes ``var/dev.env``).

    Only on the embedded default (no DATABASE_URL), and the real environment always wins. It runs before
    ``celeryconfig`` is imported (``worker/__init__.py``), because Celery reads the broker URL at import time.
    """
    if spec.raw("DATABASE_URL"):
        return
    from worker.infrastructure.devenv import load_dev_env

    for key, value in load_dev_env().items():
        os.environ.setdefault(key, value)


def _broker_url() -> str:
    """``CELERY_BROKER_URL``, else ``REDIS_URL``, else the default; checked, with errors naming the variable."""
    name, url = spec.broker_url()
    return check_broker_url(url, name) if name else url


@dataclass(frozen=True, repr=False)
class ReceiverSettings:
    """What the public webhook receiver (``webhook_app``, the Procfile's ``web``) reads: the broker it publishes
    to and how it authenticates webhooks. It needs no database: ``DATABASE_URL`` is optional here, and when set
    it is used only to refresh the SMTP2Go module's webhook secret in the background. ``repr`` masks secrets."""

    broker_url: str
    smtp2go_webhook_secrets: tuple[str, ...]
    allow_unauthenticated_webhooks: bool
    webhook_max_body_bytes: int
    database_url: str | None

    def __repr__(self) -> str:
        return spec.masked_repr(self)

    __str__ = __repr__


def load_receiver_settings() -> ReceiverSettings:
    """Read the receiver's settings now (uncached) and validate them; a missing ``DATABASE_URL`` is fine, a bad
    one is the same one-line error as everywhere else."""
    values = spec.read_fields(f.name for f in fields(ReceiverSettings))
    values["broker_url"] = _broker_url()
    if values["database_url"] is not None:
        check_database_url(values["database_url"])
    return ReceiverSettings(**values)


def load_settings() -> Settings:
    """Read the environment now (uncached) and validate it."""
    apply_dev_env()
    if spec.raw("DATABASE_URL") is None:
        raise _missing_database_url()
    values = spec.read_fields(f.name for f in fields(Settings))
    check_database_url(values["database_url"])
    values["broker_url"] = _broker_url()
    values["smtp2go_api_url"] = check_api_url(values["smtp2go_api_url"].rstrip("/"))
    if values["smtp_port"] is None:
        values["smtp_port"] = 465 if values["smtp_security"] == "ssl" else 587
    settings = Settings(**values)
    settings.validate()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached)."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings so the next :func:`get_settings` re-reads the environment."""
    get_settings.cache_clear()
