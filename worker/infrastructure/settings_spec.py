"""The one definition of every environment variable mailworker reads: name, parser, default, meaning, section,
whether it is a secret, and which processes read it.

Everything that reads the environment goes through here: :mod:`worker.infrastructure.config` builds
``Settings`` and ``ReceiverSettings`` from these declarations, ``console_app.settings`` the console's settings,
and the modules the process managers import before any of our code runs (``celeryconfig``, which Celery loads,
and ``webhook_app.gunicorn_conf``, which gunicorn loads in its master) call :func:`read`. docs/configuration.md
is generated from the same list (``python -m worker.infrastructure.settings_doc``).

This module imports nothing but the standard library and :mod:`worker.errors`, so the import-time readers stay
light. A bad value is one :class:`~worker.errors.ConfigurationError` line naming the variable; a secret's value
never appears in an error or a ``repr`` (:func:`masked_repr`).

Extending it: a package that brings settings of its own (a provider under ``worker/providers/<name>/``) puts
them in a ``settings`` module of its own that calls :func:`declare_section` and :func:`declare` when imported,
and reads them with :func:`read` like everything else. :func:`declared` with ``discover=True`` (the document
generator and the tests use it) imports every ``<package>.<name>.settings`` module under
:data:`EXTENSION_PACKAGES`, so such settings are documented and checked without being listed here.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import os
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigurationError

MASK = "***"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SMTP2GO_API_URL = "https://api.smtp2go.com/v3"
#: Packages whose sub-packages may declare settings in a ``settings`` module (see the module docstring).
EXTENSION_PACKAGES = ("worker.providers",)

#: A parser gets the variable's name and its text (stripped, never empty) and returns the value, or raises
#: ConfigurationError with one line naming the variable.
Parser = Callable[[str, str], Any]


# ------------------------------------------------------------------------------------------------ parsers


def text(name: str, raw: str) -> str:
    return raw


def csv(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated values, blanks dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def boolean(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def integer(minimum: int | None = None, at_least: int | None = None) -> Parser:
    """A whole number; below ``minimum`` is an error, below ``at_least`` is raised to it."""

    def parse(name: str, raw: str) -> int:
        bound = f" ({minimum} or more)" if minimum is not None else ""
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a whole number{bound}, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{name} must be a whole number{bound}, got {raw!r}")
        return value if at_least is None else max(at_least, value)

    return parse


def number(at_least: float | None = None) -> Parser:
    """A number; below ``at_least`` is raised to it."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
        return value if at_least is None else max(at_least, value)

    return parse


def positive(name: str, raw: str) -> float:
    """A finite number above 0 (a time limit, a window)."""
    value = number()(name, raw)
    if not 0 < value < float("inf"):
        raise ConfigurationError(f"{name} must be positive (a number above 0), got {raw!r}")
    return value


def fraction(name: str, raw: str) -> float:
    """A fraction 0..1; a value above 1 is a percentage (``5`` means 0.05)."""
    value = number()(name, raw)
    if value > 1:
        value /= 100
    if not 0 <= value <= 1:
        raise ConfigurationError(f"{name} must be between 0 and 1 (or a percentage), got {raw!r}")
    return value


def batch_size(name: str, raw: str) -> int:
    """A batch size: a whole number from 1 to 1000 (SMTP2Go's ``/email/batch`` limit)."""
    value = integer(minimum=1)(name, raw)
    if value > 1000:
        raise ConfigurationError(f"{name} must be at most 1000 (SMTP2Go's batch limit), got {raw!r}")
    return value


def numbers(name: str, raw: str) -> tuple[float, ...]:
    """Comma-separated non-negative numbers."""
    out = []
    for part in csv(name, raw):
        try:
            value = float(part)
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):
            raise ConfigurationError(f"{name}: {part!r} is not a number of seconds; expected e.g. 5,300,1800")
        out.append(value)
    return tuple(out)


def choice(*options: str) -> Parser:
    """One of ``options`` (case-insensitive)."""

    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in options:
            listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
            raise ConfigurationError(f"{name} must be {listed}, got {value!r}")
        return value

    return parse


def networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (``10.0.0.0/8,fd00::/8``; a bare address is one host)."""
    out = []
    for part in csv(name, raw):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigurationError(f"{name}: {part!r} is not a network; expected comma-separated CIDRs like "
                                     "10.0.0.0/8,fd00::/8") from None
    return tuple(out)


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) origin or URL, the port made explicit; None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"} or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated http(s) origins (``https://host`` or ``https://host:port``, no path)."""
    found: list[str] = []
    for item in csv(name, raw):
        value = item.rstrip("/")
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if parts is None or origin_of(value) is None or parts.path or parts.query or parts.fragment \
                or parts.username:
            raise ConfigurationError(f"{name}: {item!r} is not an origin (https://host or https://host:port)")
        found.append(value)
    return tuple(found)


def mask_url(url: str) -> str:
    """``scheme://user:***@host/...``: the URL with its password (if it has one) masked; anything else as is.

    Also safe on strings that are not valid URLs (error messages quote them): a password with an unencoded
    ``/``, ``?`` or ``#`` is hidden up to the last ``@``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end) if "@" in rest[:end] else rest.rfind("@")
    user, colon, password = rest[:at].partition(":")
    if not colon or not password:
        return url
    return f"{scheme}://{user}:{MASK}{rest[at:]}"


# ------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Section:
    """A group of settings: one table in docs/configuration.md, in declaration order, under ``title``."""

    key: str
    title: str
    intro: str = ""


@dataclass(frozen=True)
class Setting:
    """One environment variable.

    ``field``: the attribute it fills in a settings object (``Settings``, ``ReceiverSettings``,
    ``ConsoleSettings``), if any. ``doc_default``: what the documentation shows as the default when the value
    alone does not say it (a computed default, a requirement). ``url``: a URL whose password is masked in reprs.
    """

    name: str
    section: str
    description: str
    parse: Parser = text
    default: Any = None
    read_by: tuple[str, ...] = ()
    secret: bool = False
    url: bool = False
    field: str | None = None
    doc_default: str | None = None

    def raw(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable's text, stripped; None when it is unset or blank."""
        value = (os.environ if environ is None else environ).get(self.name, "").strip()
        return value or None

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The parsed value, or the default when the variable is unset or blank."""
        raw = self.raw(environ)
        return self.default if raw is None else self.parse(self.name, raw)

    def shown(self, value: Any) -> str:
        """``repr`` of a value of this setting, a secret masked and a URL's password hidden."""
        if self.secret:
            return repr(MASK) if value else repr(value)
        if self.url and isinstance(value, str):
            return repr(mask_url(value))
        return repr(value)

    def default_text(self) -> str:
        """The default as the documentation shows it."""
        if self.doc_default is not None:
            return self.doc_default
        value = self.default
        if value is None or value == ():
            return "unset"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, tuple):
            return f"`{','.join(_number_text(v) for v in value)}`"
        return f"`{_number_text(value)}`"


def _number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_SECTIONS: dict[str, Section] = {}
_SETTINGS: dict[str, Setting] = {}


def declare_section(*sections: Section) -> None:
    """Add sections (in this order, after those declared before). Declaring the same one again is a no-op."""
    for section in sections:
        known = _SECTIONS.get(section.key)
        if known is not None and known != section:
            raise ValueError(f"settings section {section.key!r} is declared twice, differently")
        _SECTIONS[section.key] = section


def declare(*settings: Setting) -> None:
    """Add settings to the definition (a module declaring its own calls this when imported). A name or a field
    declared twice differently is a programming error, raised at once."""
    for item in settings:
        if item.section not in _SECTIONS:
            raise ValueError(f"{item.name}: unknown settings section {item.section!r} (declare_section it first)")
        known = _SETTINGS.get(item.name)
        if known is not None and known != item:
            raise ValueError(f"{item.name} is declared twice, differently")
        if item.field:
            for other in _SETTINGS.values():
                if other.field == item.field and other.name != item.name:
                    raise ValueError(f"{item.name} and {other.name} both fill the field {item.field!r}")
        _SETTINGS[item.name] = item


def setting(name: str) -> Setting:
    """The declaration of ``name``; an undeclared name is a programming error (declare it first)."""
    try:
        return _SETTINGS[name]
    except KeyError:
        raise LookupError(f"{name} is not a declared setting: declare it in worker/infrastructure/settings_spec.py "
                          "(or the settings module of the package that reads it)") from None


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of the declared variable ``name`` (its default when unset or blank)."""
    return setting(name).read(environ)


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The stripped text of the declared variable ``name``; None when unset or blank."""
    return setting(name).raw(environ)


def read_fields(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{field: value}`` for each of ``names`` that a declared setting fills (other names are left out: the
    caller derives them)."""
    by_field = {s.field: s for s in _SETTINGS.values() if s.field}
    return {name: by_field[name].read(environ) for name in names if name in by_field}


def masked_repr(obj: Any) -> str:
    """``Class(field=value, ...)`` of a settings dataclass with every secret masked and URL passwords hidden."""
    assert is_dataclass(obj)
    by_field = {s.field: s for s in _SETTINGS.values() if s.field}
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        known = by_field.get(f.name)
        parts.append(f"{f.name}={known.shown(value) if known else repr(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def broker_url(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(variable, url)``: ``CELERY_BROKER_URL``, else ``REDIS_URL``, else ``("", DEFAULT_BROKER_URL)``."""
    for name in ("CELERY_BROKER_URL", "REDIS_URL"):
        value = raw(name, environ)
        if value:
            return name, value
    return "", DEFAULT_BROKER_URL


def discover_extensions() -> None:
    """Import every ``<package>.<name>.settings`` module under :data:`EXTENSION_PACKAGES` (they declare)."""
    for package_name in EXTENSION_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as err:
            if err.name and package_name.startswith(err.name):
                continue  # the package does not exist (yet)
            raise
        for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix=f"{package_name}."):
            if info.ispkg and importlib.util.find_spec(f"{info.name}.settings") is not None:
                importlib.import_module(f"{info.name}.settings")


def sections() -> tuple[Section, ...]:
    return tuple(_SECTIONS.values())


def declared(*, discover: bool = False) -> tuple[Setting, ...]:
    """Every declared setting, in declaration order; ``discover``: extension packages' settings too."""
    if discover:
        discover_extensions()
    return tuple(_SETTINGS.values())


# ---------------------------------------------------------------------------------------- the processes

#: Who reads settings, as the "read by" column names them.
PROCESSES = {
    "worker": "the Celery workers (the Procfile's `worker` and `callbacks`)",
    "beat": "Celery beat (`beat`)",
    "web": "the public webhook receiver (`web`, gunicorn)",
    "console": "the operator console (`console`)",
    "cli": "`mailworker` commands (`release` runs one)",
    "app": "your application, through `enqueue_email` and friends",
    "flower": "Flower (`flower`)",
    "Procfile": "the Procfile's command lines (the shell expands them)",
    "dev": "`mailworker dev` (`make run`) and the SMTP2Go simulator",
}
#: Every process that loads ``Settings`` (``get_settings()``).
SETTINGS_READERS = ("worker", "console", "cli", "app")
#: Every process that loads ``celeryconfig`` (publishing or consuming tasks).
CELERY_READERS = ("worker", "beat", "web", "console", "cli", "app")
WORKER = ("worker",)


# --------------------------------------------------------------------------------------- the definition

declare_section(
    Section("core", "Core"),
    Section("smtp2go", "SMTP2Go"),
    Section("smtp", "SMTP relay (fallback)"),
    Section("sending", "Retries and leases"),
    Section("callbacks", "Status callbacks"),
    Section("security", "Security and webhooks"),
    Section("web", "The web process (gunicorn)",
            "Read by `webhook_app/gunicorn_conf.py` when gunicorn loads it; docs/operations.md (\"The web process\") "
            "says what each limit protects against. The body size cap is the application's own "
            "(`WEBHOOK_MAX_BODY_BYTES`): it answers 413 before reading."),
    Section("console", "Operator console",
            "Read by `console_app/settings.py` when the console starts (the rest in [console.md](console.md))."),
    Section("celery", "Celery (celeryconfig.py)",
            "Read by `celeryconfig.py` when Celery loads it, in every process that publishes or consumes tasks."),
    Section("processes", "Processes (Procfile)",
            "Read by the Procfile's command lines, Flower and logging set-up, not by the settings objects."),
    Section("standard", "Standard variables",
            "Honoured as the libraries define them. Status callbacks connect directly: `HTTP(S)_PROXY` is not "
            "used for them (the SMTP2Go API client honours `HTTPS_PROXY` and `NO_PROXY`)."),
    Section("development", "Development",
            "Read by `mailworker dev`, its children and the SMTP2Go simulator only; never needed in production."),
)

declare(
    # ---------------------------------------------------------------------------------------------- core
    Setting("DATABASE_URL", "core", (
        "SQLAlchemy URL, e.g. `mysql+pymysql://mw:pw@db:3306/mailworker?charset=utf8mb4`. MariaDB/MySQL in "
        "production (PyMySQL driver, utf8mb4, microsecond timestamps). The embedded SQLite file is used only when "
        "named: `sqlite:///<checkout>/var/mailworker.db`, which `mailworker dev` (`make run`) sets for its "
        "processes and publishes in `var/dev.env` for other shells. A process without it refuses to start "
        "(`DATABASE_URL is not set: ...`), so a production process can never write to a SQLite file by accident. "
        "The public webhook receiver (`web`) is the exception: it needs only `CELERY_BROKER_URL` and "
        "`SMTP2GO_WEBHOOK_SECRET`, so leave `DATABASE_URL` out of its environment (when set, it also reads the "
        "SMTP2Go module's webhook secret from the database, in the background). Checked at start-up: not a URL, "
        "an unsupported database (PostgreSQL, ...), a driver that is not installed (`mysql://` needs MySQLdb: use "
        "`mysql+pymysql://...?charset=utf8mb4`), no database name or an in-memory SQLite each end in one line "
        "naming `DATABASE_URL`."),
        read_by=(*SETTINGS_READERS, "web"), url=True, field="database_url", doc_default="**required** (no default)"),
    Setting("CELERY_BROKER_URL", "core", (
        "Celery broker, e.g. `redis://:pw@redis:6379/0`. Falls back to `REDIS_URL`. Checked at start-up (a "
        "`scheme://` kombu knows; for Redis a numeric port and database number; `;`-separated failover lists are "
        "checked one by one): a bad one is one line naming the variable."),
        text, DEFAULT_BROKER_URL, read_by=CELERY_READERS, url=True, field="broker_url"),
    Setting("REDIS_URL", "core", "Used when `CELERY_BROKER_URL` is unset.", read_by=CELERY_READERS, url=True),
    Setting("MAIL_DEFAULT_SENDER", "core", (
        "Sender when `enqueue_email` gets none, e.g. `Support <support@example.org>`. Without it, every call must "
        "pass `sender`."), read_by=SETTINGS_READERS, field="mail_default_sender"),
    Setting("MAILWORKER_QUIET", "core", (
        "`true`: `mailworker` commands do not say on stderr which stack (a running `mailworker dev`, or your "
        "`DATABASE_URL`) they talk to."), boolean, False, read_by=("cli",)),
    # ------------------------------------------------------------------------------------------- smtp2go
    Setting("SMTP2GO_API_KEY", "smtp2go", (
        "Enables the SMTP2Go module when no module row exists in the database (a row, when present, decides)."),
        read_by=(*SETTINGS_READERS, "dev"), secret=True, field="smtp2go_api_key"),
    Setting("SMTP2GO_API_URL", "smtp2go", (
        "API base (regional endpoints work: `https://eu-api.smtp2go.com/v3`). Checked at start-up and by "
        "`module set smtp2go api_url=...`: an http(s) URL with a usable host, else one line naming it. A URL that "
        "still cannot be used at send time (a module value stored by an older release) is an operator problem: "
        "mail is held, never failed, until it is fixed."),
        text, DEFAULT_SMTP2GO_API_URL, read_by=SETTINGS_READERS, url=True, field="smtp2go_api_url"),
    Setting("SMTP2GO_TIMEOUT", "smtp2go", (
        "Read timeout, seconds. A timeout after the request left is *ambiguous* and reconciled, never blindly "
        "resent."), number(), 30.0, read_by=SETTINGS_READERS, field="smtp2go_timeout"),
    Setting("SMTP2GO_CONNECT_TIMEOUT", "smtp2go", (
        "Connect timeout, seconds (a connect failure is safely retryable)."),
        number(), 5.0, read_by=SETTINGS_READERS, field="smtp2go_connect_timeout"),
    Setting("SMTP2GO_CA_FILE", "smtp2go", "Extra CA bundle for the API's certificate (proxies).",
            read_by=WORKER, field="smtp2go_ca_file", doc_default="system CAs"),
    Setting("SMTP2GO_WEBHOOK_SECRET", "smtp2go", (
        "Webhook secret(s), e.g. `s3cret` or `new-secret,old-secret`. Comma-separated while rotating: every listed "
        "secret is accepted. No secret: every webhook is refused. Proven by `Authorization: Bearer`, "
        "`Authorization: Basic` or, for senders that can sign, `X-Mailworker-Signature: t=<unix>,v1=<hex "
        "HMAC-SHA256(secret, \"<t>.\" + body)>` (its former name `X-Smtp2go-Signature` is accepted until the next "
        "release and logs a deprecation warning)."),
        csv, (), read_by=(*SETTINGS_READERS, "web", "dev"), secret=True, field="smtp2go_webhook_secrets"),
    Setting("MAILWORKER_ALLOW_UNAUTHENTICATED_WEBHOOKS", "smtp2go", (
        "Local development only: accept webhooks when *no* secret is configured."),
        boolean, False, read_by=(*SETTINGS_READERS, "web"), field="allow_unauthenticated_webhooks"),
    Setting("SMTP2GO_RATE_LIMIT", "smtp2go", (
        "Global sends per second across all workers and hosts (your plan's limit)."),
        number(), 0.0, read_by=WORKER, field="smtp2go_rate_limit", doc_default="`0` (unlimited)"),
    Setting("SMTP2GO_BREAKER_THRESHOLD", "smtp2go", (
        "Retryable API failures within the window that open the circuit breaker."),
        integer(), 5, read_by=WORKER, field="smtp2go_breaker_threshold"),
    Setting("SMTP2GO_BREAKER_WINDOW", "smtp2go", "Seconds over which failures are counted.",
            number(), 30.0, read_by=WORKER, field="smtp2go_breaker_window"),
    Setting("SMTP2GO_BREAKER_COOLDOWN", "smtp2go", (
        "Seconds the breaker stays open (sends go to the SMTP relay) before one trial request."),
        number(), 30.0, read_by=WORKER, field="smtp2go_breaker_cooldown"),
    # ---------------------------------------------------------------------------------------------- smtp
    Setting("SMTP_HOST", "smtp", (
        "Relay host, e.g. `mail.smtp2go.com`. Unset: no fallback; a message the API gave up on is `failed`."),
        read_by=(*SETTINGS_READERS, "dev"), field="smtp_host"),
    Setting("SMTP_PORT", "smtp", "Relay port.", integer(minimum=1), None, read_by=SETTINGS_READERS,
            field="smtp_port", doc_default="`587` (`465` with `ssl`)"),
    Setting("SMTP_SECURITY", "smtp", (
        "`starttls`, `ssl` or `none`: STARTTLS or implicit TLS, both verifying the certificate; `none` only for a "
        "local relay."), choice("starttls", "ssl", "none"), "starttls", read_by=SETTINGS_READERS,
        field="smtp_security"),
    Setting("SMTP_USERNAME", "smtp", "Relay user name (AUTH after TLS).", read_by=SETTINGS_READERS,
            field="smtp_username"),
    Setting("SMTP_PASSWORD", "smtp", "Relay password (AUTH after TLS).", read_by=SETTINGS_READERS, secret=True,
            field="smtp_password"),
    Setting("SMTP_TIMEOUT", "smtp", "Timeout for every socket operation, seconds.", number(), 30.0,
            read_by=SETTINGS_READERS, field="smtp_timeout"),
    Setting("SMTP_CA_FILE", "smtp", "Extra CA bundle for the relay's certificate.", read_by=WORKER,
            field="smtp_ca_file", doc_default="system CAs"),
    # ------------------------------------------------------------------------------------------- sending
    Setting("SEND_MAX_RETRIES", "sending", "API attempts after the first before falling back to SMTP.",
            integer(), 5, read_by=SETTINGS_READERS, field="send_max_retries"),
    Setting("SMTP_MAX_RETRIES", "sending", (
        "Relay attempts after the first (4xx, connection errors) before `failed`."),
        integer(), 5, read_by=SETTINGS_READERS, field="smtp_max_retries"),
    Setting("SEND_RETRY_BACKOFF", "sending", (
        "First retry delay, seconds; doubles each attempt, with jitter (50-100 %)."),
        number(), 10.0, read_by=SETTINGS_READERS, field="send_retry_backoff"),
    Setting("SEND_RETRY_BACKOFF_MAX", "sending", (
        "Cap on one delay. `Retry-After` / `X-Ratelimit-Reset` win when present (capped too)."),
        number(), 600.0, read_by=SETTINGS_READERS, field="send_retry_backoff_max"),
    Setting("SEND_LEASE_SECONDS", "sending", (
        "How long a worker owns a message it is sending. Checked at start-up: it must outlive the worst-case "
        "attempt (`SMTP2GO_CONNECT_TIMEOUT` + `SMTP2GO_TIMEOUT`, or 4 x `SMTP_TIMEOUT`, plus 10%); a worker "
        "refuses to start otherwise. Renewed before each transport call."),
        integer(), 180, read_by=SETTINGS_READERS, field="send_lease_seconds"),
    Setting("SEND_MAX_CRASHES", "sending", (
        "Take-overs of a dead worker's message, before anything was sent, after which it is `failed` (poison "
        "messages). A message that died in flight is parked instead."),
        integer(), 3, read_by=SETTINGS_READERS, field="max_task_crashes"),
    Setting("RECONCILE_RESEND_AFTER", "sending", (
        "A parked SMTP2Go send (outcome unknown) is released for a new attempt only after a *complete* negative "
        "activity search made at least this many seconds after the attempt (activity lags a minute or two)."),
        number(), 600.0, read_by=SETTINGS_READERS, field="reconcile_resend_after"),
    Setting("BULK_BATCH_SIZE", "sending", (
        "Emails one `mailworker.send_batch` task claims and sends together (one `POST /email/batch` to SMTP2Go, "
        "one SMTP connection to the relay); at most 1000, SMTP2Go's limit."),
        batch_size, 100, read_by=SETTINGS_READERS, field="bulk_batch_size"),
    Setting("SMTP_UNKNOWN_RESEND_AFTER", "sending", (
        "A parked relay send (the relay took the DATA, no answer came) cannot be checked; it is resent after this "
        "many seconds: at least once."), number(), 600.0, read_by=SETTINGS_READERS,
        field="smtp_unknown_resend_after"),
    Setting("SWEEP_REPUBLISH_AFTER", "sending", (
        "A message whose publish is on record but which has been due this long is re-published (its broker "
        "message was lost). Unpublished rows are repaired at the next sweep. A Redis broker that lost its data "
        "(flushed, restarted without persistence, failed over) is noticed at the next sweep instead: the sweeper "
        "keeps a marker key `<send queue>:broker-epoch` holding the server's `run_id`, and when it is missing or "
        "names another server, every queued message is published again at once (harmless: only one attempt can "
        "claim a message). The first sweep against a new Redis cannot tell it from a flushed one and republishes "
        "the backlog once."), number(), 300.0, read_by=SETTINGS_READERS, field="sweep_republish_after"),
    Setting("MODULE_CACHE_SECONDS", "sending", (
        "How long a worker reuses the SMTP2Go module row it read (one SELECT per email otherwise): `mailworker "
        "module enable/disable/set` takes effect within this time. `0` reads it for every send."),
        number(), 5.0, read_by=SETTINGS_READERS, field="module_cache_seconds"),
    Setting("DB_POOL_SIZE", "sending", (
        "Database connections each process keeps pooled. Automatic (`0`): a thread-pool worker pools its "
        "`--concurrency` + 2 (every sending thread holds one connection through its send), anything else 10. "
        "Overflow above it: half as many again, at least 10. Size MariaDB's `max_connections` (default 151) for "
        "the sum over all processes: a worker of 16 threads holds up to 18."),
        integer(), 0, read_by=SETTINGS_READERS, field="db_pool_size", doc_default="auto"),
    Setting("SWEEP_INTERVAL", "sending", (
        "Seconds between sweeps (lost publishes, due `send_at`, expired leases, orphan events); beat's schedule "
        "and the sweeper's own arithmetic."), number(), 15.0, read_by=(*SETTINGS_READERS, "beat"),
        field="sweep_interval"),
    Setting("COMPLAINT_RATE_THRESHOLD", "sending", (
        "The spam complaint line, a fraction (`0.003` is 0.3 %; a number above 1 is read as a percentage): Gmail "
        "and Yahoo hold bulk senders under 0.3 %. The rate is recipients who complained in the last 7 days over "
        "recipients accepted for delivery in those 7 days; `/metrics`, the console overview and `mailworker stats` "
        "show it against this line, and the sweeper logs one WARNING a day while it is at or above it."),
        fraction, 0.003, read_by=SETTINGS_READERS, field="complaint_rate_threshold"),
    Setting("RECONCILE_INTERVAL", "sending", (
        "Seconds between reconciliation runs (SMTP2Go activity search; at most 20 requests a run)."),
        number(), 60.0, read_by=("beat",)),
    Setting("RETENTION_DAYS", "sending", (
        "The daily purge drops bodies, attachments and events of finished mail older than this, and status-"
        "callback events (with their deliveries and attempts) that are this old and delivered or dead-lettered: "
        "`mailworker callbacks replay` reaches back this far."),
        integer(), 90, read_by=SETTINGS_READERS, field="retention_days"),
    # ----------------------------------------------------------------------------------------- callbacks
    Setting("CALLBACK_TIMEOUT", "callbacks", (
        "Total deadline of one HTTP callback attempt, seconds: connecting (at most 5 s of it), TLS, sending, and "
        "the whole answer as far as it is read. A receiver that answers slowly (or trickles its answer) is cut off "
        "at the deadline: a retryable failure, `timed out after N s`. Name resolution is bounded by the system "
        "resolver only. At most 64 KB of an answer is read; a non-2xx answer's first 200 characters (control "
        "characters removed) are kept in the attempt's error."),
        positive, 10.0, read_by=SETTINGS_READERS, field="callback_timeout"),
    Setting("CALLBACK_HOOK_TIMEOUT", "callbacks", (
        "Time limit of one `MAILWORKER_STATUS_HOOK` call, seconds. A hook that has not returned by then is "
        "recorded as a retryable failure (`timed out after N s`) and left to finish on its own thread (Python "
        "cannot stop it), so keep hooks short and idempotent. The callback tasks also get Celery time limits just "
        "above these bounds; the Procfile's threads pool ignores Celery time limits, so these in-code limits are "
        "the real bound."), positive, 10.0, read_by=SETTINGS_READERS, field="callback_hook_timeout"),
    Setting("CALLBACK_ALLOWED_NETWORKS", "callbacks", (
        "Comma-separated CIDRs (`10.0.0.0/8,fd00::/8`) callback URLs may reach besides public addresses. By "
        "default loopback, private, link-local (cloud metadata `169.254.169.254`), shared, multicast, reserved and "
        "unspecified addresses are refused: when an endpoint is added (every address its host resolves to must be "
        "allowed) and on every attempt (the connection goes to an address just checked and its peer address is "
        "checked again before anything is sent, so DNS rebinding does not get through; such an attempt fails for "
        "good: `callback URL resolves to 127.0.0.1, which is not a public address; allow it with "
        "CALLBACK_ALLOWED_NETWORKS`). A receiver on the same host in development needs `127.0.0.0/8,::1/128`. "
        "Callbacks connect directly: `HTTP(S)_PROXY` is not used. A bad entry stops the process at start-up with "
        "one line naming the variable."),
        networks, (), read_by=(*SETTINGS_READERS, "dev"), field="callback_allowed_networks",
        doc_default="unset (public addresses only)"),
    Setting("CALLBACK_RETRY_SCHEDULE", "callbacks", (
        "Seconds before attempt 2, 3, ... (±20 % jitter); then the delivery is a dead letter."),
        numbers, (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0), read_by=WORKER),
    Setting("CALLBACK_DISPATCH_INTERVAL", "callbacks", (
        "Seconds between runs of the callback dispatcher (it publishes due deliveries)."),
        number(), 5.0, read_by=("beat",)),
    Setting("MAILWORKER_STATUS_HOOK", "callbacks", (
        "`package.module:function` called with each status event's body (a dict), in a task of its own with "
        "retries."), read_by=WORKER),
    # ------------------------------------------------------------------------------------------ security
    Setting("SETTINGS_ENCRYPTION_KEY", "security", (
        "Fernet key(s), comma-separated, newest first. Needed to store module settings (`mailworker module set`). "
        "Generate with `mailworker module keygen`; rotate by prepending a new key and running `mailworker module "
        "rotate`."), csv, (), read_by=(*SETTINGS_READERS, "dev"), secret=True, field="settings_encryption_keys"),
    Setting("WEBHOOK_MAX_BODY_BYTES", "security", "Webhook body cap (413 above it, also for chunked bodies).",
            integer(minimum=1), 1024 * 1024, read_by=(*SETTINGS_READERS, "web"), field="webhook_max_body_bytes"),
    # ----------------------------------------------------------------------------------------------- web
    Setting("WEB_BIND", "web", "Listen address(es) of gunicorn.", read_by=("web",),
            doc_default="`0.0.0.0:$PORT`"),
    Setting("WEB_CONCURRENCY", "web", "Worker processes (one per core).", integer(at_least=1), 2,
            read_by=("web",)),
    Setting("WEB_WORKER_CONNECTIONS", "web", (
        "Open connections per worker process; more wait in the listen queue."),
        integer(at_least=1), 1000, read_by=("web",)),
    Setting("WEB_HEADER_TIMEOUT", "web", (
        "Seconds from accepting a connection to its first request's last header (at least 0.5)."),
        number(at_least=0.5), 5.0, read_by=("web",)),
    Setting("WEB_KEEPALIVE", "web", (
        "Whole seconds a kept-alive connection may take, after a response, to send the next request's headers "
        "(idle time included); at least 1."), integer(at_least=1), 5, read_by=("web",)),
    Setting("WEB_BODY_TIMEOUT", "web", "Seconds from the end of the headers to the last byte of the body "
            "(at least 0.5).", number(at_least=0.5), 10.0, read_by=("web",)),
    Setting("WEB_MAX_HEADER_BYTES", "web", "Longest header line (name + value); longer is 431. At least 256.",
            integer(at_least=256), 8190, read_by=("web",)),
    Setting("WEB_MAX_HEADER_FIELDS", "web", "Most header fields in one request; more is 400.",
            integer(at_least=1), 50, read_by=("web",)),
    Setting("WEB_MAX_REQUEST_LINE", "web", (
        "Longest request line (method, path, version); longer is 400. At least 256."),
        integer(at_least=256), 4094, read_by=("web",)),
    Setting("WEB_TIMEOUT", "web", (
        "A worker whose event loop does not come back for this many seconds is restarted."),
        integer(at_least=1), 30, read_by=("web",)),
    Setting("WEB_GRACEFUL_TIMEOUT", "web", "Seconds open requests get to finish on shutdown.",
            integer(at_least=1), 10, read_by=("web",)),
    # ------------------------------------------------------------------------------------------- console
    Setting("CONSOLE_BASIC_AUTH", "console", (
        "`user:password` for every page; the console refuses to start without it (one line on stderr), except "
        "inside `mailworker dev`, which generates and prints one."),
        read_by=("console", "dev"), secret=True, doc_default="**required** by the console"),
    Setting("CONSOLE_SECRET_KEY", "console", (
        "Signs the console's session cookie and CSRF tokens; never derived from the password. At least 16 "
        "characters (a shorter one stops the console in one line). Set the same value on every host when several "
        "console hosts share one address (each host otherwise has its own key file, and a form loaded from one "
        "host is refused by another). Unset: the key in `CONSOLE_SECRET_FILE`."),
        read_by=("console",), secret=True),
    Setting("CONSOLE_SECRET_FILE", "console", (
        "Used when `CONSOLE_SECRET_KEY` is unset: 64 random hex characters, generated on first start (mode "
        "`0600`, linked into place atomically so console processes starting together agree on one key) and read "
        "by every console process on the host. Refused at start-up, in one line naming it, when other users can "
        "read it, when it holds fewer than 32 characters, or when it cannot be created. Delete it to invalidate "
        "every open form and session."), read_by=("console",), doc_default="`<checkout>/var/console-secret-key`"),
    Setting("CONSOLE_TRUSTED_PROXIES", "console", (
        "Number of reverse proxies in front of the console whose `X-Forwarded-For`, `X-Forwarded-Proto` and "
        "`X-Forwarded-Host` are believed (werkzeug `ProxyFix`). Behind a TLS-terminating proxy set `1`: the "
        "console then sees the browser's `https://` origin (otherwise every action is refused as cross-site), "
        "marks its cookie `Secure`, and throttles the real client address. Leave `0` when clients reach the "
        "console directly: the headers could then be forged."),
        integer(minimum=0), 0, read_by=("console",), field="trusted_proxies"),
    Setting("CONSOLE_TRUSTED_ORIGINS", "console", (
        "Comma-separated origins (`https://console.example.org`, `https://host:8443`) a POST may come from besides "
        "the console's own. A POST with another `Origin`, or `Origin: null`, is refused with 403."),
        origins, (), read_by=("console",), field="trusted_origins"),
    Setting("CONSOLE_LOGIN_MAX_FAILURES", "console", (
        "Wrong basic-auth credentials from one client address within the window after which that address gets "
        "`429` with `Retry-After` (even with the right password) until its oldest failure leaves the window. Other "
        "addresses are unaffected. Counted in memory per console process: N gunicorn workers allow N times as "
        "many guesses."), integer(minimum=1), 10, read_by=("console",), field="login_max_failures"),
    Setting("CONSOLE_LOGIN_FAILURE_WINDOW", "console", "The login throttle's sliding window, seconds.",
            positive, 60.0, read_by=("console",), field="login_failure_window"),
    Setting("METRICS_PUBLIC", "console", (
        "`true`: `GET /metrics` needs no authentication (every other page still does)."),
        boolean, False, read_by=("console",), field="metrics_public"),
    Setting("CONSOLE_WARN_DELIVERY_BELOW", "console", (
        "Delivery rate under which the overview turns red (a fraction, or a percentage above 1)."),
        fraction, 0.95, read_by=("console",), field="warn_delivery_below"),
    Setting("CONSOLE_WARN_BOUNCE_ABOVE", "console", "Bounce rate over which the overview turns red.",
            fraction, 0.05, read_by=("console",), field="warn_bounce_above"),
    Setting("CONSOLE_WARN_SPAM_ABOVE", "console", "Spam-complaint rate over which the overview turns red.",
            fraction, 0.001, read_by=("console",), field="warn_spam_above"),
    Setting("CONSOLE_WARN_OLDEST_QUEUED_SECONDS", "console", (
        "Age (seconds) of the oldest waiting email past which its card turns amber."),
        positive, 600.0, read_by=("console",), field="warn_oldest_queued_seconds"),
    Setting("CONSOLE_PAGE_SIZE", "console", "Messages per search page.", integer(minimum=1), 50,
            read_by=("console",), field="page_size"),
    Setting("CONSOLE_HOST", "console", "Default of `mailworker console --host`.", read_by=("console",),
            doc_default="`127.0.0.1`"),
    Setting("CONSOLE_PORT", "console", "Default of `mailworker console --port` (and the Procfile's).",
            read_by=("console", "Procfile"), doc_default="`8025`"),
    # -------------------------------------------------------------------------------------------- celery
    Setting("CELERY_VISIBILITY_TIMEOUT", "celery", (
        "Redis redelivers unacknowledged tasks after this many seconds; keep it above `SEND_RETRY_BACKOFF_MAX` "
        "(retries longer than half of it are left to the sweeper, never to a broker countdown)."),
        integer(minimum=1), 3600, read_by=CELERY_READERS),
    Setting("MAILWORKER_SEND_QUEUE", "celery", (
        "The send queue's name (separate deployments on one Redis DB use different names)."),
        text, "mailworker.send", read_by=(*CELERY_READERS, "dev")),
    Setting("MAILWORKER_EVENTS_QUEUE", "celery", "The webhook events queue's name.", text, "mailworker.events",
            read_by=(*CELERY_READERS, "dev")),
    Setting("MAILWORKER_MAINTENANCE_QUEUE", "celery", "The maintenance queue's name (sweep, reconcile, purge).",
            text, "mailworker.maintenance", read_by=(*CELERY_READERS, "dev")),
    Setting("MAILWORKER_CALLBACKS_QUEUE", "celery", (
        "The status callbacks queue's name; unset, it follows the send queue's prefix."),
        read_by=(*CELERY_READERS, "dev"), doc_default="`<send queue prefix>.callbacks`"),
    Setting("MAILWORKER_BULK_QUEUE", "celery", (
        "The bulk lane's queue name (`enqueue_many`'s mail); unset, it follows the send queue's prefix."),
        read_by=(*CELERY_READERS, "dev"), doc_default="`<send queue prefix>.bulk`"),
    Setting("MAILWORKER_TASK_EVENTS", "celery", (
        "`true` starts workers with Celery task events on. Off by default because Flower turns them on while it "
        "runs (docs/operations.md, Flower)."), boolean, False, read_by=("worker", "dev")),
    # ----------------------------------------------------------------------------------------- processes
    Setting("PORT", "processes", "The web process's port when `WEB_BIND` is unset.", integer(minimum=1), 8000,
            read_by=("web",)),
    Setting("WORKER_CONCURRENCY", "processes", (
        "Threads of the transactional lane (send, events, maintenance queues) of `mailworker worker`; run one "
        "worker process per core."), integer(minimum=1), 16, read_by=("worker",)),
    Setting("CALLBACK_CONCURRENCY", "processes", "Threads of the callbacks lane (`mailworker worker`).",
            integer(minimum=1), 8, read_by=("worker",)),
    Setting("BULK_CONCURRENCY", "processes", "Threads of the bulk lane (`mailworker worker`).",
            integer(minimum=1), 4, read_by=("worker",)),
    Setting("MALLOC_ARENA_MAX", "processes", (
        "glibc malloc arenas of the Celery processes (fewer arenas: less memory for many threads)."),
        integer(minimum=1), 2, read_by=("Procfile",)),
    Setting("BEAT_SCHEDULE_FILE", "processes", "Where beat keeps its schedule state.", read_by=("Procfile",),
            doc_default="`var/celerybeat-schedule`"),
    Setting("FLOWER_BASIC_AUTH", "processes", (
        "`user:password`, required: Flower reads it from its environment, as it reads every `FLOWER_<OPTION>`, so "
        "the password never appears in the process's arguments."),
        read_by=("flower", "dev"), secret=True, doc_default="**required** by Flower"),
    Setting("FLOWER_PORT", "processes", "Flower's port.", integer(minimum=1), 5555, read_by=("Procfile",)),
    Setting("LOG_LEVEL", "processes", "Log level of the web process and the console (`DEBUG`, `INFO`, ...).",
            text, "INFO", read_by=("web", "console")),
    # ------------------------------------------------------------------------------------------ standard
    Setting("REQUESTS_CA_BUNDLE", "standard", (
        "CA bundle for the SMTP2Go API's certificate when `SMTP2GO_CA_FILE` is unset (as in `requests`)."),
        read_by=WORKER, doc_default="system CAs"),
    Setting("CURL_CA_BUNDLE", "standard", "Used when `REQUESTS_CA_BUNDLE` is unset (as in `requests`).",
            read_by=WORKER, doc_default="system CAs"),
    # --------------------------------------------------------------------------------------- development
    Setting("MAILWORKER_DEV_ENV_FILE", "development", (
        "Where a running `mailworker dev` publishes its URLs and keys, and where other shells' `mailworker` "
        "commands (and any process without `DATABASE_URL`) look for them."),
        read_by=(*SETTINGS_READERS, "dev"), doc_default="`<checkout>/var/dev.env`"),
    Setting("FAKE_SMTP2GO_VERBOSE", "development", "Any value: the SMTP2Go simulator logs every request.",
            read_by=("dev",)),
)

# ------------------------------------------------------------------------------------------- compliance
declare_section(Section(
    "compliance", "Bulk mail: unsubscribe, suppressions, erasure",
    "Read by `worker.compliance` (the worker, the CLI, the console) and by the receiver (the one-click unsubscribe "
    "URL). README, \"Bulk mail and the mailbox providers\", says how they fit together."))
declare(
    Setting("UNSUBSCRIBE_SECRET", "compliance", (
        "Key of the one-click unsubscribe tokens (AES-GCM: the token holds the address encrypted, with its list "
        "and issue time) and of the keyed hashes that stand in for erased addresses. Any long random text "
        "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`); the worker and the receiver need the "
        "same value. Changing it invalidates every unsubscribe link already sent and un-suppresses erased "
        "addresses: keep it. Unset: mail with a `list_id` gets no `List-Unsubscribe` header and `erase` refuses."),
        read_by=(*SETTINGS_READERS, "web"), secret=True),
    Setting("UNSUBSCRIBE_BASE_URL", "compliance", (
        "Public HTTPS base of the receiver, e.g. `https://mail-hooks.example.com`: links are `<base>/u/<token>`. "
        "Unset: no `List-Unsubscribe` header."), read_by=SETTINGS_READERS),
    Setting("UNSUBSCRIBE_MAILTO", "compliance", (
        "An address that takes unsubscribe requests by mail; set, `List-Unsubscribe` also carries "
        "`<mailto:ADDRESS?subject=unsubscribe>`."), read_by=SETTINGS_READERS),
    Setting("UNSUBSCRIBE_TOKEN_DAYS", "compliance", "How long an unsubscribe link works, days.",
            integer(minimum=1), 365, read_by=(*SETTINGS_READERS, "web")),
    Setting("RETENTION_BODY_DAYS", "compliance", (
        "The daily purge drops bodies, attachments, custom headers and template data of finished mail older than "
        "this; the rest (events, callback events) goes after `RETENTION_DAYS`."),
        integer(minimum=1), 30, read_by=SETTINGS_READERS),
)
