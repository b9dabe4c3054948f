"""The SMTP relay's settings (``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USERNAME``, ``SMTP_PASSWORD``,
``SMTP_SECURITY``, ``SMTP_TIMEOUT``, ``SMTP_CA_FILE``; ``SMTP_UNKNOWN_RESEND_AFTER`` for unknown outcomes)."""

from __future__ import annotations

from worker.infrastructure.config import Settings


def configured(settings: Settings) -> bool:
    return bool(settings.smtp_host)
