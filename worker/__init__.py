"""mailworker: transactional email delivery through SMTP2Go with SMTP fallback, tracked to the recipient.

Public API::

    from worker import enqueue_email, get_email_status, get_email_stats, InvalidEmail
"""

from worker.api import enqueue_email, get_email_status
from worker.celery_app import app
from worker.errors import InvalidEmail

celery = app  # `celery -A worker` looks for `app` or `celery`


def get_email_stats(since=None, until=None):  # type: ignore[no-untyped-def]
    from worker.stats import get_email_stats as _stats

    return _stats(since=since, until=until)


__all__ = ["InvalidEmail", "app", "celery", "enqueue_email", "get_email_stats", "get_email_status"]
