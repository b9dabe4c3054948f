"""The Celery application (``celery -A worker worker`` finds it as ``worker.app``)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

app = Celery("mailworker", include=["worker.tasks"])
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections(**_kwargs: Any) -> None:
    """A forked pool process must not share its parent's database connections."""
    from worker.db import dispose_engines

    dispose_engines()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: Any = None, **_kwargs: Any) -> None:
    """Every handler the worker, beat or Flower log through drops secrets (see ``worker.redaction``)."""
    from worker.redaction import install

    install(logger)
