"""The SMTP relay provider: :mod:`.transport` (``smtplib``, STARTTLS or implicit TLS) and :mod:`.settings`.
It sends no webhooks, and no API can tell whether a relay that took the DATA but never answered queued the
message: its reconciler sends such a message again after ``SMTP_UNKNOWN_RESEND_AFTER`` (at least once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from worker.infrastructure.config import Settings
from worker.infrastructure.models import utcnow
from worker.providers.base import Held, ParkedSend, ProviderKind, Transport, Verdict
from worker.providers.smtp import settings as smtp_settings
from worker.providers.smtp.transport import SmtpTransport


def _transport(name: str, variant: str, conn: Connection, settings: Settings) -> Transport | Held | None:
    if not smtp_settings.configured(settings):
        return None
    assert settings.smtp_host is not None
    return SmtpTransport(host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
                         password=settings.smtp_password, security=settings.smtp_security,
                         timeout=settings.smtp_timeout, ca_file=settings.smtp_ca_file)


@dataclass(frozen=True)
class _ResendAfter:
    settings: Settings

    def settle(self, parked: ParkedSend) -> Verdict:
        waited = (utcnow() - parked.parked_since).total_seconds()
        after = self.settings.smtp_unknown_resend_after
        if waited < after:
            return Verdict("wait", "the relay's outcome cannot be asked for")
        return Verdict("not_sent", f"the SMTP relay took the DATA but never answered; no API can check, so it is "
                       f"sent again after {waited:.0f}s (SMTP_UNKNOWN_RESEND_AFTER={after:g}s): at least once, a "
                       "recipient may get it twice")

    def fill_missing_events(self, record: Any) -> int:
        return 0


def _reconciler(name: str, variant: str, conn: Connection, settings: Settings, **options: Any) -> _ResendAfter:
    return _ResendAfter(settings)


PROVIDER = (ProviderKind(kind="smtp", transport=_transport, reconciler=_reconciler,
                             worst_case_seconds=lambda s: 4 * s.smtp_timeout))
