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
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, update
from sqlalchemy.orm import Session

from worker import send_store as store
from worker.config import Settings, get_settings
from worker.db import get_engine
from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.models import MessageStatus, RecipientStatus, Transport, utcnow
from worker.modules import Smtp2GoConfig, smtp2go_config
from worker.providers import OutgoingEmail, choose_transport
from worker.providers import smtp as smtp_provider
from worker.providers import smtp2go as smtp2go_provider
from worker.send_store import SendJob

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


def mark_failed(conn: Connection, job: SendJob, reason: str) -> None:
    store.set_recipients(conn, job, [r for r in job.recipients if r.status == RecipientStatus.QUEUED],
                         RecipientStatus.FAILED, error=reason)
    store.finish(conn, job, MessageStatus.FAILED, failed_at=utcnow(), last_error=reason, next_attempt_at=None)
    log.warning("final state failed tracking_id=%s reason=%s", job.id, reason)


def mark_ambiguous(conn: Connection, job: SendJob, reason: str) -> str:
    """Park a message whose last send may have landed: only reconciliation may release it."""
    # inflight_transport is kept: reconciliation needs to know where to look.
    last_error = f"ambiguous: {reason}"
    store.finish(conn, job, MessageStatus.RETRYING, ambiguous_since=utcnow(), last_error=last_error,
                 next_attempt_at=None, inflight_transport=job.inflight_transport)
    log.warning("send ambiguous tracking_id=%s reason=%s (parked for reconciliation)", job.id, reason)
    return last_error


def _schedule_retry(conn: Connection, job: SendJob, error: DeliveryError, delay: float) -> Outcome:
    store.finish(conn, job, MessageStatus.RETRYING, last_error=error.describe(),
                 next_attempt_at=utcnow() + timedelta(seconds=delay))
    log.info("retry scheduled tracking_id=%s transport=%s delay=%.1fs error=%s", job.id,
             error.provider, delay, error.describe())
    return Outcome("retry", error.describe(), delay=delay)


def _record_sent(conn: Connection, job: SendJob, transport: Transport, provider_id: str,
                 refused: dict[str, str] | None = None) -> Outcome:
    store.record_sent(conn, job.id, transport, provider_id, refused)
    log.info("final state sent tracking_id=%s transport=%s provider_id=%s", job.id, transport.value, provider_id)
    return Outcome("sent", provider_id, transport=transport)


#: (read at, for which settings, config): one slot, since a process has one settings object at a time.
_config_cache: tuple[float, Settings, Smtp2GoConfig] | None = None


def current_smtp2go_config(conn: Connection, settings: Settings) -> Smtp2GoConfig:
    """The SMTP2Go module settings, read from the database at most every ``MODULE_CACHE_SECONDS``.

    A module switched on or off with the CLI takes effect within that time (default 5 s); the read was one
    SELECT per email before. 0 turns the cache off.
    """
    global _config_cache
    now = time.monotonic()
    hit = _config_cache
    if hit is not None and hit[1] is settings and now - hit[0] < settings.module_cache_seconds:
        return hit[2]
    with Session(bind=conn) as session:  # joins the delivery's transaction
        config = smtp2go_config(session, settings)
    _config_cache = (now, settings, config)  # one atomic assignment: threads may race, never tear
    return config


def deliver(tracking_id: str, *, owner: str, settings: Settings | None = None) -> Outcome:
    """Run one delivery attempt for ``tracking_id`` on one database connection."""
    settings = settings or get_settings()
    with get_engine().connect() as conn:
        outcome = _deliver(conn, tracking_id, owner, settings)
        conn.commit()
        return outcome


def _deliver(conn: Connection, tracking_id: str, owner: str, settings: Settings) -> Outcome:
    config: Smtp2GoConfig | None = None
    config_error: ConfigurationError | None = None
    try:
        config = current_smtp2go_config(conn, settings)  # cached: usually no statement
    except ConfigurationError as err:
        config_error = err  # failed below, once the message is claimed
    speculate = config is not None and config.usable
    how = store.claim(conn, tracking_id, owner, settings.send_lease_seconds, speculate=speculate)
    if how is None:
        return Outcome("skipped", "not due, already sent, or leased by another worker")
    job = store.load_job(conn, tracking_id)
    job.speculative = speculate and how == "fresh" and not job.api_abandoned
    if how == "takeover":
        if job.crashes >= settings.max_task_crashes:
            reason = f"worker died {job.crashes} times while sending this message"
            mark_failed(conn, job, reason)
            return Outcome("failed", reason)
        if job.inflight_since is not None:
            return Outcome("ambiguous", mark_ambiguous(
                conn, job, "a worker died during the send; the provider may have accepted it"))
    suppressed = [r for r in job.recipients if r.suppressed]
    if suppressed:
        store.set_recipients(conn, job, suppressed, RecipientStatus.SUPPRESSED,
                             error="address is on the suppression list")
    if not any(r.status == RecipientStatus.QUEUED for r in job.recipients):
        store.finish(conn, job, MessageStatus.SUPPRESSED, last_error="every recipient is on the suppression list",
                     next_attempt_at=None)
        log.info("final state suppressed tracking_id=%s", tracking_id)
        return Outcome("suppressed")
    try:
        if config_error is not None:
            raise config_error
        assert config is not None
        transport = choose_transport(job, config, settings)
    except ConfigurationError as err:
        mark_failed(conn, job, f"configuration: {err}")
        return Outcome("failed", str(err))
    email = OutgoingEmail.from_message(job)
    log.debug("transport chosen tracking_id=%s transport=%s", tracking_id, transport.value)
    return _attempt(conn, job, email, transport, config, settings)


def _mark_inflight(conn: Connection, job: SendJob, transport: Transport) -> None:
    store.mark_inflight(conn, job, transport)
    hook = progress_hook.get()
    if hook is not None:
        step = "api_attempt" if transport == Transport.SMTP2GO else "smtp_attempt"
        attempt = job.api_attempts if transport == Transport.SMTP2GO else job.smtp_attempts
        hook(step, {"attempt": attempt, "fallback": job.api_abandoned})


def _attempt(conn: Connection, job: SendJob, email: OutgoingEmail, transport: Transport,
             config: Smtp2GoConfig, settings: Settings) -> Outcome:
    if transport == Transport.SMTP2GO:
        from worker import protection

        assert config.api_key  # choose_transport picks SMTP2Go only when it has a key
        gate = protection.before_api_send(settings)
        if gate.verdict == "open":
            if settings.smtp_configured:
                return _fall_back(conn, job, email, "SMTP2Go circuit breaker open", settings)
            return _wait(conn, job, f"SMTP2Go circuit breaker open for {gate.wait:.0f}s", gate.wait)
        if gate.verdict == "paused":
            return _wait(conn, job, f"SMTP2Go rate limit: waiting {gate.wait:.1f}s", gate.wait)
        _mark_inflight(conn, job, transport)
        try:
            email_id = smtp2go_provider.send(
                email=email, api_key=config.api_key, api_url=config.api_url,
                timeout=settings.smtp2go_timeout, connect_timeout=settings.smtp2go_connect_timeout,
                verify=settings.smtp2go_ca_file or True, options=config.options,
            )
        except AmbiguousDeliveryError as err:
            protection.record_failure(settings, gate)
            mark_ambiguous(conn, job, err.describe())
            return Outcome("ambiguous", err.describe(), transport=transport)
        except RetryableDeliveryError as err:
            if err.status_code == 429:
                protection.pause_for_rate_limit(err.retry_after or 1.0, settings)
            else:
                protection.record_failure(settings, gate)
            if job.api_attempts <= settings.send_max_retries:
                return _schedule_retry(conn, job, err, backoff_delay(job.api_attempts, settings, err.retry_after))
            return _fall_back(conn, job, email, f"API retries used up: {err.describe()}", settings)
        except PermanentDeliveryError as err:
            protection.record_success(settings, gate)  # the service answered; it is up
            return _fall_back(conn, job, email, f"API permanent error: {err.describe()}", settings)
        protection.record_success(settings, gate)
        return _record_sent(conn, job, Transport.SMTP2GO, email_id)
    return _send_smtp(conn, job, email, settings)


def _wait(conn: Connection, job: SendJob, reason: str, delay: float) -> Outcome:
    """Not an attempt: the shared protections say wait. The message keeps its retry budget."""
    delay = max(0.2, delay) + random.uniform(0, 0.2)
    store.finish(conn, job, MessageStatus.RETRYING, next_attempt_at=utcnow() + timedelta(seconds=delay),
                 last_error=reason)
    log.info("waiting tracking_id=%s delay=%.1fs reason=%s", job.id, delay, reason)
    return Outcome("retry", reason, delay=delay)


def _fall_back(conn: Connection, job: SendJob, email: OutgoingEmail, reason: str,
               settings: Settings) -> Outcome:
    job.api_abandoned = True
    conn.execute(update(store.M).where(store.M.c.id == job.id)
                 .values(api_abandoned=True, fallback_reason=reason, last_error=reason))
    log.warning("fallback to smtp tracking_id=%s reason=%s", job.id, reason)
    if not settings.smtp_configured:
        reason = f"{reason}; no SMTP relay configured (SMTP_HOST)"
        mark_failed(conn, job, reason)
        return Outcome("failed", reason)
    return _send_smtp(conn, job, email, settings)


def _send_smtp(conn: Connection, job: SendJob, email: OutgoingEmail, settings: Settings) -> Outcome:
    assert settings.smtp_host
    _mark_inflight(conn, job, Transport.SMTP)
    try:
        result = smtp_provider.send(
            email=email, host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
            password=settings.smtp_password, security=settings.smtp_security, timeout=settings.smtp_timeout,
            ca_file=settings.smtp_ca_file,
        )
    except RecipientsRefused as err:
        refused = {a.lower(): why for a, why in err.refused.items()}
        for r in job.recipients:
            if r.status == RecipientStatus.QUEUED and r.address.lower() in refused:
                store.set_recipients(conn, job, [r], RecipientStatus.REJECTED, error=refused[r.address.lower()],
                                     stamp="rejected_at")
        mark_failed(conn, job, err.describe())
        return Outcome("failed", err.describe(), transport=Transport.SMTP)
    except RetryableDeliveryError as err:
        if job.smtp_attempts <= settings.smtp_max_retries:
            return _schedule_retry(conn, job, err, backoff_delay(job.smtp_attempts, settings, err.retry_after))
        reason = f"SMTP retries used up: {err.describe()}"
        mark_failed(conn, job, reason)
        return Outcome("failed", reason, transport=Transport.SMTP)
    except PermanentDeliveryError as err:
        mark_failed(conn, job, err.describe())
        return Outcome("failed", err.describe(), transport=Transport.SMTP)
    return _record_sent(conn, job, Transport.SMTP, result.message_id, result.refused)
