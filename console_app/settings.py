"""The console's configuration, read from the environment once at start-up.

The key that signs the console's cookie and CSRF tokens never comes from the password: it is
``CONSOLE_SECRET_KEY`` when set, else a random key generated once and kept in ``CONSOLE_SECRET_FILE`` (mode
0600; every console process on the host reads the same file, so their tokens agree). Consoles on several hosts
behind one address need the same ``CONSOLE_SECRET_KEY``.

Every variable is declared (parser, default, meaning) in :mod:`worker.infrastructure.settings_spec`; the fields of
:class:`ConsoleSettings` are filled from the settings declared with that ``field``.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path

from worker.errors import ConfigurationError
from worker.infrastructure import settings_spec as spec
from worker.infrastructure.paths import PROJECT_ROOT
from worker.infrastructure.settings_spec import origin_of

__all__ = ["DEFAULT_SECRET_FILE", "MIN_SECRET_FILE_CHARS", "MIN_SECRET_KEY_CHARS", "ConsoleConfigError",
           "ConsoleSettings", "load_console_settings", "origin_of", "parse_basic_auth", "stored_secret"]

DEFAULT_SECRET_FILE = PROJECT_ROOT / "var" / "console-secret-key"
#: The shortest key accepted from CONSOLE_SECRET_FILE (a generated one is 64 hex characters).
MIN_SECRET_FILE_CHARS = 32
#: The shortest CONSOLE_SECRET_KEY accepted: a token or cookie seen once must not let its key be guessed offline.
MIN_SECRET_KEY_CHARS = 16


class ConsoleConfigError(RuntimeError):
    """The console cannot start (one line, shown as is)."""


@dataclass(frozen=True)
class ConsoleSettings:
    username: str
    password: str = field(repr=False)
    #: Signs the session cookie and CSRF tokens: ``CONSOLE_SECRET_KEY``, else the key in ``CONSOLE_SECRET_FILE``.
    secret_key: bytes = field(repr=False)
    metrics_public: bool
    #: Overview warning thresholds (fractions 0..1 of sent mail).
    warn_delivery_below: float
    warn_bounce_above: float
    warn_spam_above: float
    #: Age (seconds) of the oldest waiting email past which the overview warns.
    warn_oldest_queued_seconds: float
    page_size: int
    #: Reverse proxies in front of the console whose ``X-Forwarded-For/-Proto/-Host`` are believed (0: none).
    trusted_proxies: int = 0
    #: Origins (``scheme://host[:port]``) a POST may come from besides the console's own.
    trusted_origins: tuple[str, ...] = ()
    #: Failed logins from one client address within ``login_failure_window`` seconds before it gets 429.
    login_max_failures: int = 10
    login_failure_window: float = 60.0


def _read_secret_file(path: Path) -> bytes:
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConsoleConfigError(f"CONSOLE_SECRET_FILE={path} can be read by other users "
                                 f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
    text = path.read_text(encoding="utf-8").strip()
    if len(text) < MIN_SECRET_FILE_CHARS:
        raise ConsoleConfigError(f"CONSOLE_SECRET_FILE={path} holds fewer than {MIN_SECRET_FILE_CHARS} characters: "
                                 "delete it (a new key is generated) or put a long random key in it")
    return text.encode()


def stored_secret(path: Path) -> bytes:
    """The key in ``path``, generated first if there is none: written to a private temporary file and linked
    into place, so a console process starting at the same moment either wins or reads the winner's whole key."""
    try:
        try:
            return _read_secret_file(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_hex(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process generated it first: use theirs
        finally:
            temporary.unlink(missing_ok=True)
        return _read_secret_file(path)
    except OSError as err:
        raise ConsoleConfigError(f"CONSOLE_SECRET_FILE={path} cannot be read or created ({err.strerror or err}): "
                                 "fix its directory or set CONSOLE_SECRET_KEY") from None


def _secret_key() -> bytes:
    explicit = spec.raw("CONSOLE_SECRET_KEY")
    if explicit:
        if len(explicit) < MIN_SECRET_KEY_CHARS:
            raise ConsoleConfigError(f"CONSOLE_SECRET_KEY is shorter than {MIN_SECRET_KEY_CHARS} characters: use a "
                                     "long random value (python -c 'import secrets; print(secrets.token_hex(32))')")
        return explicit.encode()
    configured = spec.raw("CONSOLE_SECRET_FILE")
    return stored_secret(Path(configured) if configured else DEFAULT_SECRET_FILE)


def parse_basic_auth(raw: str | None) -> tuple[str, str]:
    if raw is None or not raw.strip():
        raise ConsoleConfigError("CONSOLE_BASIC_AUTH is not set: the console refuses to start without "
                                 "CONSOLE_BASIC_AUTH=user:password")
    user, sep, password = raw.strip().partition(":")
    if not sep or not user or not password:
        raise ConsoleConfigError("CONSOLE_BASIC_AUTH must be user:password (both non-empty)")
    return user, password


def load_console_settings(*, basic_auth: str | None = None, metrics_public: bool | None = None) -> ConsoleSettings:
    user, password = parse_basic_auth(basic_auth if basic_auth is not None else spec.raw("CONSOLE_BASIC_AUTH"))
    try:
        values = spec.read_fields(f.name for f in fields(ConsoleSettings))
    except ConfigurationError as err:
        raise ConsoleConfigError(str(err)) from None
    if metrics_public is not None:
        values["metrics_public"] = metrics_public
    return ConsoleSettings(username=user, password=password, secret_key=_secret_key(), **values)
