"""The operator console: a server-rendered Flask app, separate from the public webhook receiver.

``create_app()`` builds it (app factory + the ``console`` blueprint); ``mailworker console`` serves it with
gunicorn (never Flask's development server); ``console_app.wsgi:app`` is the same app for any WSGI server.

Pages: ``/`` overview, ``/messages?q=`` search, ``/messages/<tracking_id>`` one message's story, ``/suppressions``,
and ``GET /metrics`` (Prometheus text). Every page is behind HTTP basic auth (``CONSOLE_BASIC_AUTH=user:password``;
the app refuses to start without it), every form carries a CSRF token, and every action is written to the
audit log (``worker.infrastructure.models.AuditEntry``). Failed logins are throttled per client address; behind
a reverse proxy, ``CONSOLE_TRUSTED_PROXIES`` says how many proxies' ``X-Forwarded-*`` headers to believe. See
:mod:`console_app.security` and docs/console.md.

``test_config`` keys (all optional): ``basic_auth`` ("user:password", replaces the environment),
``metrics_public``, ``publisher`` (callable taking a tracking id, instead of publishing to the broker),
``protection_state`` (callable returning the breaker/pause dict), ``health`` (callable returning a
:class:`console_app.health.Health`, instead of asking the broker and the workers), ``clock`` (monotonic seconds
for the login throttle), anything else is copied into ``app.config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from console_app.settings import ConsoleConfigError, ConsoleSettings, load_console_settings

__all__ = ["ConsoleConfigError", "ConsoleSettings", "create_app"]

if TYPE_CHECKING:
    from flask import Flask

_KNOWN_KEYS = {"basic_auth", "metrics_public", "publisher", "protection_state", "health", "clock"}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The console app; :class:`ConsoleConfigError` (one line) when ``CONSOLE_BASIC_AUTH`` is missing or bad."""
    from flask import Flask

    from console_app import security
    from console_app.views import bp, register_filters

    test_config = dict(test_config or {})
    settings = load_console_settings(basic_auth=test_config.get("basic_auth"),
                                     metrics_public=test_config.get("metrics_public"))
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024, SESSION_COOKIE_HTTPONLY=True)
    app.config.update({k: v for k, v in test_config.items() if k not in _KNOWN_KEYS})
    app.extensions["mailworker_console"] = settings
    app.extensions["mailworker_console_hooks"] = {
        "publisher": test_config.get("publisher"),
        "protection_state": test_config.get("protection_state"),
        "health": test_config.get("health"),
    }
    app.extensions["mailworker_console_throttle"] = security.install(app, settings, clock=test_config.get("clock"))
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    register_filters(app)
    app.register_blueprint(bp)
    return app
