"""What an outcome means for the message: one pure function, :func:`decide`, from a provider's outcome and the
attempts used so far to the transition the send path applies (no I/O: tested as a table)."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from worker.providers.base import Accepted, Held, NotSent, Outcome, Unknown


class Step(enum.StrEnum):
    ACCEPT = "accept"  # record_accepted (deferred recipients retried alone)
    RETRY = "retry"  # nothing sent: the same provider again after ``delay``
    NEXT = "next"  # hand this attempt to the next provider of the chain
    PARK = "park"  # outcome unknown: reconciliation settles it
    HOLD = "hold"  # an operator problem: wait ``delay``, never fail
    FAIL = "fail"  # refused for good by the last provider that could take it


@dataclass(frozen=True)
class Policy:
    """``retries``: how many retries this provider gets (its budget); backoff in seconds."""

    retries: int
    backoff: float = 1.0
    backoff_max: float = 300.0
    hold_for: float = 30.0


@dataclass(frozen=True)
class Transition:
    step: Step
    reason: str = ""
    delay: float | None = None


def backoff_delay(attempt: int, policy: Policy, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; a provider's ``Retry-After``/``X-Ratelimit-Reset`` wins when given."""
    cap = policy.backoff_max
    if retry_after is not None:
        return min(cap, max(retry_after, 0.5)) + random.uniform(0, 0.25)
    base = min(cap, policy.backoff * (2 ** max(0, attempt - 1)))
    return random.uniform(base / 2, base)


def decide(outcome: Outcome, attempts: int, policy: Policy, *, providers_left: int, provider: str = "") -> Transition:
    """The transition for ``outcome`` of ``provider``, which has had ``attempts`` attempts for this message
    (this one included when it departed) and ``providers_left`` providers after it in the chain."""
    if isinstance(outcome, Accepted):
        return Transition(Step.ACCEPT, outcome.provider_id)
    if isinstance(outcome, Held):  # an operator problem: the next provider sends this attempt, or it waits
        if providers_left:
            return Transition(Step.NEXT, outcome.problem)
        return Transition(Step.HOLD, outcome.problem, policy.hold_for)
    if isinstance(outcome, Unknown):
        return Transition(Step.PARK, outcome.reason)
    assert isinstance(outcome, NotSent)
    if outcome.unbuildable:
        return Transition(Step.FAIL, outcome.reason)
    if outcome.declined:  # not tried (breaker open): the next provider takes this attempt, or it waits
        if providers_left:
            return Transition(Step.NEXT, outcome.reason)
        if outcome.problem:
            return Transition(Step.HOLD, outcome.problem, outcome.retry_after or policy.hold_for)
        return Transition(Step.RETRY, outcome.reason, max(0.2, outcome.retry_after or 1.0))
    budget_left = attempts <= policy.retries
    if outcome.retryable and budget_left:
        return Transition(Step.RETRY, outcome.reason, max(0.2, backoff_delay(attempts, policy, outcome.retry_after)))
    if outcome.refused or outcome.deferred:  # every recipient refused: another provider would refuse them too
        return Transition(Step.FAIL, outcome.reason)
    what = f"{provider} retries used up" if outcome.retryable else f"{provider} permanent error"
    reason = f"{what}: {outcome.reason}" if provider else outcome.reason
    if providers_left:
        return Transition(Step.NEXT, reason)
    return Transition(Step.FAIL, reason)
