"""The send service: one delivery attempt through the provider chain.

The Celery task (``worker.tasks.send_email``) wraps :func:`deliver`. One attempt is: claim the lease, drop
suppressed recipients, pick the first provider of ``MAIL_PROVIDERS`` that is configured and still has budget for
this message, send through its transport (behind its breaker; the attempt is recorded in flight just before the
message can leave), then apply what :func:`worker.sending.policy.decide` makes of the outcome with one transition
of :mod:`worker.sending.lifecycle`. ``NEXT`` hands the same attempt to the following provider.
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

from worker import providers
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import AttemptOutcome, utcnow
from worker.providers.base import Accepted, Held, NotSent, Outcome, OutgoingEmail, Transport, Unknown
from worker.providers.breaker import Breaker
from worker.sending import lifecycle
from worker.sending.jobs import SendJob, load_job
from worker.sending.lifecycle import AttemptEnd, ClaimKind, Lease, LeaseLost
from worker.sending.policy import Policy, Step, Transition, backoff_delay, decide

log = logging.getLogger(__name__)

#: Set by the Celery task to report steps (``attempt``) to Flower while a send runs.
progress_hook: ContextVar[Callable[[str, dict[str, object]], None] | None] = ContextVar("progress_hook",
                                                                                        default=None)


class OutcomeKind(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # nothing sent; due again after ``delay``
    HELD = "held"  # an operator problem; due again after ``delay``
    PARKED = "ambiguous"  # outcome unknown (the message is parked); reconciliation decides
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"  # not ours: not due, already done, leased elsewhere, or the lease was lost


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt decided; the task turns it into ack / retry."""

    kind: OutcomeKind
    detail: str = ""
    delay: float | None = None  # seconds until the next attempt (RETRY, HELD)
    provider: str | None = None

    @property
    def transport(self) -> str | None:
        """The kind of provider (``smtp2go`` for ``smtp2go:eu``)."""
        return providers.kind_of(self.provider) if self.provider else None


def policy_for(name: str, settings: Settings) -> Policy:
    """A provider's retry budget and backoff: the relay's own budget, ``SEND_MAX_RETRIES`` for the others."""
    retries = settings.smtp_max_retries if providers.kind_of(name) == "smtp" else settings.send_max_retries
    return Policy(retries=retries, backoff=settings.send_retry_backoff, backoff_max=settings.send_retry_backoff_max,
                  hold_for=max(1.0, settings.smtp2go_breaker_cooldown))


def deliver(tracking_id: str, *, owner: str, settings: Settings | None = None) -> AttemptResult:
    """Run one delivery attempt for ``tracking_id`` on one database connection."""
    settings = settings or get_settings()
    with get_engine().connect() as conn:
        try:
            outcome = _deliver(conn, tracking_id, owner, settings)
        except LeaseLost as err:
            log.error("attempt abandoned, %s; its outcome is left to the new owner and reconciliation", err)
            return AttemptResult(OutcomeKind.SKIPPED, str(err))
        conn.commit()
        return outcome


def _deliver(conn: Connection, tracking_id: str, owner: str, settings: Settings) -> AttemptResult:
    lease = lifecycle.claim(conn, tracking_id, owner=owner, lease_seconds=settings.send_lease_seconds)
    if lease is None:
        return AttemptResult(OutcomeKind.SKIPPED, "not due, already done, or leased by another worker")
    job = load_job(conn, tracking_id)
    if lease.kind == ClaimKind.TAKEOVER:
        if job.inflight_since is not None:
            died = (AttemptEnd(job.inflight_attempt, AttemptOutcome.UNKNOWN, error="its worker died during the send")
                    if job.inflight_attempt is not None else None)
            return AttemptResult(OutcomeKind.PARKED, lifecycle.park_unknown(
                conn, lease, "a worker died during the send; the provider may have accepted it", attempt=died))
        if job.crashes >= settings.max_task_crashes:
            reason = f"worker died {job.crashes} times while preparing this message"
            lifecycle.fail(conn, lease, reason)
            return AttemptResult(OutcomeKind.FAILED, reason)
    lifecycle.suppress_recipients(conn, lease, [r.id for r in job.recipients if r.suppressed])
    job.recipients = [r for r in job.recipients if not r.suppressed]
    if not job.recipients:
        lifecycle.suppress(conn, lease)
        return AttemptResult(OutcomeKind.SUPPRESSED)
    return send_through_chain(conn, lease, job, OutgoingEmail.from_message(job), providers.chain(settings), settings)


def send_through_chain(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, names: list[str],
                       settings: Settings) -> AttemptResult:
    """One attempt of a claimed message through the providers ``names`` in order: each usable one (not given up
    on, configured, wrapped in its breaker) until a decision stops the walk; none usable holds the message."""
    problems: list[str] = []
    usable: list[tuple[str, Transport]] = []
    for name in names:
        if job.gave_up(name, policy_for(name, settings).retries):
            continue
        transport = providers.get(name).transport(name, providers.variant_of(name), conn, settings)
        if isinstance(transport, Held):
            problems.append(f"{name}: {transport.problem}")
        elif transport is not None:
            usable.append((name, Breaker(transport, name, settings)))
    if not usable:
        problem = "; ".join(problems) or (
            "no transport configured: no provider of MAIL_PROVIDERS can take this message (enable the SMTP2Go "
            "module with SMTP2GO_API_KEY, or set SMTP_HOST)")
        return _hold(conn, lease, problem, settings)
    for index, (name, transport) in enumerate(usable):
        result = _attempt(conn, lease, job, email, name, transport, settings, providers_left=len(usable) - index - 1)
        if result is not None:
            return result
    raise AssertionError("the last provider never hands on")  # decide() gives NEXT only with providers left


def _attempt(conn: Connection, lease: Lease, job: SendJob, email: OutgoingEmail, name: str, transport: Transport,
             settings: Settings, *, providers_left: int) -> AttemptResult | None:
    """Send through one provider and apply the decision; None hands the attempt to the next provider."""
    attempt_id: int | None = None
    started = utcnow()

    def departing() -> None:
        nonlocal attempt_id
        attempt_id = lifecycle.mark_in_flight(conn, lease, name, lease_seconds=settings.send_lease_seconds)
        job.count(name)
        hook = progress_hook.get()
        if hook is not None:
            hook("attempt", {"provider": name, "attempt": job.used(name)})

    outcome = transport.send(email, departing)
    policy = policy_for(name, settings)
    transition = decide(outcome, job.used(name), policy, providers_left=providers_left, provider=name)
    end = _end(attempt_id, outcome, started) if attempt_id is not None else None
    return _apply(conn, lease, job, name, outcome, transition, policy, end=end)


def _finish(conn: Connection, attempt_id: int, outcome: Outcome, started: datetime) -> None:
    """Write what came back for one attempt by itself (for a caller that applies the outcome apart)."""
    end = _end(attempt_id, outcome, started)
    lifecycle.finish_attempt(conn, attempt_id, end.outcome, error=end.error,
                             provider_message_id=end.provider_message_id, started=started)


def _end(attempt_id: int, outcome: Outcome, started: datetime) -> AttemptEnd:
    """What the attempt row records; the transition that applies the outcome writes it in its own UPDATE."""
    if isinstance(outcome, Accepted):
        return AttemptEnd(attempt_id, AttemptOutcome.ACCEPTED, started=started, provider_message_id=outcome.provider_id)
    if isinstance(outcome, Unknown):
        return AttemptEnd(attempt_id, AttemptOutcome.UNKNOWN, error=outcome.reason, started=started)
    if isinstance(outcome, Held):
        return AttemptEnd(attempt_id, AttemptOutcome.HELD, error=outcome.problem, started=started)
    kind = AttemptOutcome.NOT_SENT if outcome.retryable else AttemptOutcome.REFUSED
    return AttemptEnd(attempt_id, kind, error=outcome.reason, started=started)


def _at(delay: float) -> datetime:
    return utcnow() + timedelta(seconds=delay)


def _apply(conn: Connection, lease: Lease, job: SendJob, name: str, outcome: Outcome, transition: Transition,
           policy: Policy, *, end: AttemptEnd | None = None) -> AttemptResult | None:
    """Apply ``transition`` with one lifecycle transition; ``end`` (the attempt row's outcome) is written in the
    transition's own UPDATE."""
    step = transition.step
    if step == Step.ACCEPT:
        assert isinstance(outcome, Accepted)
        deferred, refused = dict(outcome.deferred), dict(outcome.refused)
        if deferred and job.used(name) > policy.retries:  # their retries are used up: refused for good
            refused.update({a: f"{why} ({name} retries used up)" for a, why in deferred.items()})
            deferred = {}
        pause = backoff_delay(job.used(name), policy)
        lifecycle.record_accepted(conn, lease, name, outcome.provider_id, refused=refused,
                                  deferred=deferred, retry_at=_at(pause) if deferred else None, attempt=end)
        if deferred:
            return AttemptResult(OutcomeKind.RETRY, f"{len(deferred)} recipient(s) deferred", pause, name)
        return AttemptResult(OutcomeKind.SENT, outcome.provider_id, provider=name)
    if step == Step.PARK:
        return AttemptResult(OutcomeKind.PARKED, lifecycle.park_unknown(conn, lease, transition.reason, attempt=end),
                             provider=name)
    if step == Step.HOLD:
        return _hold(conn, lease, transition.reason, None, delay=transition.delay, attempt=end)
    if step == Step.NEXT:
        lifecycle.next_provider(conn, lease, transition.reason, attempt=end)
        return None
    refused = dict(outcome.refused) if isinstance(outcome, NotSent) else {}
    if step == Step.RETRY:
        reason = transition.reason
        if isinstance(outcome, NotSent) and outcome.deferred:
            reason += "; deferred: " + "; ".join(f"{a}: {w}" for a, w in outcome.deferred.items())
        assert transition.delay is not None
        lifecycle.retry_later(conn, lease, reason, _at(transition.delay), refused=refused, attempt=end)
        return AttemptResult(OutcomeKind.RETRY, reason, transition.delay, name)
    if isinstance(outcome, NotSent):
        refused.update(outcome.deferred)
    lifecycle.fail(conn, lease, transition.reason, refused=refused, attempt=end)
    return AttemptResult(OutcomeKind.FAILED, transition.reason, provider=name)


_warned_lock = threading.Lock()
_warned_at: dict[str, float] = {}


def _hold(conn: Connection, lease: Lease, problem: str, settings: Settings | None, *,
          delay: float | None = None, attempt: AttemptEnd | None = None) -> AttemptResult:
    """Hold the message for an operator problem, logging the problem as a WARNING once per cool-down."""
    cooldown = max(1.0, (settings or get_settings()).smtp2go_breaker_cooldown)
    wait = max(1.0, delay if delay is not None else cooldown) + random.uniform(0, 1)
    lifecycle.hold(conn, lease, problem, _at(wait), attempt=attempt)
    now = time.monotonic()
    with _warned_lock:
        loud = now - _warned_at.get(problem, -cooldown - 1) > cooldown
        if loud:
            _warned_at[problem] = now
    log.log(logging.WARNING if loud else logging.INFO,
            "mail held for an operator problem (retrying every %.0fs until fixed; `mailworker requeue --held` "
            "sends at once): %s", cooldown, problem)
    return AttemptResult(OutcomeKind.HELD, problem, delay=wait)
