"""The send service: one delivery attempt, deciding what each transport outcome means for the message.

The Celery task (``worker.tasks.send_email``) is a thin wrapper around :func:`deliver`. Transports answer
*accepted* (with their id), *not sent* (retryable or permanent, per recipient where the protocol says so) or
*unknown* (the request may have been acted on); operator problems arrive as :class:`ConfigurationError`.
This module decides, and records the decision through one transition of :mod:`worker.sending.lifecycle`:

- accepted -> ``record_accepted`` (a relay's per-recipient 4xx stay queued and are retried alone);
- not sent, retryable -> ``retry_later`` with backoff until the transport's budget is used up, then the next
  transport (SMTP2Go -> relay) or ``fail``; permanent -> the next transport or ``fail``;
- unknown -> ``park_unknown``: never resent blindly, reconciliation settles it;
- an operator problem (revoked key, missing encryption key, no usable transport) -> ``hold``: the message
  waits, never fails, and is sent once the problem is fixed. A refused SMTP2Go key opens the shared breaker,
  so one trial request per cool-down (not every message) meets the bad key.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    CredentialsRejected,
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Transport, utcnow
from worker.infrastructure.modules import Smtp2GoConfig, smtp2go_config
from worker.sending import lifecycle, protection
from worker.sending.jobs import SendJob, load_job
from worker.sending.lifecycle import ClaimKind, Lease, LeaseLost
from worker.sending.transports import OutgoingEmail, choose_transport
from worker.sending.transports import smtp as smtp_provider
from worker.sending.transports import smtp2go as smtp2go_provider

log = logging.getLogger(__name__)

#: Set by the Celery task to report steps (``api_attempt``, ``smtp_attempt``) to Flower while a send runs.
progress_hook: ContextVar[Callable[[str, dict[str, object]], None] | None] = ContextVar("progress_hook",
                                                                                        default=None)


class OutcomeKind(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # nothing sent; due again after ``delay``
    HELD = "held"  # an operator problem; due again after ``delay``
    PARKED = "ambiguous"  # outcome unknown; reconciliation decides
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"  # not ours: not due, already done, leased elsewhere, or the lease was lost


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt decided; the task turns it into ack / retry."""

    kind: OutcomeKind
    detail: str = ""
    delay: float | None = None  # seconds until the next attempt (RETRY, HELD)
    transport: Transport | None = None


def backoff_delay(attempt: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; a provider's ``Retry-After``/``X-Ratelimit-Reset`` wins when given."""
    cap = settings.send_retry_backoff_max
    if retry_after is not None:
        return min(cap, max(retry_after, 0.5)) + random.uniform(0, 0.25)
    base = min(cap, settings.send_retry_backoff * (2 ** max(0, attempt - 1)))
    return random.uniform(base / 2, base)


def _at(delay: float) -> datetime:
    return utcnow() + timedelta(seconds=delay)


#: (read at, for which settings, config): one slot, since a process has one settings object at a time.
_config_cache: tuple[float, Settings, Smtp2GoConfig] | None = None


def current_smtp2go_config(conn: Connection, settings: Settings) -> Smtp2GoConfig:
    """The SMTP2Go module settings, read from the database at most every ``MODULE_CACHE_SECONDS`` (a module
    switched on or off with the CLI takes effect within that time; 0 turns the cache off)."""
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
        try:
            outcome = _deliver(conn, tracking_id, owner, settings)
        except LeaseLost as err:
            log.error("attempt abandoned, %s; its outcome is left to the new owner and reconciliation", err)
            return Outcome(OutcomeKind.SKIPPED, str(err))
        conn.commit()
        return outcome


def _deliver(conn: Connection, tracking_id: str, owner: str, settings: Settings) -> Outcome:
    lease = lifecycle.claim(conn, tracking_id, owner=owner, lease_seconds=settings.send_lease_seconds)
    if lease is None:
        return Outcome(OutcomeKind.SKIPPED, "not due, already done, or leased by another worker")
    job = load_job(conn, tracking_id)
    if lease.kind == ClaimKind.TAKEOVER:
        if job.inflight_since is not None:
            return Outcome(OutcomeKind.PARKED, lifecycle.park_unknown(
                conn, lease, "a worker died during the send; the provider may have accepted it"))
        if job.crashes >= settings.max_task_crashes:
            reason = f"worker died {job.crashes} times while preparing this message"
            lifecycle.fail(conn, lease, reason)
            return Outcome(OutcomeKind.FAILED, reason)
    suppressed = [r.id for r in job.recipients if r.suppressed]
    lifecycle.suppress_recipients(conn, lease, suppressed)
    job.recipients = [r for r in job.recipients if not r.suppressed]
    if not job.recipients:
        lifecycle.suppress(conn, lease)
        return Outcome(OutcomeKind.SUPPRESSED)
    try:
        config = current_smtp2go_config(conn, settings)
        transport = choose_transport(job, config, settings)
    except ConfigurationError as err:
        return _hold(conn, lease, str(err), settings)
    email = OutgoingEmail.from_message(job)
    if transport == Transport.SMTP2GO:
        return _send_api(conn, lease, job, email, config, settings)
    return _send_smtp(conn, lease, job, email, settings)


# ------------------------------------------------------------------------------------------------ SMTP2Go


def _send_api(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, config: Smtp2GoConfig,
              settings: Settings) -> Outcome:
    assert config.api_key  # choose_transport picks SMTP2Go only when it has a key
    gate = protection.before_api_send(settings)
    if gate.verdict == "open":
        if settings.smtp_configured:  # this attempt only: the message keeps SMTP2Go as its transport
            lifecycle.relay_this_attempt(conn, lease, f"SMTP2Go circuit breaker open: {gate.problem or 'failures'}")
            return _send_smtp(conn, lease, job, email, settings)
        if gate.problem:
            return _hold(conn, lease, gate.problem, settings, delay=gate.wait)
        return _retry(conn, lease, f"SMTP2Go circuit breaker open for {gate.wait:.0f}s", gate.wait)
    if gate.verdict == "paused":
        return _retry(conn, lease, f"SMTP2Go rate limit: waiting {gate.wait:.1f}s", gate.wait)
    _mark_in_flight(conn, lease, job, Transport.SMTP2GO, settings)
    try:
        email_id = smtp2go_provider.send(
            email=email, api_key=config.api_key, api_url=config.api_url,
            timeout=settings.smtp2go_timeout, connect_timeout=settings.smtp2go_connect_timeout,
            verify=settings.smtp2go_ca_file or True, options=config.options,
        )
    except CredentialsRejected as err:
        protection.open_for_problem(str(err), settings)
        if settings.smtp_configured:
            lifecycle.relay_this_attempt(conn, lease, str(err))
            return _send_smtp(conn, lease, job, email, settings)
        return _hold(conn, lease, str(err), settings, refund=Transport.SMTP2GO)
    except AmbiguousDeliveryError as err:
        protection.record_failure(settings, gate)
        return _park(conn, lease, err, Transport.SMTP2GO)
    except RetryableDeliveryError as err:
        if err.status_code == 429:
            protection.pause_for_rate_limit(err.retry_after or 1.0, settings)
        else:
            protection.record_failure(settings, gate)
        if job.api_attempts <= settings.send_max_retries:
            return _retry(conn, lease, err.describe(), backoff_delay(job.api_attempts, settings, err.retry_after))
        return _fall_back(conn, lease, job, email, f"API retries used up: {err.describe()}", settings)
    except PermanentDeliveryError as err:
        protection.record_success(settings, gate)  # the service answered; it is up
        return _fall_back(conn, lease, job, email, f"API permanent error: {err.describe()}", settings)
    protection.record_success(settings, gate)
    lifecycle.record_accepted(conn, lease, Transport.SMTP2GO, email_id)
    return Outcome(OutcomeKind.SENT, email_id, transport=Transport.SMTP2GO)


def _fall_back(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, reason: str,
               settings: Settings) -> Outcome:
    """SMTP2Go will not take this message: the relay sends it, or, with no relay, it fails."""
    if not settings.smtp_configured:
        reason = f"{reason}; no SMTP relay configured (SMTP_HOST) to fall back to"
        lifecycle.fail(conn, lease, reason)
        return Outcome(OutcomeKind.FAILED, reason, transport=Transport.SMTP2GO)
    lifecycle.abandon_api(conn, lease, reason)
    return _send_smtp(conn, lease, job, email, settings)


# ---------------------------------------------------------------------------------------------- SMTP relay


def _send_smtp(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, settings: Settings) -> Outcome:
    assert settings.smtp_host
    _mark_in_flight(conn, lease, job, Transport.SMTP, settings)
    retries_left = job.smtp_attempts <= settings.smtp_max_retries
    try:
        result = smtp_provider.send(
            email=email, host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
            password=settings.smtp_password, security=settings.smtp_security, timeout=settings.smtp_timeout,
            ca_file=settings.smtp_ca_file,
        )
    except ConfigurationError as err:  # refused relay credentials, an untrusted certificate
        return _hold(conn, lease, str(err), settings, refund=Transport.SMTP)
    except AmbiguousDeliveryError as err:
        return _park(conn, lease, err, Transport.SMTP)
    except RecipientsRefused as err:
        if err.deferred and retries_left:
            delay = backoff_delay(job.smtp_attempts, settings)
            detail = f"{err.describe()}; deferred: " + "; ".join(f"{a}: {w}" for a, w in err.deferred.items())
            lifecycle.retry_later(conn, lease, detail, _at(delay), refused=err.refused)
            return Outcome(OutcomeKind.RETRY, detail, delay=delay, transport=Transport.SMTP)
        lifecycle.fail(conn, lease, err.describe(), refused={**err.refused, **err.deferred})
        return Outcome(OutcomeKind.FAILED, err.describe(), transport=Transport.SMTP)
    except RetryableDeliveryError as err:
        if retries_left:
            return _retry(conn, lease, err.describe(), backoff_delay(job.smtp_attempts, settings, err.retry_after))
        reason = f"SMTP retries used up: {err.describe()}"
        lifecycle.fail(conn, lease, reason)
        return Outcome(OutcomeKind.FAILED, reason, transport=Transport.SMTP)
    except PermanentDeliveryError as err:
        lifecycle.fail(conn, lease, err.describe())
        return Outcome(OutcomeKind.FAILED, err.describe(), transport=Transport.SMTP)
    deferred, refused = result.deferred, dict(result.refused)
    if deferred and not retries_left:  # their retries are used up: they are refused for good
        refused.update({a: f"{why} (SMTP retries used up)" for a, why in deferred.items()})
        deferred = {}
    pause = backoff_delay(job.smtp_attempts, settings)
    lifecycle.record_accepted(conn, lease, Transport.SMTP, result.message_id, refused=refused, deferred=deferred,
                              retry_at=_at(pause) if deferred else None)
    if deferred:
        return Outcome(OutcomeKind.RETRY, f"{len(deferred)} recipient(s) deferred", delay=pause,
                       transport=Transport.SMTP)
    return Outcome(OutcomeKind.SENT, result.message_id, transport=Transport.SMTP)


# ----------------------------------------------------------------------------------------------- helpers


def _mark_in_flight(conn: Connection, lease: Lease, job: SendJob, transport: Transport, settings: Settings) -> None:
    lifecycle.mark_in_flight(conn, lease, transport, lease_seconds=settings.send_lease_seconds)
    job.attempts += 1
    if transport == Transport.SMTP2GO:
        job.api_attempts += 1
    else:
        job.smtp_attempts += 1
    hook = progress_hook.get()
    if hook is not None:
        step = "api_attempt" if transport == Transport.SMTP2GO else "smtp_attempt"
        attempt = job.api_attempts if transport == Transport.SMTP2GO else job.smtp_attempts
        hook(step, {"attempt": attempt, "fallback": job.api_abandoned})


def _park(conn: Connection, lease: Lease, err: DeliveryError, transport: Transport) -> Outcome:
    return Outcome(OutcomeKind.PARKED, lifecycle.park_unknown(conn, lease, err.describe()), transport=transport)


def _retry(conn: Connection, lease: Lease, reason: str, delay: float) -> Outcome:
    delay = max(0.2, delay)
    lifecycle.retry_later(conn, lease, reason, _at(delay))
    return Outcome(OutcomeKind.RETRY, reason, delay=delay)


_warned_lock = threading.Lock()
_warned_at: dict[str, float] = {}


def _hold(conn: Connection, lease: Lease, problem: str, settings: Settings, *, delay: float | None = None,
          refund: Transport | None = None) -> Outcome:
    """Hold the message for an operator problem, logging the problem as a WARNING once per cool-down."""
    cooldown = max(1.0, settings.smtp2go_breaker_cooldown)
    wait = max(1.0, delay if delay is not None else cooldown) + random.uniform(0, 1)
    lifecycle.hold(conn, lease, problem, _at(wait), refund=refund)
    now = time.monotonic()
    with _warned_lock:
        loud = now - _warned_at.get(problem, -cooldown - 1) > cooldown
        if loud:
            _warned_at[problem] = now
    log.log(logging.WARNING if loud else logging.INFO,
            "mail held for an operator problem (retrying every %.0fs until fixed; `mailworker requeue --held` "
            "sends at once): %s", cooldown, problem)
    return Outcome(OutcomeKind.HELD, problem, delay=wait)


