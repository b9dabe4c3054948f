"""SQLAlchemy 2.0 models: messages, recipients, attachments, tracking events, suppressions, modules.

The database row is the source of truth for every email: the broker carries only the tracking id. Types are
chosen to work the same on MariaDB (utf8mb4, microsecond timestamps, LONGTEXT/LONGBLOB for bodies and
attachments) and on SQLite (the embedded default). Timestamps are stored as naive UTC and returned aware.

Identifiers compare exactly on both backends: tracking ids (and every column that holds one), idempotency
keys, provider ids, event ids and references are :data:`ExactString` columns, ``utf8mb4_bin`` on MariaDB, whose
tables are otherwise ``utf8mb4_unicode_ci`` (case- and accent-insensitive: ``Order-1`` and ``order-1`` would be
one idempotency key there and two on SQLite, which compares BINARY). Email addresses stay case-insensitive.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes stored naive (MariaDB has no time zones in DATETIME) with microseconds."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name in {"mysql", "mariadb"}:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def ExactString(length: int) -> TypeEngine[str]:  # noqa: N802 - used like a type, next to String
    """A VARCHAR compared byte for byte: ``utf8mb4_bin`` on MariaDB, plain (already BINARY) on SQLite."""
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
LongBlob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    PARKED = "parked"  # a provider may have accepted the last attempt: reconciliation settles it
    HELD = "held"  # an operator problem (revoked key, no usable provider) stops it; sent once fixed
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    REJECTED = "rejected"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"  # taken back by the application before any transport accepted it
    EXPIRED = "expired"  # its ``expires_at`` passed before it was handed to a transport


#: States in which the send path still owns the message.
PENDING_STATUSES = (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.RETRYING, MessageStatus.PARKED,
                    MessageStatus.HELD)
#: States reached once a transport accepted the message; events move it among these.
ACCEPTED_STATUSES = (
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.BOUNCED,
    MessageStatus.COMPLAINED,
    MessageStatus.REJECTED,
)


class Lane(enum.StrEnum):
    """The queue a message travels on: ``transactional`` (``enqueue_email``: one ``send_email`` task each) or
    ``bulk`` (``enqueue_many``: ``send_batch`` tasks on the bulk queue, which never delay transactional mail)."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"


class RecipientStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    REJECTED = "rejected"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class RecipientKind(enum.StrEnum):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class Transport(enum.StrEnum):
    """The kinds of the built-in providers, as ``messages.transport`` (a plain string: any registered kind) and
    ``get_email_status``'s ``transport`` name them."""

    SMTP2GO = "smtp2go"
    SMTP = "smtp"


class AttemptOutcome(enum.StrEnum):
    IN_FLIGHT = "in_flight"  # handed to the provider, no answer recorded yet
    ACCEPTED = "accepted"
    NOT_SENT = "not_sent"
    REFUSED = "refused"  # every recipient refused
    UNKNOWN = "unknown"
    HELD = "held"


class EventType(enum.StrEnum):
    PROCESSED = "processed"
    DELIVERED = "delivered"
    OPEN = "open"
    CLICK = "click"
    BOUNCE = "bounce"
    SPAM = "spam"
    UNSUBSCRIBE = "unsubscribe"
    RESUBSCRIBE = "resubscribe"
    REJECT = "reject"
    UNKNOWN = "unknown"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """Enums stored by value in a VARCHAR (portable, readable in SQL, no ALTER TYPE on new values)."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(ExactString(36), primary_key=True)
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus, "message_status"), index=True)
    #: The kind of provider that accepted it (``smtp2go``, ``smtp``); ``provider`` is its full name
    #: (``smtp2go:eu``), else the one last tried.
    transport: Mapped[str | None] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(998))
    reply_to: Mapped[str | None] = mapped_column(String(998))
    subject: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(LongText)
    html_body: Mapped[str | None] = mapped_column(LongText)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    template_id: Mapped[str | None] = mapped_column(String(255))
    template_data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reference: Mapped[str | None] = mapped_column(ExactString(255), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(ExactString(255), unique=True)
    smtp2go_message_id: Mapped[str | None] = mapped_column(ExactString(128), unique=True)
    message_id_header: Mapped[str | None] = mapped_column(ExactString(255), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    lane: Mapped[Lane] = mapped_column(_enum(Lane, "lane"), default=Lane.TRANSACTIONAL,
                                       server_default=Lane.TRANSACTIONAL.value)
    #: The mailing list this email belongs to (one-click unsubscribe is scoped to it); None for one-off mail.
    list_id: Mapped[str | None] = mapped_column(ExactString(64))
    #: The ``send_batch`` chunk ``enqueue_many`` published it in (its batch mates share it); None for one-off mail.
    batch_id: Mapped[str | None] = mapped_column(ExactString(36), index=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    fallback_reason: Mapped[str | None] = mapped_column(Text)

    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Not handed to a transport by then: the claim moves it to ``expired`` instead of sending it.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(191))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    inflight_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ambiguous_since: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Set while an operator problem (revoked key, missing encryption key, no transport) holds the message.
    held_since: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_complained_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    recipients: Mapped[list[Recipient]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Recipient.id"
    )
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attachment.id"
    )
    events: Mapped[list[TrackingEvent]] = relationship(
        back_populates="message", order_by="TrackingEvent.occurred_at"
    )
    send_attempts: Mapped[list[Attempt]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attempt.id"
    )

    __table_args__ = (
        Index("ix_messages_status_next_attempt", "status", "next_attempt_at"),
        Index("ix_messages_queued_at", "queued_at"),
        Index("ix_messages_status_sent_at", "status", "sent_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class Attempt(Base):
    """One hand-over of a message to a provider (or a provider's refusal to take it): who, when, what came back."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ExactString(36), ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[AttemptOutcome] = mapped_column(_enum(AttemptOutcome, "attempt_outcome"))
    provider_message_id: Mapped[str | None] = mapped_column(ExactString(255))
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)

    message: Mapped[Message] = relationship(back_populates="send_attempts")

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)


class Recipient(Base):
    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ExactString(36), ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    display_name: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[RecipientKind] = mapped_column(_enum(RecipientKind, "recipient_kind"))
    status: Mapped[RecipientStatus] = mapped_column(_enum(RecipientStatus, "recipient_status"))
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounce_type: Mapped[str | None] = mapped_column(String(16))
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    complained_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rejected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    message: Mapped[Message] = relationship(back_populates="recipients")

    __table_args__ = (
        UniqueConstraint("message_id", "kind", "address", name="uq_recipients_message_kind_address"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ExactString(36), ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    mimetype: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes | None] = mapped_column(LongBlob)

    message: Mapped[Message] = relationship(back_populates="attachments")

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)


class TrackingEvent(Base):
    """One provider event, deduplicated on ``provider_event_id``; kept even before its message is known."""

    __tablename__ = "tracking_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_event_id: Mapped[str] = mapped_column(ExactString(191), unique=True)
    message_id: Mapped[str | None] = mapped_column(
        ExactString(36), ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    smtp2go_message_id: Mapped[str | None] = mapped_column(ExactString(128), index=True)
    tracking_ref: Mapped[str | None] = mapped_column(ExactString(64), index=True)
    event_type: Mapped[EventType] = mapped_column(_enum(EventType, "event_type"), index=True)
    raw_event: Mapped[str | None] = mapped_column(String(64))
    recipient: Mapped[str | None] = mapped_column(String(320), index=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounce_type: Mapped[str | None] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    smtp2go_data: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    message: Mapped[Message | None] = relationship(back_populates="events")

    __table_args__ = (
        Index("ix_tracking_events_orphans", "applied_at", "received_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class Suppression(Base):
    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: Lower-cased, or ``hmac:<hex>`` (a keyed hash) once the address was erased: it stays suppressed.
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    source_message_id: Mapped[str | None] = mapped_column(ExactString(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: NULL: every list and transactional mail (hard bounce, complaint, manual); else that list only.
    list_id: Mapped[str | None] = mapped_column(String(64))
    #: ``list_id`` or ``""``: the unique key is (address, scope), which NULL cannot be part of.
    scope: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: Where it came from (``smtp2go`` when pulled from SMTP2Go's list), and when it was pushed there.
    origin: Mapped[str | None] = mapped_column(String(16))
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("address", "scope", name="uq_suppressions_address_scope"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class IntegrationModule(Base):
    """An integration's switch and its settings, encrypted at rest (see ``worker.infrastructure.modules``)."""

    __tablename__ = "integration_modules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    settings_encrypted: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)


class AuditEntry(Base):
    """One operator action taken in the console (``console_app``): who, when, what, why, and what it changed.

    No foreign key to messages: the record outlives a purge or a deleted message. ``message_id`` names the
    message acted on (null for actions on a suppression alone); ``target`` the address or id the action named.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(191))
    action: Mapped[str] = mapped_column(String(64))
    #: A plain VARCHAR: tracking ids are lower-case UUIDs, and tests/migrations pins the set of exact columns.
    message_id: Mapped[str | None] = mapped_column(String(36), index=True)
    target: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(255))
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)


#: The console's search (``console_app``): ``status:`` newest first with keyset pagination on (queued_at, id),
#: and the oldest queued email. Declared here, after the model, so the table definition above stays as it was.
Index("ix_messages_status_queued_at", Message.status, Message.queued_at, Message.id)


# ------------------------------------------------------------------------------ telling the application
#
# Status callbacks (``worker.callbacks``). Plain VARCHARs for ids (tracking ids are lower-case UUIDs, event ids
# are ours): tests/migrations pins the set of exact columns. No foreign keys to messages: the record outlives a
# purge or a deleted message.


class StatusEvent(Base):
    """One status change a caller cares about (``email.*``), written in the transaction of the change itself.

    The outbox of the status callbacks: ``seq`` numbers one message's events 1, 2, 3 ... in the order they
    happened to it; ``reference`` and ``smtp2go_message_id`` are copied from the message as it was then.
    ``dispatched_at`` is set once the dispatcher made its deliveries (one per endpoint, and one for the hook).
    """

    __tablename__ = "status_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    message_id: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(String(255))
    smtp2go_message_id: Mapped[str | None] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (
        UniqueConstraint("message_id", "seq", name="uq_status_events_message_seq"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class CallbackEndpoint(Base):
    """An HTTP endpoint receiving signed callbacks; its secret(s) encrypted with ``SETTINGS_ENCRYPTION_KEY``."""

    __tablename__ = "callback_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text)
    #: Event types it wants (``["email.delivered", ...]``); NULL: all of them.
    events: Mapped[list[str] | None] = mapped_column(JSON)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    #: The secret before the last rotation, still signing (a second signature) until ``previous_until``.
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)


class CallbackDelivery(Base):
    """One event to one target (an endpoint, or the Python hook: ``kind`` ``hook``, ``endpoint_id`` 0).

    ``state``: ``pending`` (due at ``next_attempt_at``), ``delivered``, or ``dead`` (retries used up, a
    permanent refusal, or the endpoint answered 410): a dead letter, kept for ``mailworker callbacks replay``.
    """

    __tablename__ = "callback_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_pk: Mapped[int] = mapped_column(Integer, ForeignKey("status_events.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    endpoint_id: Mapped[int] = mapped_column(Integer, index=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("event_pk", "kind", "endpoint_id", name="uq_callback_deliveries_target"),
        Index("ix_callback_deliveries_due", "state", "next_attempt_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},
    )


class CallbackAttempt(Base):
    """Every attempt of a delivery: when, how long, the answer (status code or error), the next attempt."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("callback_deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"},)
