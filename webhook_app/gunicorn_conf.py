"""Gunicorn settings for the public ``web`` process (the Procfile's ``web`` line).

``gunicorn --config python:webhook_app.gunicorn_conf webhook_app.wsgi:app``

The receiver faces the internet without a buffering proxy in front, so no client may hold a worker: an
event-loop worker (:class:`webhook_app.gunicorn_worker.WebhookWorker`, gunicorn's gevent worker plus a header
deadline on every connection and a body deadline on every request) serves up to ``WEB_WORKER_CONNECTIONS``
connections per process, and every way of keeping one of them busy without sending a webhook is bounded in
time or size. docs/operations.md ("The web process") says what each limit protects against.

Every value comes from the environment (read when gunicorn loads this module, in the master):

=========================== ======= =================================================================
variable                    default meaning
=========================== ======= =================================================================
``WEB_BIND``                        listen address; default ``0.0.0.0:$PORT`` (``PORT`` default 8000)
``WEB_CONCURRENCY``         2       worker processes (one per core)
``WEB_WORKER_CONNECTIONS``  1000    open connections per worker process; more wait in the listen queue
``WEB_HEADER_TIMEOUT``      5       seconds from accepting a connection to its first request's last header
``WEB_KEEPALIVE``           5       whole seconds a kept-alive connection may take, after a response, to send the
                                    next request's headers (idle time included); minimum 1
``WEB_BODY_TIMEOUT``        10      seconds from the end of the headers to the last byte of the body
``WEB_MAX_HEADER_BYTES``    8190    longest header line (name + value); longer is 431
``WEB_MAX_HEADER_FIELDS``   50      most header fields in one request; more is 400
``WEB_MAX_REQUEST_LINE``    4094    longest request line (method, path, version); longer is 400
``WEB_TIMEOUT``             30      a worker whose event loop does not come back for this long is restarted
``WEB_GRACEFUL_TIMEOUT``    10      seconds open requests get to finish on shutdown
=========================== ======= =================================================================

The body size cap is the application's own (``WEBHOOK_MAX_BODY_BYTES``, 1 MiB): it answers 413 before reading.
"""

from __future__ import annotations

import os


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """A positive number of seconds from the environment; empty or unset gives the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from err
    return max(minimum, value)


def env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from err
    return max(minimum, value)


def header_timeout() -> float:
    return env_float("WEB_HEADER_TIMEOUT", 5.0, minimum=0.5)


def body_timeout() -> float:
    return env_float("WEB_BODY_TIMEOUT", 10.0, minimum=0.5)


# ------------------------------------------------------------------------------------ gunicorn settings

wsgi_app = "webhook_app.wsgi:app"
bind = [os.environ.get("WEB_BIND", "").strip() or f"0.0.0.0:{os.environ.get('PORT', '').strip() or 8000}"]
workers = env_int("WEB_CONCURRENCY", 2)
worker_class = "webhook_app.gunicorn_worker.WebhookWorker"
worker_connections = env_int("WEB_WORKER_CONNECTIONS", 1000)
# gunicorn's async workers apply no timeout at all to reading a request when keep-alive is 0: never allow that.
keepalive = env_int("WEB_KEEPALIVE", 5, minimum=1)
limit_request_field_size = env_int("WEB_MAX_HEADER_BYTES", 8190, minimum=256)
limit_request_fields = env_int("WEB_MAX_HEADER_FIELDS", 50)
limit_request_line = env_int("WEB_MAX_REQUEST_LINE", 4094, minimum=256)
timeout = env_int("WEB_TIMEOUT", 30)
graceful_timeout = env_int("WEB_GRACEFUL_TIMEOUT", 10)
