"""WSGI entry point: ``gunicorn webhook_app.wsgi:app`` (the Procfile's ``web`` process).

Gunicorn configures only its own loggers; without a handler our one-line-per-request log would vanish, so
give the root logger a plain stderr handler unless something already configured logging.
"""

from __future__ import annotations

import logging
import os

from webhook_app import create_app

if not logging.getLogger().handlers:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

app = create_app()
