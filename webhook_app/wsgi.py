"""WSGI entry point: ``gunicorn webhook_app.wsgi:app`` (the Procfile's ``web`` process).

Logging is set up first (a stderr handler unless one exists, and the secret-redacting filter on every root
handler): see :func:`webhook_app.configure_logging`.
"""

from __future__ import annotations

from webhook_app import configure_logging, create_app

configure_logging()

app = create_app()
