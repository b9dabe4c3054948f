"""Basic auth on every request, CSRF tokens on every form, security headers on every answer.

- **Auth**: HTTP basic, compared in constant time against ``CONSOLE_BASIC_AUTH``. ``/metrics`` is exempt only
  with ``METRICS_PUBLIC=true``. The console has no login page and no session cookie.
- **CSRF**: every POST must carry ``csrf_token``: the user name signed with a key only the server knows, and
  time-stamped (valid for :data:`CSRF_MAX_AGE`). A cross-site page can make the browser send the basic-auth
  credentials, but it cannot read a page to learn the token. A POST whose ``Origin`` names another site is
  refused as well.
- **Headers**: a strict Content-Security-Policy (no script at all; remote images blocked, so viewing an email
  never registers an open), no framing, no sniffing, no referrer, no caching.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import Flask, Response, abort, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from console_app.settings import ConsoleSettings

CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 8 * 3600
REALM = 'Basic realm="mailworker console", charset="UTF-8"'

CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: The policy inside an HTML body's sandboxed iframe (on top of the page's own, which srcdoc inherits).
BODY_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def _serializer(settings: ConsoleSettings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt="mailworker-console-csrf")


def credentials_ok(settings: ConsoleSettings, username: str | None, password: str | None) -> bool:
    user_ok = hmac.compare_digest((username or "").encode(), settings.username.encode())
    password_ok = hmac.compare_digest((password or "").encode(), settings.password.encode())
    return user_ok and password_ok


def csrf_token() -> str:
    settings: ConsoleSettings = g.console_settings
    token = g.get("csrf_token_value")
    if token is None:
        token = g.csrf_token_value = str(_serializer(settings).dumps(g.console_user))
    return token


def _check_csrf(settings: ConsoleSettings) -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        own = urlsplit(request.host_url)
        theirs = urlsplit(origin)
        if (theirs.scheme, theirs.netloc) != (own.scheme, own.netloc):
            abort(403, "cross-site request refused")
    token = request.form.get(CSRF_FIELD, "")
    try:
        user = _serializer(settings).loads(token, max_age=CSRF_MAX_AGE)
    except BadSignature:
        abort(400, "missing or invalid CSRF token: reload the page and try again")
    if not isinstance(user, str) or not hmac.compare_digest(user.encode(), g.console_user.encode()):
        abort(400, "missing or invalid CSRF token: reload the page and try again")


def install(app: Flask, settings: ConsoleSettings) -> None:
    @app.before_request
    def _authenticate() -> Response | None:
        g.console_settings = settings
        if request.path == "/metrics" and settings.metrics_public:
            g.console_user = "metrics"
            return None
        auth = request.authorization
        if auth is None or auth.type != "basic" or not credentials_ok(settings, auth.username, auth.password):
            return Response("authentication required\n", 401, {"WWW-Authenticate": REALM,
                                                                "Content-Type": "text/plain; charset=utf-8"})
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
