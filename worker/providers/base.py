"""The transport interface: one email in, one outcome out.

A transport is an object with a ``kind`` (:class:`~worker.infrastructure.models.Transport`) and a keyword-only
``send(*, email, departing=None) -> Outcome``. It is built once from settings with its credentials, so the delivery
core never handles keys or passwords. The outcome is one of three plain values:

- :class:`Accepted` -- the provider took the message (for at least one recipient): its id, plus the recipients
  it refused for good (``refused``) or asked us to try again later (``deferred``);
- :class:`NotSent` -- nothing was sent: ``retryable`` says whether the same transport may take it later
  (``retry_after`` when the provider said when), ``refused``/``deferred`` name per-recipient refusals when
  the provider refused every recipient; ``unbuildable`` when the message could not even be built into a
  request (before ``departing``): the message itself is at fault, so it fails;
- :class:`Unknown` -- the request may have been acted on (a timeout after it left): never resend blindly.

Operator problems (a refused API key, an untrusted relay certificate) are not outcomes: they raise
:class:`~worker.errors.ConfigurationError` (:class:`~worker.errors.CredentialsRejected`), because they say
nothing about the message and must hold it, never fail it.

``departing`` is called exactly once, just before the message can leave (the delivery core records the
attempt as in flight there). A transport builds the whole request (MIME message, JSON body) *before* calling it,
so a build error is never mistaken for a send that may have happened. A transport that answers without sending
anything -- a wrapper whose breaker is open, a rate limit, a message that cannot be built -- returns
:class:`NotSent` without calling it, and the attempt is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from worker.errors import (
    AmbiguousDeliveryError,
    DeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.infrastructure.models import RecipientStatus, Transport

if TYPE_CHECKING:
    from worker.sending.jobs import SendJob

#: The header that carries our tracking id on every message, whatever the transport.
TRACKING_HEADER = "X-Mailworker-Id"


# ------------------------------------------------------------------------------------------------- the email


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


# ----------------------------------------------------------------------------------------------- the outcomes


@dataclass(frozen=True)
class Accepted:
    """The provider took the message. ``refused`` (final) and ``deferred`` (retry those recipients only) map a
    bare envelope address to the provider's reply; every other recipient was accepted."""

    provider_id: str
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NotSent:
    """Nothing was sent.

    ``retryable``: the same transport may take it later (after ``retry_after`` seconds when the provider said).
    ``refused``/``deferred``: the provider refused every recipient, these for good and those for now.
    ``rate_limited``: the provider asked every sender to slow down (HTTP 429).
    ``relay_may_take``: the transport declined before trying (its breaker is open), not because of this
    message: another transport may send this attempt while the message keeps this one.
    ``problem``: why it declined, when an operator must fix it (a refused key behind an open breaker).
    ``unbuildable``: the message could not be built into a request, before anything left (see
    :func:`unbuildable`); sending it again cannot help.
    """

    retryable: bool
    reason: str
    retry_after: float | None = None
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)
    rate_limited: bool = False
    relay_may_take: bool = False
    problem: str | None = None
    unbuildable: bool = False


@dataclass(frozen=True)
class Unknown:
    """The request may have been acted on and no answer says whether: reconciliation must decide."""

    reason: str


Outcome = Accepted | NotSent | Unknown


class MailTransport(Protocol):
    """What the delivery core sends through (see the module docstring)."""

    @property
    def kind(self) -> Transport: ...

    def send(self, *, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome: ...


def unbuildable(provider: str, err: Exception) -> NotSent:
    """The outcome for an error raised while building the request, before anything left the process: not sent,
    for good. The reason is one line naming the error (a transport's own refusal keeps its description)."""
    if isinstance(err, DeliveryError):
        reason = err.describe()
    else:
        reason = f"{provider}: the message could not be built, nothing was sent ({type(err).__name__}: {err})"
    return NotSent(retryable=False, reason=" ".join(reason.split()), unbuildable=True)


def outcome_of(err: DeliveryError) -> NotSent | Unknown:
    """The outcome a transport's classified :class:`~worker.errors.DeliveryError` stands for."""
    if isinstance(err, AmbiguousDeliveryError):
        return Unknown(err.describe())
    if isinstance(err, RecipientsRefused):
        return NotSent(retryable=bool(err.deferred), reason=err.describe(), refused=dict(err.refused),
                       deferred=dict(err.deferred))
    if isinstance(err, RetryableDeliveryError):
        return NotSent(retryable=True, reason=err.describe(), retry_after=err.retry_after)
    return NotSent(retryable=False, reason=err.describe())
