"""mailworker: transactional email delivery through SMTP2Go with SMTP fallback, tracked to the recipient.

Public API::

    from worker import enqueue_email, get_email_status, get_email_stats, InvalidEmail
"""

from datetime import datetime
from typing import Any

from worker.config import apply_dev_env

apply_dev_env()

from worker.api import enqueue_email, get_email_status  # noqa: E402 - after apply_dev_env
from worker.celery_app import app  # noqa: E402
from worker.errors import InvalidEmail  # noqa: E402

celery = app  # `celery -A worker` looks for `app` or `celery`


def get_email_stats(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Totals and rates over messages queued in [since, until) (see ``worker.stats``)."""
    from worker.stats import get_email_stats as _stats

    return _stats(since=since, until=until)


__all__ = ["InvalidEmail", "app", "celery", "enqueue_email", "get_email_stats", "get_email_status"]
