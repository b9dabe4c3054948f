"""The send service: claim a message, pick a transport, send, record the outcome.

The Celery task (``worker.tasks.send_email``) is a thin wrapper around :func:`deliver`. Guarantees:

- **One sender at a time.** :func:`claim` is one atomic ``UPDATE ... WHERE`` that takes an expiring lease;
  two workers racing the same id cannot both win, and a killed worker's lease runs out so the message is
  taken over (``crashes`` counts take-overs; after ``SEND_MAX_CRASHES`` the message is ``failed`` instead of
  killing worker after worker).
- **No blind resend.** Before a network call the row records ``inflight_since`` (committed). If a worker dies
  between the provider accepting the message and our commit, the take-over sees the in-flight mark and parks
  the message as *ambiguous* for reconciliation instead of sending again. A read timeout is parked the same way.
- **Nothing lost.** Every path ends in ``sent``, ``failed``, ``suppressed``, or ``retrying`` with a
  ``next_attempt_at`` the sweeper honours.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload

from worker.config import Settings, get_settings
from worker.db import session_scope
from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.models import Message, MessageStatus, RecipientStatus, Suppression, Transport, utcnow
from worker.modules import Smtp2GoConfig, smtp2go_config
from worker.providers import OutgoingEmail, choose_transport
from worker.providers import smtp as smtp_provider
from worker.providers import smtp2go as smtp2go_provider

log = logging.getLogger(__name__)

#: Set by the Celery task to report steps (``api_attempt``, ``smtp_attempt``) to Flower while a send runs.
progress_hook: ContextVar[Callable[[str, dict[str, object]], None] | None] = ContextVar("progress_hook",
                                                                                        default=None)


@dataclass(frozen=True)
class Outcome:
    """What happened to one delivery attempt; the task turns it into ack / retry."""

    kind: str  # sent | retry | failed | suppressed | ambiguous | skipped
    detail: str = ""
    delay: float | None = None  # seconds until the next attempt (kind == "retry")
    transport: Transport | None = None


def backoff_delay(attempt: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; a provider's ``Retry-After``/``X-Ratelimit-Reset`` wins when given."""
    cap = settings.send_retry_backoff_max
    if retry_after is not None:
        return min(cap, max(retry_after, 0.5)) + random.uniform(0, 0.25)
    base = min(cap, settings.send_retry_backoff * (2 ** max(0, attempt - 1)))
    return random.uniform(base / 2, base)


def claim(session: Session, tracking_id: str, owner: str, settings: Settings) -> str | None:
    """Take the lease on a due message. Returns ``"fresh"``, ``"takeover"`` or ``None`` (not ours to send)."""
    now = utcnow()
    expires = now + timedelta(seconds=settings.send_lease_seconds)
    fresh = session.execute(
        update(Message)
        .where(
            Message.id == tracking_id,
            Message.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING]),
            Message.ambiguous_since.is_(None),
            or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= now),
        )
        .values(status=MessageStatus.SENDING, lease_owner=owner, lease_expires_at=expires, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if fresh.rowcount == 1:  # type: ignore[attr-defined]
        session.commit()
        return "fresh"
    taken = session.execute(
        update(Message)
        .where(Message.id == tracking_id, Message.status == MessageStatus.SENDING,
               Message.lease_expires_at < now)
        .values(lease_owner=owner, lease_expires_at=expires, crashes=Message.crashes + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return "takeover" if taken.rowcount == 1 else None  # type: ignore[attr-defined]


def _load(session: Session, tracking_id: str) -> Message:
    return session.scalars(
        select(Message)
        .where(Message.id == tracking_id)
        .options(selectinload(Message.recipients), selectinload(Message.attachments))
    ).one()


def _release(message: Message) -> None:
    message.lease_owner = None
    message.lease_expires_at = None
    message.inflight_since = None
    message.inflight_transport = None


def mark_failed(message: Message, reason: str) -> None:
    now = utcnow()
    message.status = MessageStatus.FAILED
    message.failed_at = now
    message.last_error = reason
    message.next_attempt_at = None
    _release(message)
    for r in message.recipients:
        if r.status == RecipientStatus.QUEUED:
            r.status = RecipientStatus.FAILED
            r.error = r.error or reason
    log.warning("final state failed tracking_id=%s reason=%s", message.id, reason)


def mark_ambiguous(message: Message, reason: str) -> None:
    """Park a message whose last send may have landed: only reconciliation may release it."""
    now = utcnow()
    transport = message.inflight_transport
    message.status = MessageStatus.RETRYING
    message.ambiguous_since = now
    message.last_error = f"ambiguous: {reason}"
    message.next_attempt_at = None
    _release(message)
    message.inflight_transport = transport  # reconciliation needs to know where to look
    log.warning("send ambiguous tracking_id=%s reason=%s (parked for reconciliation)", message.id, reason)


def _schedule_retry(message: Message, error: DeliveryError, delay: float) -> Outcome:
    message.status = MessageStatus.RETRYING
    message.last_error = error.describe()
    message.next_attempt_at = utcnow() + timedelta(seconds=delay)
    _release(message)
    log.info("retry scheduled tracking_id=%s transport=%s delay=%.1fs error=%s", message.id,
             error.provider, delay, error.describe())
    return Outcome("retry", error.describe(), delay=delay)


def record_sent(session: Session, message: Message, transport: Transport, provider_id: str,
                refused: dict[str, str] | None = None) -> None:
    now = utcnow()
    message.status = MessageStatus.SENT
    message.transport = transport
    message.sent_at = now
    message.next_attempt_at = None
    message.ambiguous_since = None
    if transport == Transport.SMTP2GO:
        message.smtp2go_message_id = provider_id
    elif provider_id:
        message.message_id_header = provider_id
    _release(message)
    refused_lc = {a.lower(): why for a, why in (refused or {}).items()}
    for r in message.recipients:
        if r.status != RecipientStatus.QUEUED:
            continue
        why = refused_lc.get(r.address.lower())
        if why:
            r.status = RecipientStatus.REJECTED
            r.rejected_at = now
            r.error = why
        else:
            r.status = RecipientStatus.SENT
            r.sent_at = now
    session.flush()
    from worker.events import link_pending_events

    link_pending_events(session, message)
    log.info("final state sent tracking_id=%s transport=%s provider_id=%s", message.id, transport.value,
             provider_id)


def _drop_suppressed(session: Session, message: Message) -> int:
    """Mark suppressed recipients; returns how many recipients remain to send to."""
    live = [r for r in message.recipients if r.status == RecipientStatus.QUEUED]
    if live:
        addresses = {r.address.lower() for r in live}
        suppressed = set(session.scalars(select(Suppression.address).where(Suppression.address.in_(addresses))))
        for r in live:
            if r.address.lower() in suppressed:
                r.status = RecipientStatus.SUPPRESSED
                r.error = "address is on the suppression list"
    return sum(1 for r in message.recipients if r.status == RecipientStatus.QUEUED)


def deliver(tracking_id: str, *, owner: str, settings: Settings | None = None) -> Outcome:
    """Run one delivery attempt for ``tracking_id``."""
    settings = settings or get_settings()
    with session_scope() as session:
        how = claim(session, tracking_id, owner, settings)
        if how is None:
            return Outcome("skipped", "not due, already sent, or leased by another worker")
        message = _load(session, tracking_id)
        if how == "takeover":
            if message.crashes >= settings.max_task_crashes:
                mark_failed(message, f"worker died {message.crashes} times while sending this message")
                return Outcome("failed", message.last_error or "")
            if message.inflight_since is not None:
                mark_ambiguous(message, "a worker died during the send; the provider may have accepted it")
                return Outcome("ambiguous", message.last_error or "")
        if _drop_suppressed(session, message) == 0:
            message.status = MessageStatus.SUPPRESSED
            message.last_error = "every recipient is on the suppression list"
            message.next_attempt_at = None
            _release(message)
            log.info("final state suppressed tracking_id=%s", tracking_id)
            return Outcome("suppressed")
        try:
            config = smtp2go_config(session, settings)
            transport = choose_transport(message, config, settings)
        except ConfigurationError as err:
            mark_failed(message, f"configuration: {err}")
            return Outcome("failed", str(err))
        email = OutgoingEmail.from_message(message)
        log.info("transport chosen tracking_id=%s transport=%s", tracking_id, transport.value)
        return _attempt(session, message, email, transport, config, settings)


def _mark_inflight(session: Session, message: Message, transport: Transport) -> None:
    message.inflight_transport = transport
    message.inflight_since = utcnow()
    message.attempts += 1
    if transport == Transport.SMTP2GO:
        message.api_attempts += 1
    else:
        message.smtp_attempts += 1
    session.commit()
    hook = progress_hook.get()
    if hook is not None:
        step = "api_attempt" if transport == Transport.SMTP2GO else "smtp_attempt"
        attempt = message.api_attempts if transport == Transport.SMTP2GO else message.smtp_attempts
        hook(step, {"attempt": attempt, "fallback": bool(message.api_abandoned)})


def _attempt(session: Session, message: Message, email: OutgoingEmail, transport: Transport,
             config: Smtp2GoConfig, settings: Settings) -> Outcome:
    if transport == Transport.SMTP2GO:
        from worker import protection

        assert config.api_key  # choose_transport picks SMTP2Go only when it has a key
        gate = protection.before_api_send(settings)
        if gate.verdict == "open":
            if settings.smtp_configured:
                return _fall_back(session, message, email, "SMTP2Go circuit breaker open", settings)
            return _wait(message, f"SMTP2Go circuit breaker open for {gate.wait:.0f}s", gate.wait)
        if gate.verdict == "paused":
            return _wait(message, f"SMTP2Go rate limit: waiting {gate.wait:.1f}s", gate.wait)
        _mark_inflight(session, message, transport)
        try:
            email_id = smtp2go_provider.send(
                email=email, api_key=config.api_key, api_url=config.api_url,
                timeout=settings.smtp2go_timeout, connect_timeout=settings.smtp2go_connect_timeout,
                verify=settings.smtp2go_ca_file or True, options=config.options,
            )
        except AmbiguousDeliveryError as err:
            protection.record_failure(settings, gate)
            mark_ambiguous(message, err.describe())
            return Outcome("ambiguous", err.describe(), transport=transport)
        except RetryableDeliveryError as err:
            if err.status_code == 429:
                protection.pause_for_rate_limit(err.retry_after or 1.0, settings)
            else:
                protection.record_failure(settings, gate)
            if message.api_attempts <= settings.send_max_retries:
                return _schedule_retry(message, err, backoff_delay(message.api_attempts, settings,
                                                                   err.retry_after))
            return _fall_back(session, message, email, f"API retries used up: {err.describe()}", settings)
        except PermanentDeliveryError as err:
            protection.record_success(settings, gate)  # the service answered; it is up
            return _fall_back(session, message, email, f"API permanent error: {err.describe()}", settings)
        protection.record_success(settings, gate)
        record_sent(session, message, Transport.SMTP2GO, email_id)
        return Outcome("sent", email_id, transport=Transport.SMTP2GO)
    return _send_smtp(session, message, email, settings)


def _wait(message: Message, reason: str, delay: float) -> Outcome:
    """Not an attempt: the shared protections say wait. The message keeps its retry budget."""
    delay = max(0.2, delay) + random.uniform(0, 0.2)
    message.status = MessageStatus.RETRYING
    message.next_attempt_at = utcnow() + timedelta(seconds=delay)
    message.last_error = reason
    _release(message)
    log.info("waiting tracking_id=%s delay=%.1fs reason=%s", message.id, delay, reason)
    return Outcome("retry", reason, delay=delay)


def _fall_back(session: Session, message: Message, email: OutgoingEmail, reason: str,
               settings: Settings) -> Outcome:
    message.api_abandoned = True
    message.fallback_reason = reason
    message.last_error = reason
    log.warning("fallback to smtp tracking_id=%s reason=%s", message.id, reason)
    if not settings.smtp_configured:
        mark_failed(message, f"{reason}; no SMTP relay configured (SMTP_HOST)")
        return Outcome("failed", message.last_error or "")
    return _send_smtp(session, message, email, settings)


def _send_smtp(session: Session, message: Message, email: OutgoingEmail, settings: Settings) -> Outcome:
    assert settings.smtp_host
    _mark_inflight(session, message, Transport.SMTP)
    try:
        result = smtp_provider.send(
            email=email, host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
            password=settings.smtp_password, security=settings.smtp_security, timeout=settings.smtp_timeout,
            ca_file=settings.smtp_ca_file,
        )
    except RecipientsRefused as err:
        now = utcnow()
        refused = {a.lower(): why for a, why in err.refused.items()}
        for r in message.recipients:
            if r.status == RecipientStatus.QUEUED and r.address.lower() in refused:
                r.status = RecipientStatus.REJECTED
                r.rejected_at = now
                r.error = refused[r.address.lower()]
        mark_failed(message, err.describe())
        return Outcome("failed", err.describe(), transport=Transport.SMTP)
    except RetryableDeliveryError as err:
        if message.smtp_attempts <= settings.smtp_max_retries:
            return _schedule_retry(message, err, backoff_delay(message.smtp_attempts, settings, err.retry_after))
        mark_failed(message, f"SMTP retries used up: {err.describe()}")
        return Outcome("failed", message.last_error or "", transport=Transport.SMTP)
    except PermanentDeliveryError as err:
        mark_failed(message, err.describe())
        return Outcome("failed", err.describe(), transport=Transport.SMTP)
    record_sent(session, message, Transport.SMTP, result.message_id, result.refused)
    return Outcome("sent", result.message_id, transport=Transport.SMTP)
