"""``decide`` as a table: outcome x attempts used x providers left x operator problem -> transition.
Unit layer: no services."""

from __future__ import annotations

import pytest

from worker.providers.base import Accepted, Held, NotSent, Outcome, Unknown
from worker.sending.policy import Policy, Step, decide

POLICY = Policy(retries=2, backoff=1.0, backoff_max=10.0, hold_for=30.0)
RETRYABLE = NotSent(retryable=True, reason="503")
PERMANENT = NotSent(retryable=False, reason="400 bad sender")
DECLINED = NotSent(retryable=True, reason="breaker open", retry_after=12.0, declined=True)
DECLINED_FOR_KEY = NotSent(retryable=True, reason="breaker open", retry_after=12.0, declined=True,
                           problem="key refused (401)")
UNBUILDABLE = NotSent(retryable=False, reason="cannot build", unbuildable=True)
ALL_REFUSED = NotSent(retryable=True, reason="every recipient", deferred={"a@example.com": "451 later"})

TABLE: list[tuple[Outcome, int, int, Step]] = [
    # outcome, attempts used (this one included), providers left after this one, expected step
    (Accepted("id-1"), 1, 0, Step.ACCEPT),
    (Accepted("id-1"), 9, 1, Step.ACCEPT),
    (Unknown("read timeout"), 1, 1, Step.PARK),  # never handed on: reconciliation asks this provider first
    (Unknown("read timeout"), 3, 0, Step.PARK),
    (RETRYABLE, 1, 0, Step.RETRY),
    (RETRYABLE, 2, 0, Step.RETRY),  # the second retry is the budget's last one
    (RETRYABLE, 3, 0, Step.FAIL),  # first try + 2 retries failed: budget spent, nobody left
    (RETRYABLE, 3, 1, Step.NEXT),  # budget spent: the next provider
    (PERMANENT, 1, 0, Step.FAIL),
    (PERMANENT, 1, 1, Step.NEXT),
    (UNBUILDABLE, 1, 1, Step.FAIL),  # the message itself is at fault: no provider can help
    (ALL_REFUSED, 1, 1, Step.RETRY),  # deferred recipients: the same provider later
    (ALL_REFUSED, 3, 1, Step.FAIL),  # another provider would refuse them too
    (DECLINED, 0, 1, Step.NEXT),  # breaker open: the next provider takes this attempt
    (DECLINED, 0, 0, Step.RETRY),
    (DECLINED_FOR_KEY, 0, 0, Step.HOLD),  # operator problem behind the breaker, nobody left
    (DECLINED_FOR_KEY, 0, 1, Step.NEXT),
    (Held("no API key"), 1, 0, Step.HOLD),  # operator problem: never fail
    (Held("no API key"), 5, 0, Step.HOLD),
    (Held("no API key"), 1, 1, Step.NEXT),
]


@pytest.mark.parametrize(("outcome", "used", "left", "step"), TABLE)
def test_decide(outcome: Outcome, used: int, left: int, step: Step) -> None:
    assert decide(outcome, used, POLICY, providers_left=left, provider="p").step == step


def test_waits_come_from_the_provider_or_the_policy() -> None:
    assert decide(DECLINED, 0, POLICY, providers_left=0).delay == 12.0
    assert decide(Held("x"), 1, POLICY, providers_left=0).delay == 30.0
    retry = decide(NotSent(retryable=True, reason="429", retry_after=5.0), 1, POLICY, providers_left=0)
    assert retry.delay is not None and 5.0 <= retry.delay <= 5.25


def test_the_reason_says_why_the_provider_was_left() -> None:
    assert decide(RETRYABLE, 3, POLICY, providers_left=1, provider="smtp2go:eu").reason == (
        "smtp2go:eu retries used up: 503")
    assert decide(PERMANENT, 1, POLICY, providers_left=0, provider="smtp").reason == (
        "smtp permanent error: 400 bad sender")
