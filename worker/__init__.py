"""mailworker: transactional email delivery through SMTP2Go with SMTP fallback, tracked to the recipient.

Public API::

    from worker import enqueue_email, enqueue_many, get_email_status, get_email_stats, cancel_email, InvalidEmail

Importing ``worker`` has no side effects: nothing connects and no environment is read until a call needs it.

Where things live: ``api`` (what applications call), ``sending`` (the message state machine, delivery,
protections, transports), ``tracking`` (SMTP2Go events, suppressions, stats), ``operations`` (sweeper,
reconciliation, requeue and purge), ``cli`` (the ``mailworker`` command), ``infrastructure`` (settings,
database, models, crypto, logging), ``devtools`` (dev stack and SMTP2Go simulator, never loaded in production);
``tasks`` holds the Celery tasks and ``celery_app`` the Celery application.
"""

from datetime import datetime
from typing import Any

from worker.api.bulk import enqueue_many
from worker.api.cancel import cancel_email
from worker.api.enqueue import enqueue_email, get_email_status
from worker.celery_app import app
from worker.errors import InvalidEmail

celery = app  # `celery -A worker` looks for `app` or `celery`


def get_email_stats(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Totals and rates over messages queued in [since, until) (see ``worker.tracking.stats``)."""
    from worker.tracking.stats import get_email_stats as _stats

    return _stats(since=since, until=until)


__all__ = ["InvalidEmail", "app", "cancel_email", "celery", "enqueue_email", "enqueue_many", "get_email_stats",
           "get_email_status"]
