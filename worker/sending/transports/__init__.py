"""Transports behind one small interface (:mod:`worker.sending.transports.base`).

Each transport (:mod:`.smtp2go`, :mod:`.smtp`) is a class built from settings with its credentials, whose
keyword-only ``send(*, email)`` returns an outcome: :class:`Accepted`, :class:`NotSent` or :class:`Unknown`;
operator problems raise :class:`~worker.errors.ConfigurationError`. :func:`choose_transport` is the one policy
that picks a transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings
from worker.infrastructure.models import Message, Transport
from worker.infrastructure.modules import Smtp2GoConfig
from worker.sending.transports.base import (
    TRACKING_HEADER,
    Accepted,
    MailTransport,
    NotSent,
    Outcome,
    OutgoingAttachment,
    OutgoingEmail,
    Unknown,
)

if TYPE_CHECKING:
    from worker.sending.jobs import SendJob

__all__ = ["TRACKING_HEADER", "Accepted", "MailTransport", "NotSent", "Outcome", "OutgoingAttachment",
           "OutgoingEmail", "Unknown", "choose_transport"]


def choose_transport(message: Message | SendJob, smtp2go: Smtp2GoConfig, settings: Settings) -> Transport:
    """The transport for this attempt.

    SMTP2Go when its module is enabled and has an API key, unless this message already gave up on the API
    (permanent error or retries used up); otherwise the SMTP relay. Neither available is an operator error.
    """
    if smtp2go.usable and not message.api_abandoned:
        return Transport.SMTP2GO
    if settings.smtp_configured:
        return Transport.SMTP
    if message.api_abandoned and smtp2go.usable:
        raise ConfigurationError("SMTP2Go gave up on this message and no SMTP relay (SMTP_HOST) is configured")
    raise ConfigurationError(
        "no transport configured: enable the SMTP2Go module (SMTP2GO_API_KEY) or set SMTP_HOST"
    )
