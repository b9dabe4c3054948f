"""Django settings for the post_office anchor row: everything it needs and nothing else.

Read from the environment :func:`benchmarks.common.configure_env` sets up (broker, fake SMTP2Go URL), plus
``MWBENCH_PO_DB`` (default ``mwbench_po``, our own database), ``MWBENCH_PO_QUEUE`` and
``MWBENCH_PO_THREADS`` (post_office's ``THREADS_PER_PROCESS``: how many sends it has in flight, set to the
row's concurrency).
"""

from __future__ import annotations

import os
import sys
import tempfile

import pymysql

from benchmarks.common import API_KEY, DRIVER, MYSQL_HOST, PREFIX, SENDER

# Django's mysql backend on the driver the product uses in this run: PyMySQL by default (installed as MySQLdb),
# mysqlclient -- Django's own recommendation -- with MWBENCH_DRIVER=mysqldb, so both rows use the same driver.
# On PyMySQL, a process that already loaded mysqlclient forgets it first, or Django would mix mysqlclient's
# submodules with PyMySQL's connection.
if DRIVER != "mysqldb":
    for _name in [m for m in sys.modules if m == "MySQLdb" or m.startswith("MySQLdb.")]:
        del sys.modules[_name]
    pymysql.install_as_MySQLdb()

SECRET_KEY = "mwbench-post-office-not-secret"  # noqa: S105 - a local benchmark project
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = ["post_office"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ.get("MWBENCH_PO_DB", "mwbench_po"),
        "USER": "root",
        "PASSWORD": "",
        "HOST": MYSQL_HOST,
        "PORT": "3306",
        "OPTIONS": {"charset": "utf8mb4"},
    }
}
# post_office renders subject and bodies with Django's template engine when an email is created.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

EMAIL_BACKEND = "post_office.EmailBackend"  # Django's send_mail() queues through post_office too
DEFAULT_FROM_EMAIL = SENDER
SMTP2GO_API_URL = os.environ.get("SMTP2GO_API_URL", "http://127.0.0.1:9/v3").rstrip("/")
SMTP2GO_API_KEY = os.environ.get("SMTP2GO_API_KEY", API_KEY)

_LOCK_DIR = os.path.join(tempfile.gettempdir(), PREFIX)
os.makedirs(_LOCK_DIR, exist_ok=True)
POST_OFFICE = {
    "BACKENDS": {"default": "benchmarks.post_office_app.smtp2go_backend.SMTP2GoEmailBackend"},
    "CELERY_ENABLED": True,
    "THREADS_PER_PROCESS": int(os.environ.get("MWBENCH_PO_THREADS", "16")),
    # Our own lock file (the default, /tmp/post_office.lock, is machine-wide); everything else is a default:
    # BATCH_SIZE 100, LOG_LEVEL 2 (a Log row per sent email), MAX_RETRIES 0, SENDING_ORDER ["-priority"].
    "LOCK_FILE_NAME": os.path.join(_LOCK_DIR, "post_office"),
}

# Celery, read by celery_app with namespace="CELERY". The broker settings are the bare baseline's
# (benchmarks.baseline_app) and mailworker's: JSON, late acks, prefetch 1, reject on worker loss, no results.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("MWBENCH_PO_QUEUE", f"{PREFIX}.post_office")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
