"""The one vocabulary between the core and a provider: the email, the outcomes, the transport, the reconciler
and the normalised event.

A transport is built for one attempt with its credentials (the core never handles keys or passwords); its
``send(email, departing=None)`` returns one outcome and raises nothing:

- :class:`Accepted` -- the provider took the message (for at least one recipient): its id, plus the recipients
  it refused for good (``refused``) or asked us to try again later (``deferred``);
- :class:`NotSent` -- nothing was sent: ``retryable`` says whether the same provider may take it later
  (``retry_after`` when it said when); ``refused``/``deferred`` name per-recipient refusals when every recipient
  was refused; ``unbuildable`` when the message could not even be built into a request (before ``departing``):
  the message itself is at fault, so it fails; ``declined`` when the provider was not tried at all (its breaker
  is open): another provider may send this attempt;
- :class:`Unknown` -- the request may have been acted on (a timeout after it left): never resend blindly;
- :class:`Held` -- an operator problem (a refused key, an untrusted certificate, a bad URL): says nothing about
  the message, which waits (never fails) until it is fixed.

``departing`` is called exactly once, just before the message can leave (the core records the attempt as in
flight there). A transport builds the whole request *before* calling it, so a build error is never mistaken for
a send that may have happened; an answer given without sending anything calls it not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.infrastructure.models import EventType, RecipientStatus

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

        headers = dict(message.headers or {})
        if message.list_id:
            from worker.compliance.tokens import unsubscribe_headers

            # One token per message: a message to several recipients carries the first To recipient's link.
            first = next((r.address for r in live if r.kind.value == "to"), None)
            headers.update(unsubscribe_headers(first or "", message.list_id))
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
            headers=headers,
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
    ``declined``: the provider was not tried (its breaker is open), not because of this message: the next
    provider may send this attempt. ``problem``: why, when an operator must fix it (a refused key behind an open
    breaker).
    ``unbuildable``: the message could not be built into a request, before anything left (see
    :func:`unbuildable`); sending it again cannot help.
    """

    retryable: bool
    reason: str
    retry_after: float | None = None
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)
    rate_limited: bool = False
    declined: bool = False
    problem: str | None = None
    unbuildable: bool = False


@dataclass(frozen=True)
class Unknown:
    """The request may have been acted on and no answer says whether: reconciliation must decide."""

    reason: str


@dataclass(frozen=True)
class Held:
    """An operator problem stopped the attempt (a refused key, a missing setting): the message waits for it."""

    problem: str


Outcome = Accepted | NotSent | Unknown | Held


class Transport(Protocol):
    """What the core sends through: one provider's transport for one attempt (see the module docstring)."""

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome: ...


def held(err: ConfigurationError) -> Held:
    return Held(str(err))


# ------------------------------------------------------------------------------------------ reconciliation


@dataclass(frozen=True)
class ParkedSend:
    """A send whose outcome is unknown, as a reconciler sees it."""

    tracking_id: str
    provider: str
    parked_since: datetime
    earliest_send: datetime  # it cannot have been handed over before this (queued_at, or send_at)
    sent_to: list[str] = field(default_factory=list)  # recipients handed to the provider, in order


@dataclass(frozen=True)
class Verdict:
    """What a reconciler found: ``accepted`` (with the provider's id), ``not_sent`` (send it again: ``note``
    says why that is safe) or ``wait`` (undecided for now; ``unusable`` when the provider cannot be asked)."""

    kind: str
    note: str = ""
    provider_message_id: str | None = None
    unusable: bool = False


class Reconciler(Protocol):
    """Settles parked sends through one provider within one reconciliation run."""

    def settle(self, parked: ParkedSend) -> Verdict: ...

    def fill_missing_events(self, record: Callable[[NormalizedEvent], bool]) -> int:
        """Pass events the provider's webhooks missed to ``record`` (True: new); how many were new."""
        ...


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class NormalizedEvent:
    """One provider event in our terms, built by the provider's normaliser.

    ``raw`` is the provider's body as it is stored with the event; it takes no part in comparisons.
    """

    provider_event_id: str
    event_type: EventType
    raw_event: str
    occurred_at: datetime
    email_id: str | None = None  # the provider's message id
    tracking_ref: str | None = None
    recipient: str | None = None
    recipients: tuple[str, ...] = ()
    bounce_type: str | None = None
    message: str | None = None
    reason: str | None = None
    context: str | None = None
    host: str | None = None
    user_agent: str | None = None
    url: str | None = None
    message_id_header: str | None = None
    time_source: str = "time"  # time | sendtime | received
    provider: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def detail(self) -> str | None:
        """The provider's explanation in one line: ``message; reason (context; host)``."""
        text = "; ".join(dict.fromkeys(p for p in (self.message, self.reason) if p))
        extra = "; ".join(p for p in (self.context, self.host) if p)
        if text and extra:
            return f"{text} ({extra})"
        return text or extra or None


@dataclass(frozen=True)
class WebhookHandler:
    """A provider's webhook side: ``secrets(settings)`` the shared secrets its deliveries authenticate with;
    ``is_event(item)`` whether a decoded body item is one of its events; ``list_fields`` the form fields that
    are lists by nature; ``normalise(raw)`` one stored event body -> :class:`NormalizedEvent` (never raises)."""

    secrets: Callable[[Any], Iterable[str]]
    is_event: Callable[[Any], bool]
    normalise: Callable[[Mapping[str, Any]], NormalizedEvent]
    list_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProviderKind:
    """One kind of provider.

    ``transport(name, variant, conn, settings)`` returns the transport for this attempt, a :class:`Held`
    operator problem (the provider is switched on but cannot be used: a missing key, a bad URL), or None when
    it is not configured at all (the chain skips it). ``reconciler(name, variant, conn, settings)`` returns
    what settles an ambiguous send through this provider (None: the provider cannot be asked; such sends stay
    parked). ``webhooks`` authenticates and normalises the provider's event deliveries (None: it sends none).
    """

    kind: str
    transport: Callable[[str, str, Any, Any], Transport | Held | None]
    reconciler: Callable[..., Reconciler | None] = lambda *_, **__: None
    webhooks: WebhookHandler | None = None
    #: What one attempt may cost this provider at worst, in seconds (the send lease must outlive it).
    worst_case_seconds: Callable[[Any], float] = field(default=lambda _: 60.0)


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
