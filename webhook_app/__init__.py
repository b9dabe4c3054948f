"""The SMTP2Go webhook receiver: a thin Flask app that authenticates, parses and enqueues.

It never touches the database on the request path and never runs event processing itself: each event becomes
one ``mailworker.process_event`` task on the events queue. It needs only the broker URL and its webhook secret
(``SMTP2GO_WEBHOOK_SECRET``); ``DATABASE_URL`` is optional, and when set the SMTP2Go module's webhook secret is
also read from the database, in the background.

``test_config`` keys (all optional):

- ``secrets``: list of valid secrets (replaces the environment and the database module row)
- ``allow_unauthenticated``: accept unauthenticated webhooks when no secret is configured
- ``max_body_bytes``: body size cap (default ``WEBHOOK_MAX_BODY_BYTES``, 1 MiB)
- ``max_batch_events``: most events one JSON list may carry (default 1000)
- ``publisher``: callable taking one event dict (unit tests); ``broker_url``: publish to this broker instead
- ``secret_refresh_interval``: seconds between module-secret reloads (default 30)
- anything else is copied into ``app.config`` (e.g. ``TESTING``)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from webhook_app.auth import SecretStore
from webhook_app.views import EXTENSION, WebhookState, bp

if TYPE_CHECKING:
    from worker.infrastructure.config import ReceiverSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_EVENTS = 1000
DEFAULT_REFRESH_INTERVAL = 30.0
#: create_app waits this long for the first database read of the module secret, then serves regardless.
INITIAL_SECRET_LOAD_WAIT = 5.0

_KNOWN_KEYS = {"secrets", "allow_unauthenticated", "max_body_bytes", "max_batch_events", "publisher",
               "unsubscribe_publisher",
               "broker_url", "secret_refresh_interval"}


def load_module_secrets() -> tuple[str, ...]:
    """The SMTP2Go module's webhook secret(s) from the database (runs in the refresher thread only)."""
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import smtp2go_config

    with session_scope() as session:
        return smtp2go_config(session).webhook_secrets


def _secret_store(test_config: dict[str, Any], env_secrets: Iterable[str], has_database: bool) -> SecretStore:
    """The environment's secrets, plus the module row's when there is a database to read it from (a receiver
    deployed without DATABASE_URL takes its secrets from SMTP2GO_WEBHOOK_SECRET alone)."""
    if "secrets" in test_config:
        return SecretStore(test_config["secrets"] or ())
    if not has_database:
        return SecretStore(env_secrets)
    interval = float(test_config.get("secret_refresh_interval", DEFAULT_REFRESH_INTERVAL))
    store = SecretStore(env_secrets, loader=load_module_secrets, interval=interval)
    store.start(wait=INITIAL_SECRET_LOAD_WAIT)
    return store


def configure_logging(logger: logging.Logger | None = None) -> None:
    """Logging for the deployed receiver (``webhook_app.wsgi``): a stderr handler and the secret filter.

    Gunicorn configures only its own loggers; without a root handler our warnings would vanish, so add a plain
    stderr one at ``LOG_LEVEL`` (default INFO) unless something already configured logging. Every handler of
    ``logger`` (root by default) then gets ``worker.infrastructure.redaction``'s filter, as in the Celery
    processes, told the receiver's own secrets (webhook secrets, the broker's password): the filter learns the
    others from the full settings, which a receiver without DATABASE_URL does not load. It costs nothing per
    accepted webhook: their line is DEBUG and not emitted at the default level.
    """
    from worker.infrastructure.config import load_receiver_settings
    from worker.infrastructure.redaction import RedactingFilter, install
    from worker.infrastructure.settings_spec import read

    target = logger or logging.getLogger()
    install(target, level=read("LOG_LEVEL").upper())
    secrets = _log_secrets(load_receiver_settings())
    for handler in target.handlers:
        for filt in handler.filters:
            if isinstance(filt, RedactingFilter):
                filt.extra = set(filt.extra) | secrets


def _log_secrets(settings: ReceiverSettings) -> set[str]:
    from urllib.parse import urlsplit

    values = set(settings.smtp2go_webhook_secrets)
    for url in (settings.broker_url, settings.database_url or ""):
        for part in url.split(";"):
            try:
                values.add(urlsplit(part.strip()).password or "")
            except ValueError:
                continue
    return {v for v in values if len(v) >= 4}


def _register_error_handlers(app: Flask) -> None:
    """Every error is a short JSON object: no traceback or exception text ever reaches the client."""

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[Response, int]:
        code = err.code or 500
        return jsonify({"error": (err.name or "error").lower()}), code

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> tuple[Response, int]:
        log.error("unexpected error in the webhook receiver: %s", type(err).__name__, exc_info=err)
        return jsonify({"error": "internal error"}), 500


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the receiver; without ``test_config`` everything comes from the environment
    (``worker.infrastructure.config.load_receiver_settings``: no DATABASE_URL needed)."""
    from worker.infrastructure.config import load_receiver_settings

    test_config = dict(test_config or {})
    settings = load_receiver_settings()
    app = Flask(__name__)

    max_body = int(test_config.get("max_body_bytes", settings.webhook_max_body_bytes))
    # Werkzeug enforces this too on streamed (chunked) bodies: a second guard behind the view's own check.
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.config.update({k: v for k, v in test_config.items() if k not in _KNOWN_KEYS})

    publisher = test_config.get("publisher")
    if publisher is None:
        from worker.sending.publish import broker_write_url, publish_event

        # Without a URL publish_event looks up the write/broker URL in Celery's layered config on every call
        # (~2% of the receiver's CPU in the profile). The value is fixed once celeryconfig is loaded, so it is
        # looked up once here.
        broker_url = test_config.get("broker_url") or broker_write_url()
        publisher = functools.partial(publish_event, broker_url=broker_url)

    allow_unauthenticated = bool(test_config.get("allow_unauthenticated",
                                                 settings.allow_unauthenticated_webhooks))
    state = WebhookState(
        secrets=_secret_store(test_config, settings.smtp2go_webhook_secrets, settings.database_url is not None),
        publisher=publisher,
        allow_unauthenticated=allow_unauthenticated,
        max_body_bytes=max_body,
        max_batch_events=int(test_config.get("max_batch_events", DEFAULT_MAX_BATCH_EVENTS)),
    )
    app.extensions[EXTENSION] = state

    if state.open_door:
        log.warning("!!! UNAUTHENTICATED WEBHOOKS ALLOWED: no webhook secret is configured and "
                    "MAILWORKER_ALLOW_UNAUTHENTICATED_WEBHOOKS is on; anyone can post events. "
                    "Local development only !!!")
    elif not state.secrets.configured:
        where = ("SMTP2GO_WEBHOOK_SECRET or the module's webhook_secret" if settings.database_url
                 else "SMTP2GO_WEBHOOK_SECRET; without DATABASE_URL the module's webhook_secret is not read")
        log.warning("no SMTP2Go webhook secret configured (%s): every webhook is refused with 401 until one is set",
                    where)

    app.register_blueprint(bp)
    from webhook_app import unsubscribe

    app.extensions[unsubscribe.EXTENSION] = (test_config.get("unsubscribe_publisher")
                                             or unsubscribe.default_publisher(test_config.get("broker_url")))
    app.register_blueprint(unsubscribe.bp)
    _register_error_handlers(app)
    return app


__all__ = ["configure_logging", "create_app"]
