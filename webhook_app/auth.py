"""Webhook authentication: Bearer, Basic or an HMAC signature, against every configured secret.

SMTP2Go itself only sends an ``Authorization`` header (Bearer, or Basic when the webhook URL carries
``user:pass@``); the signature form (``X-Mailworker-Signature: t=<unix>,v1=<hex>``) exists for our own tools
and proxies that can sign. It used to be called ``X-Smtp2go-Signature``, a name that suggested SMTP2Go sends it
(it never does); the old name is still accepted for one release, with a deprecation warning. Every comparison is
constant time and runs over *every* candidate secret, so the timing says neither whether a secret matched nor
which one (rotation keeps several valid at once).

Secrets come from ``SMTP2GO_WEBHOOK_SECRET`` plus the SMTP2Go module row in the database. The request path
must never touch the database (a slow or dead database must not turn webhooks into 500s), so
:class:`SecretStore` loads the module secrets in a daemon thread and the view only reads an in-memory tuple.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from werkzeug.datastructures import Headers

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Mailworker-Signature"
#: The signature header's former name: accepted until the next release, logged as deprecated (once per process).
LEGACY_SIGNATURE_HEADER = "X-Smtp2go-Signature"
#: How far a signature timestamp may be from now, either way (stale replays and far-future stamps fail).
SIGNATURE_TOLERANCE = 300
_MAX_TIMESTAMP_DIGITS = 12


@dataclass(frozen=True)
class _Secret:
    """One secret as bytes plus its SHA-256, so Bearer/Basic compare fixed-length digests."""

    raw: bytes
    digest: bytes


def _prepare(secrets: Iterable[str]) -> tuple[_Secret, ...]:
    seen: dict[str, None] = {}
    for secret in secrets:
        text = secret.strip()
        if text:
            seen.setdefault(text, None)
    return tuple(_Secret(s.encode(), hashlib.sha256(s.encode()).digest()) for s in seen)


class SecretStore:
    """The currently valid webhook secrets: static ones plus those a loader (the database) provides.

    ``loader`` runs in a background daemon thread every ``interval`` seconds; a failing loader keeps the last
    good answer (a database outage must not lock SMTP2Go out, nor let anyone in). The thread is started per
    process, so a store created before ``fork`` (gunicorn ``--preload``) starts a fresh one in each worker.
    """

    def __init__(self, static: Iterable[str], loader: Callable[[], Iterable[str]] | None = None,
                 interval: float = 30.0) -> None:
        self._static = tuple(static)
        self._loaded: tuple[str, ...] = ()
        self._current = _prepare(self._static)
        self._loader = loader
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_load = threading.Event()
        self._thread_pid: int | None = None
        self._failing = False

    @property
    def configured(self) -> bool:
        return bool(self._current)

    def current(self) -> tuple[_Secret, ...]:
        return self._current

    def refresh(self) -> None:
        """Ask the loader once; on any error keep the previous secrets and log only the error type."""
        if self._loader is None:
            return
        try:
            loaded = tuple(self._loader())
        except Exception as err:  # noqa: BLE001 - the database may be down; keep serving with what we have
            # Warn when the trouble starts, not every interval while it lasts.
            log.log(logging.DEBUG if self._failing else logging.WARNING,
                    "could not load the SMTP2Go module webhook secret (%s); keeping the previous ones",
                    type(err).__name__)
            self._failing = True
        else:
            if self._failing:
                log.info("SMTP2Go module webhook secret loaded again")
            self._failing = False
            with self._lock:
                if loaded != self._loaded:
                    self._loaded = loaded
                    self._current = _prepare(self._static + loaded)
        finally:
            self._first_load.set()

    def start(self, wait: float = 0.0) -> None:
        """Start the refresher in this process (idempotent); wait up to ``wait`` s for the first load."""
        if self._loader is None or self._thread_pid == os.getpid():
            return  # the per-request fast path: already running in this process
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
            self._first_load.clear()
            thread = threading.Thread(target=self._run, name="webhook-secret-refresh", daemon=True)
            thread.start()
        if wait > 0:
            self._first_load.wait(wait)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        self.refresh()
        while not self._stop.wait(self._interval):
            self.refresh()


def _matches_any(presented: bytes, secrets: tuple[_Secret, ...]) -> bool:
    """Constant-time membership: compare digests against every secret, no early exit."""
    digest = hashlib.sha256(presented).digest()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(digest, secret.digest)
    return matched


def _header_bytes(value: str) -> bytes:
    # WSGI headers are latin-1 decoded; this restores the bytes the client sent (a UTF-8 secret still works).
    return value.encode("latin-1", errors="replace")


def check_authorization(header: str, secrets: tuple[_Secret, ...]) -> str | None:
    """``"bearer"`` / ``"basic"`` when the Authorization header carries a valid secret, else None."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    scheme = scheme.lower()
    if scheme == "bearer":
        return "bearer" if _matches_any(_header_bytes(credentials), secrets) else None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return None
        _user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return "basic" if _matches_any(password, secrets) else None
    return None


def _parse_signature(header: str) -> tuple[str, list[bytes]] | None:
    """``t=<unix>,v1=<hex>[,v1=<hex>...]`` -> (t, [hex, ...]); None when malformed."""
    timestamp: str | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        key, value = key.strip().lower(), value.strip()
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(_header_bytes(value.lower()))
    if timestamp is None or not signatures:
        return None
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        return None
    return timestamp, signatures


def check_signature(header: str, body: bytes, secrets: tuple[_Secret, ...], now: float) -> bool:
    """True when some ``v1`` is HMAC-SHA256(secret, ``"<t>." + body``) and ``t`` is within the tolerance."""
    parsed = _parse_signature(header)
    if parsed is None:
        return False
    timestamp, presented = parsed
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE:
        return False
    signed = timestamp.encode("ascii") + b"." + body
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.raw, signed, hashlib.sha256).hexdigest().encode("ascii")
        for candidate in presented:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


_legacy_warned = threading.Event()


def _warn_legacy_header() -> None:
    if not _legacy_warned.is_set():
        _legacy_warned.set()
        log.warning("a webhook was signed with the deprecated %s header; send %s instead (same t=<unix>,v1=<hex> "
                    "format): the old name stops being accepted in the next release",
                    LEGACY_SIGNATURE_HEADER, SIGNATURE_HEADER)


def signature_header(headers: Mapping[str, str] | Headers) -> str | None:
    """The signature header's value: ``X-Mailworker-Signature``, else the deprecated ``X-Smtp2go-Signature``
    (which logs a deprecation warning, once per process)."""
    value = headers.get(SIGNATURE_HEADER)
    if value is None:
        value = headers.get(LEGACY_SIGNATURE_HEADER)
        if value is not None:
            _warn_legacy_header()
    return value


def authenticate(authorization: str | None, signature: str | None, body: bytes,
                 secrets: tuple[_Secret, ...], now: float | None = None) -> str | None:
    """The method that proved a valid secret (``bearer``, ``basic``, ``signature``), or None.

    ``authorization`` and ``signature`` are the raw header values (``signature`` from :func:`signature_header`,
    which also reads the deprecated ``X-Smtp2go-Signature``). Any one valid method is enough; with no secret
    configured nothing is ever valid (fail closed).
    """
    if not secrets:
        return None
    if authorization:
        method = check_authorization(authorization, secrets)
        if method:
            return method
    if signature and check_signature(signature, body, secrets, time.time() if now is None else now):
        return "signature"
    return None
