"""Transports behind one small interface.

Each transport module exposes a keyword-only ``send(*, email, ...)`` that returns the provider's message id or
raises an error from :mod:`worker.errors`. :func:`choose_transport` is the one policy that picks a transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings
from worker.infrastructure.models import Message, RecipientStatus, Transport
from worker.infrastructure.modules import Smtp2GoConfig

if TYPE_CHECKING:
    from worker.sending.jobs import SendJob

TRACKING_HEADER = "X-Mailworker-Id"


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    content: bytes = field(repr=False)
    mimetype: str


@dataclass(frozen=True)
class OutgoingEmail:
    """A transport-neutral snapshot of what to send (detached from the ORM session)."""

    tracking_id: str
    sender: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str | None
    text_body: str | None = field(repr=False)
    html_body: str | None = field(repr=False)
    reply_to: str | None
    headers: dict[str, str]
    attachments: list[OutgoingAttachment] = field(repr=False)
    template_id: str | None
    template_data: dict[str, Any] | None
    message_id_header: str | None

    @property
    def envelope_recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]

    @classmethod
    def from_message(cls, message: SendJob) -> OutgoingEmail:
        live = [r for r in message.recipients if r.status == RecipientStatus.QUEUED]

        def of(kind: str) -> list[str]:
            return [r.formatted for r in live if r.kind.value == kind]

        return cls(
            tracking_id=message.id,
            sender=message.sender,
            to=of("to"),
            cc=of("cc"),
            bcc=of("bcc"),
            subject=message.subject,
            text_body=message.text_body,
            html_body=message.html_body,
            reply_to=message.reply_to,
            headers=dict(message.headers or {}),
            attachments=[
                OutgoingAttachment(a.filename, a.content or b"", a.mimetype) for a in message.attachments
            ],
            template_id=message.template_id,
            template_data=message.template_data,
            message_id_header=message.message_id_header,
        )


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
