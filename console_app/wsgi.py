"""WSGI entry point for any server: ``gunicorn console_app.wsgi:app`` (``mailworker console`` does the same)."""

from __future__ import annotations

from console_app import create_app
from worker.infrastructure.redaction import install
from worker.infrastructure.settings_spec import read

install(None, level=read("LOG_LEVEL").upper())

app = create_app()
