"""WSGI entry point for any server: ``gunicorn console_app.wsgi:app`` (``mailworker console`` does the same)."""

from __future__ import annotations

import os

from console_app import create_app
from worker.infrastructure.redaction import install

install(None, level=os.environ.get("LOG_LEVEL", "INFO").upper())

app = create_app()
