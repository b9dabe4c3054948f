"""The Celery application (``celery -A worker worker`` finds it as ``worker.app``)."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_init

app = Celery("mailworker", include=["worker.tasks"])
app.config_from_object("celeryconfig")  # lazy: read when the configuration is first needed


@app.on_configure.connect
def _apply_dev_env(sender: Any = None, **_kwargs: Any) -> None:
    """A running ``mailworker dev`` publishes its broker in ``var/dev.env``; apply it before ``celeryconfig``
    reads the environment (at configure time, not at import)."""
    from worker.infrastructure.config import apply_dev_env

    apply_dev_env()

#: The running worker's consumer (set by :class:`_KeepConsumer`), whose event dispatcher knows whether task
#: events are on right now: off by default, switched on remotely by Flower while it runs.
_consumer: list[Any] = []


class _KeepConsumer(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        _consumer[:] = [c]


app.steps["consumer"].add(_KeepConsumer)


def task_event_dispatcher() -> Any | None:
    """The worker's event dispatcher when task events are enabled, else None (no one is watching)."""
    dispatcher = _consumer[0].event_dispatcher if _consumer else None
    if dispatcher is None or not dispatcher.enabled:
        return None
    if dispatcher.groups and "task" not in dispatcher.groups:
        return None
    return dispatcher


@worker_init.connect
def _check_settings(sender: Any = None, **_kwargs: Any) -> None:
    """Validate the settings when a worker starts: a missing DATABASE_URL or a lease shorter than the worst-case
    attempt stops the worker with one line, instead of failing its first task."""
    from worker.errors import ConfigurationError
    from worker.infrastructure.config import get_settings

    try:
        get_settings()
    except ConfigurationError as err:
        import sys

        print(f"mailworker: cannot start: {err}", file=sys.stderr)  # noqa: T201 - before logging is set up
        raise SystemExit(1) from err


@worker_init.connect
def _size_db_pool(sender: Any = None, **_kwargs: Any) -> None:
    """A thread-pool worker runs ``--concurrency`` sends at once, each on its own database connection."""
    pool = getattr(sender, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and any(kind in name for kind in ("thread", "gevent", "eventlet")):
        from worker.infrastructure.db import size_pool_for

        size_pool_for(concurrency)


@worker_process_init.connect
def _fresh_connections(**_kwargs: Any) -> None:
    """A forked pool process must not share its parent's database connections."""
    from worker.infrastructure.db import dispose_engines

    dispose_engines()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: Any = None, **_kwargs: Any) -> None:
    """Every handler the worker, beat or Flower log through drops secrets (see ``worker.infrastructure.redaction``)."""
    from worker.infrastructure.redaction import install

    install(logger)
