"""Basic auth on every request, a throttle on failed logins, CSRF tokens bound to a session, security headers.

- **Auth**: HTTP basic, compared in constant time against ``CONSOLE_BASIC_AUTH``. ``/metrics`` is exempt only
  with ``METRICS_PUBLIC=true``. There is no login page.
- **Throttle**: after ``CONSOLE_LOGIN_MAX_FAILURES`` (10) wrong credentials from one client address within
  ``CONSOLE_LOGIN_FAILURE_WINDOW`` (60) seconds, that address gets ``429`` with ``Retry-After`` -- even with the
  right password, or the throttle would still answer guesses -- until its oldest failure leaves the window.
  Other addresses are not affected, so an attacker cannot lock the operator out. The count is kept in memory,
  per console process (a gunicorn worker each): N processes allow N times the guesses.
- **Session**: a signed cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https) holding a random
  session id (and the flashed "done" messages). It is signed with the console's secret key, never with anything
  derived from the password.
- **CSRF**: every POST must carry ``csrf_token``: an HMAC of the session id and user, time-stamped (valid for
  :data:`CSRF_MAX_AGE`) and signed with the secret key. A cross-site page can make the browser send the
  basic-auth credentials, but the Strict cookie stays behind and it cannot read a page to learn a token; a
  token seen elsewhere is useless without its session's cookie. A POST whose ``Origin`` is another site, or
  ``null`` (sandboxed documents, some redirects), is refused: the console's own origin (as the request names
  it, after ``CONSOLE_TRUSTED_PROXIES``) and ``CONSOLE_TRUSTED_ORIGINS`` are accepted.
- **Headers**: a strict Content-Security-Policy (no script at all; remote images blocked, so viewing an email
  never registers an open), no framing, no sniffing, no referrer to other sites, no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from flask import Flask, Response, abort, g, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeTimedSerializer

from console_app.settings import ConsoleSettings, origin_of

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 8 * 3600
SESSION_COOKIE = "mailworker_console_session"
_SID = "sid"
REALM = 'Basic realm="mailworker console", charset="UTF-8"'
_REFUSED_CSRF = "missing or invalid CSRF token: reload the page and try again"

CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: The policy inside an HTML body's sandboxed iframe (on top of the page's own, which srcdoc inherits).
BODY_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": under it browsers send ``Origin: null`` with the console's own form posts, which the
    # origin check refuses. "same-origin" gives other sites no referrer and the console its own origin.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def _subkey(settings: ConsoleSettings, purpose: bytes) -> bytes:
    """A key of its own for each use of the secret (cookie signing, CSRF binding)."""
    return hmac.new(settings.secret_key, b"mailworker-console\0" + purpose, hashlib.sha256).digest()


def _serializer(settings: ConsoleSettings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_subkey(settings, b"csrf-token"), salt="mailworker-console-csrf")


class LoginThrottle:
    """Failed logins per client address in a sliding window (thread-safe; in memory, so per process)."""

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None or len(times) < self.max_failures:
                return None
            return max(0.0, times[-self.max_failures] + self.window - now)

    def failed(self, address: str) -> bool:
        """Count one failure; True when it is the one that starts the throttle."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None:
                if len(self._failures) >= self.max_addresses:
                    self._forget_some(now)
                times = self._failures[address] = deque(maxlen=self.max_failures)
            times.append(now)
            return len(times) == self.max_failures

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _forget_some(self, now: float) -> None:
        """Bound the memory a flood of addresses can take: drop expired entries, then the oldest ones."""
        for address in list(self._failures):
            self._recent(address, now)
        while len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, ``Secure`` whenever the request came over https (directly, or as
    a trusted proxy says)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure) or bool(app.config["SESSION_COOKIE_SECURE"])


def credentials_ok(settings: ConsoleSettings, username: str | None, password: str | None) -> bool:
    user_ok = hmac.compare_digest((username or "").encode(), settings.username.encode())
    password_ok = hmac.compare_digest((password or "").encode(), settings.password.encode())
    return user_ok and password_ok


def _binding(settings: ConsoleSettings, sid: str, user: str) -> str:
    message = b"csrf\0" + sid.encode() + b"\0" + user.encode()
    return hmac.new(_subkey(settings, b"csrf-binding"), message, hashlib.sha256).hexdigest()


def _session_id() -> str | None:
    sid = session.get(_SID)
    return sid if isinstance(sid, str) and len(sid) >= 32 else None


def csrf_token() -> str:
    """The token for this page's forms (starts the session when there is none yet)."""
    settings: ConsoleSettings = g.console_settings
    token = g.get("csrf_token_value")
    if token is None:
        sid = _session_id()
        if sid is None:
            sid = session[_SID] = secrets.token_urlsafe(32)
        token = g.csrf_token_value = str(_serializer(settings).dumps(_binding(settings, sid, g.console_user)))
    return token


def _check_origin(settings: ConsoleSettings) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser (or an old one): the session-bound token decides
    theirs = origin_of(origin) if origin.strip().lower() != "null" else None
    allowed = {origin_of(request.host_url)} | {origin_of(o) for o in settings.trusted_origins}
    if theirs is None or theirs not in allowed:
        shown = origin if len(origin) <= 100 else origin[:100] + "..."
        abort(403, f"cross-site request refused: Origin {shown!r} is not this console's "
                   f"({request.host_url.rstrip('/')}); behind a proxy set CONSOLE_TRUSTED_PROXIES or "
                   "CONSOLE_TRUSTED_ORIGINS")


def _check_csrf(settings: ConsoleSettings) -> None:
    _check_origin(settings)
    sid = _session_id()
    token = request.form.get(CSRF_FIELD, "")
    try:
        bound = _serializer(settings).loads(token, max_age=CSRF_MAX_AGE)
    except BadSignature:
        abort(400, _REFUSED_CSRF)
    if sid is None or not isinstance(bound, str) or not hmac.compare_digest(
            bound.encode(), _binding(settings, sid, g.console_user).encode()):
        abort(400, _REFUSED_CSRF)


def _too_many(wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    return Response(f"too many failed logins from your address: try again in {seconds} s\n", 429,
                    {"Retry-After": str(seconds), "Content-Type": "text/plain; charset=utf-8"})


def install(app: Flask, settings: ConsoleSettings, clock: Callable[[], float] | None = None) -> LoginThrottle:
    """Authentication, throttle, session, CSRF and headers on ``app``; returns the login throttle."""
    throttle = LoginThrottle(settings.login_max_failures, settings.login_failure_window, clock or time.monotonic)
    app.secret_key = _subkey(settings, b"session-cookie")
    app.session_interface = _SessionInterface()
    app.config.update(SESSION_COOKIE_NAME=SESSION_COOKIE, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict")

    @app.before_request
    def _authenticate() -> Response | None:
        g.console_settings = settings
        if request.path == "/metrics" and settings.metrics_public:
            g.console_user = "metrics"
            return None
        address = request.remote_addr or "unknown"
        wait = throttle.retry_after(address)
        if wait is not None:
            return _too_many(wait)
        auth = request.authorization
        if auth is None or auth.type != "basic" or not credentials_ok(settings, auth.username, auth.password):
            if auth is not None and throttle.failed(address):
                log.warning("console: %d failed logins from %s within %g s: refusing it for a while",
                            settings.login_max_failures, address, settings.login_failure_window)
            return Response("authentication required\n", 401, {"WWW-Authenticate": REALM,
                                                                "Content-Type": "text/plain; charset=utf-8"})
        throttle.succeeded(address)
        g.console_user = settings.username
        if request.method not in {"GET", "HEAD", "OPTIONS"}:
            _check_csrf(settings)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["CSRF_FIELD"] = CSRF_FIELD
    return throttle
