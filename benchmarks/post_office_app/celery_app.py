"""The Celery app of the post_office project, the layout Celery's "First steps with Django" documents.

``app.autodiscover_tasks()`` finds ``post_office.tasks`` (``send_queued_mail``); Celery's Django fix-up calls
``django.setup()`` in the worker and closes stale database connections around each task.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.post_office_app.settings")

app = Celery("mwbench_post_office", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
