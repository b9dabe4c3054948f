"""Gunicorn settings for the public ``web`` process (the Procfile's ``web`` line).

``gunicorn --config python:webhook_app.gunicorn_conf webhook_app.wsgi:app``

The receiver faces the internet without a buffering proxy in front, so no client may hold a worker: an
event-loop worker (:class:`webhook_app.gunicorn_worker.WebhookWorker`, gunicorn's gevent worker plus a header
deadline on every connection and a body deadline on every request) serves up to ``WEB_WORKER_CONNECTIONS``
connections per process, and every way of keeping one of them busy without sending a webhook is bounded in
time or size. docs/operations.md ("The web process") says what each limit protects against.

Every value comes from the environment, read when gunicorn loads this module (in the master) through the
settings definition (``worker.infrastructure.settings_spec``, section "web"): docs/configuration.md lists the
``WEB_*`` variables, their defaults and bounds. The body size cap is the application's own
(``WEBHOOK_MAX_BODY_BYTES``, 1 MiB): it answers 413 before reading.
"""

from __future__ import annotations

from worker.infrastructure.settings_spec import read


def header_timeout() -> float:
    return float(read("WEB_HEADER_TIMEOUT"))


def body_timeout() -> float:
    return float(read("WEB_BODY_TIMEOUT"))


# ------------------------------------------------------------------------------------ gunicorn settings

wsgi_app = "webhook_app.wsgi:app"
bind = [read("WEB_BIND") or f"0.0.0.0:{read('PORT')}"]
workers = read("WEB_CONCURRENCY")
worker_class = "webhook_app.gunicorn_worker.WebhookWorker"
worker_connections = read("WEB_WORKER_CONNECTIONS")
# gunicorn's async workers apply no timeout at all to reading a request when keep-alive is 0: never allow that
# (the declaration raises WEB_KEEPALIVE to at least 1).
keepalive = read("WEB_KEEPALIVE")
limit_request_field_size = read("WEB_MAX_HEADER_BYTES")
limit_request_fields = read("WEB_MAX_HEADER_FIELDS")
limit_request_line = read("WEB_MAX_REQUEST_LINE")
timeout = read("WEB_TIMEOUT")
graceful_timeout = read("WEB_GRACEFUL_TIMEOUT")
