"""The send service: one delivery attempt, deciding what each transport outcome means for the message.

The Celery task (``worker.tasks.send_email``) is a thin wrapper around :func:`deliver`. One attempt is: choose
the transport, send through it (the transport marks the attempt in flight just before the message can leave,
through ``departing``), then one transition of :mod:`worker.sending.lifecycle` per outcome
(:mod:`worker.sending.transports.base`):

- :class:`Accepted` -> ``record_accepted`` (a relay's per-recipient 4xx stay queued and are retried alone);
- :class:`NotSent`, retryable -> ``retry_later`` with backoff until the transport's budget is used up, then the
  next transport (SMTP2Go -> relay) or ``fail``; permanent -> the next transport or ``fail``; ``unbuildable``
  (the request could not be built, before anything left) -> ``fail`` at once: the message itself is at fault,
  nothing departed, so nothing is parked, retried or handed to another transport. A transport that
  declined before anything left (SMTP2Go's breaker open, a rate-limit pause) spent no attempt: the relay sends
  this attempt when the outcome allows it (``relay_this_attempt``; the message keeps SMTP2Go), else the message
  waits as long as the transport said (``retry_later``, or ``hold`` when an operator problem opened the breaker);
- :class:`Unknown` -> ``park_unknown``: never resent blindly, reconciliation settles it;
- an operator problem (revoked key, missing encryption key, no usable transport) raises
  :class:`ConfigurationError` -> ``hold``: the message waits, never fails, and is sent once the problem is
  fixed; the attempt that met it is refunded. A refused SMTP2Go key lets the relay send this attempt when there
  is one. SMTP2Go sends go through :class:`~worker.sending.protection.ProtectedTransport`, so a refused key also
  opens the shared breaker and one trial request per cool-down (not every message) meets the bad key.
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

from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Transport, utcnow
from worker.infrastructure.modules import Smtp2GoConfig, smtp2go_config
from worker.sending import lifecycle
from worker.sending.jobs import SendJob, load_job
from worker.sending.lifecycle import ClaimKind, Lease, LeaseLost
from worker.sending.protection import ProtectedTransport
from worker.sending.transports import Accepted, MailTransport, NotSent, OutgoingEmail, Unknown, choose_transport
from worker.sending.transports.smtp import SmtpTransport
from worker.sending.transports.smtp2go import Smtp2GoTransport

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
        kind = choose_transport(job, config, settings)
        transport = transport_for(kind, config, settings)
    except ConfigurationError as err:
        return _hold(conn, lease, str(err), settings)
    return _attempt(conn, lease, job, OutgoingEmail.from_message(job), transport, config, settings)


def transport_for(kind: Transport, config: Smtp2GoConfig, settings: Settings) -> MailTransport:
    """The transport of ``kind``, built with its credentials; SMTP2Go behind the breaker and rate limit."""
    if kind == Transport.SMTP2GO:
        return ProtectedTransport(Smtp2GoTransport.from_config(config, settings), settings)
    return SmtpTransport.from_settings(settings)


# ------------------------------------------------------------------------------------------- one attempt


def _attempt(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, transport: MailTransport,
             config: Smtp2GoConfig, settings: Settings) -> Outcome:
    """Send through ``transport`` and record the outcome with one transition (or hand over to the relay)."""
    departed = False

    def departing() -> None:
        nonlocal departed
        _mark_in_flight(conn, lease, job, transport.kind, settings)
        departed = True

    def relay(reason: str, transition: Callable[[Connection, Lease, str], None]) -> Outcome:
        transition(conn, lease, reason)
        return _attempt(conn, lease, job, email, transport_for(Transport.SMTP, config, settings), config, settings)

    relay_available = transport.kind != Transport.SMTP and settings.smtp_configured
    try:
        outcome = transport.send(email=email, departing=departing)
    except ConfigurationError as err:  # an operator problem: the relay sends this attempt, or the message waits
        if relay_available:
            return relay(str(err), lifecycle.relay_this_attempt)
        return _hold(conn, lease, str(err), settings, refund=transport.kind if departed else None)

    if isinstance(outcome, Accepted):
        return _accepted(conn, lease, job, transport.kind, outcome, settings)
    if isinstance(outcome, NotSent) and outcome.unbuildable:
        lifecycle.fail(conn, lease, outcome.reason)
        return Outcome(OutcomeKind.FAILED, outcome.reason, transport=transport.kind)
    if isinstance(outcome, Unknown):
        return Outcome(OutcomeKind.PARKED, lifecycle.park_unknown(conn, lease, outcome.reason),
                       transport=transport.kind)
    if not departed:  # declined before anything left (breaker open, rate limit): no attempt was spent
        if outcome.relay_may_take and relay_available:
            return relay(outcome.reason, lifecycle.relay_this_attempt)
        wait = outcome.retry_after if outcome.retry_after is not None else 1.0
        if outcome.problem:
            return _hold(conn, lease, outcome.problem, settings, delay=wait)
        return _retry(conn, lease, outcome.reason, wait)
    return _not_sent(conn, lease, job, transport.kind, outcome, settings, relay)


def _attempts(job: SendJob, kind: Transport) -> int:
    return job.api_attempts if kind == Transport.SMTP2GO else job.smtp_attempts


def _retries_left(job: SendJob, kind: Transport, settings: Settings) -> bool:
    budget = settings.send_max_retries if kind == Transport.SMTP2GO else settings.smtp_max_retries
    return _attempts(job, kind) <= budget


def _accepted(conn: Connection, lease: Lease, job: SendJob, kind: Transport, outcome: Accepted,
              settings: Settings) -> Outcome:
    """``record_accepted``; deferred recipients are retried alone, or refused once the retries are used up."""
    deferred, refused = outcome.deferred, dict(outcome.refused)
    if deferred and not _retries_left(job, kind, settings):  # their retries are used up: refused for good
        refused.update({a: f"{why} ({kind.value.upper()} retries used up)" for a, why in deferred.items()})
        deferred = {}
    pause = backoff_delay(_attempts(job, kind), settings)
    lifecycle.record_accepted(conn, lease, kind, outcome.provider_id, refused=refused, deferred=deferred,
                              retry_at=_at(pause) if deferred else None)
    if deferred:
        return Outcome(OutcomeKind.RETRY, f"{len(deferred)} recipient(s) deferred", delay=pause, transport=kind)
    return Outcome(OutcomeKind.SENT, outcome.provider_id, transport=kind)


def _not_sent(conn: Connection, lease: Lease, job: SendJob, kind: Transport, outcome: NotSent, settings: Settings,
              relay: Callable[[str, Callable[[Connection, Lease, str], None]], Outcome]) -> Outcome:
    """Nothing was sent: retry this transport while its budget lasts, else the next transport, else fail."""
    label = "API" if kind == Transport.SMTP2GO else "SMTP"
    retries_left = _retries_left(job, kind, settings)
    if outcome.refused or outcome.deferred:  # every recipient refused: retry only if some were deferred
        if outcome.retryable and retries_left:
            delay = backoff_delay(_attempts(job, kind), settings)
            detail = f"{outcome.reason}; deferred: " + "; ".join(f"{a}: {w}" for a, w in outcome.deferred.items())
            lifecycle.retry_later(conn, lease, detail, _at(delay), refused=outcome.refused)
            return Outcome(OutcomeKind.RETRY, detail, delay=delay, transport=kind)
        lifecycle.fail(conn, lease, outcome.reason, refused={**outcome.refused, **outcome.deferred})
        return Outcome(OutcomeKind.FAILED, outcome.reason, transport=kind)
    if outcome.retryable and retries_left:
        return _retry(conn, lease, outcome.reason, backoff_delay(_attempts(job, kind), settings, outcome.retry_after))
    if kind == Transport.SMTP:  # the last transport
        reason = f"SMTP retries used up: {outcome.reason}" if outcome.retryable else outcome.reason
        lifecycle.fail(conn, lease, reason)
        return Outcome(OutcomeKind.FAILED, reason, transport=kind)
    reason = f"{label} retries used up: {outcome.reason}" if outcome.retryable else \
        f"{label} permanent error: {outcome.reason}"
    if not settings.smtp_configured:  # SMTP2Go will not take it and there is no relay: it fails
        reason = f"{reason}; no SMTP relay configured (SMTP_HOST) to fall back to"
        lifecycle.fail(conn, lease, reason)
        return Outcome(OutcomeKind.FAILED, reason, transport=kind)
    return relay(reason, lifecycle.abandon_api)


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
        hook(step, {"attempt": _attempts(job, transport), "fallback": job.api_abandoned})


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


