"""The periodic reconciler and the bulk lane's ``settle_batch`` never work the same parked email, and share one
``/activity/search`` budget: parked emails of a batch its ``settle_batch`` is settling (the ``<bulk queue>:settling``
mark) are skipped; parked bulk emails nobody settles are settled per batch with ONE search; both searchers take
their requests from one token bucket in Redis per API key. Real MariaDB, Redis and the fake SMTP2Go over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from worker import enqueue_many
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.config import reset_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus
from worker.operations.reconcile import clear_settling, mark_settling, reconcile, settling
from worker.sending.batch import send_batch, settle_parked


def _statuses(ids: list[str]) -> dict[str, str]:
    with session_scope() as session:
        return {i: s.value for i, s in session.execute(select(Message.id, Message.status).where(Message.id.in_(ids)))}


def _parked_batch(fake_api: Any, n: int = 6, accepted: int = 4) -> list[str]:
    """``n`` bulk emails sent as one batch whose answer was a 502 after SMTP2Go took the first ``accepted``."""
    ids = enqueue_many([{"to": f"p{i}@example.com", "subject": f"news {i}", "text_body": "b"} for i in range(n)])
    scripted = Scripted.server_error(502)
    scripted.accept_items = accepted
    fake_api.script_batch(scripted)
    report = send_batch(ids, owner="test-batch")
    assert sorted(report.parked) == sorted(ids)
    assert set(_statuses(ids).values()) == {"parked"}
    return ids


def test_parked_batch_being_settled_is_skipped_then_settled_with_one_search(
        fake_api: Any, db: str, redis_client: Any, base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("RECONCILE_RESEND_AFTER", "0")  # the fake's activity has no lag: a negative search is final
    reset_settings()
    ids = _parked_batch(fake_api)
    mark_settling(ids)  # what send_batch does when it publishes settle_batch
    assert settling(ids) == set(ids)

    skipped = reconcile(settle=0)

    assert fake_api.activity_queries == []  # settle_batch's emails: not searched by the periodic pass
    assert (skipped.resolved_sent, skipped.released, skipped.still_ambiguous) == (0, 0, 0)
    assert set(_statuses(ids).values()) == {"parked"}

    clear_settling(ids)  # settle_batch gone (its message lost with the broker, say): this pass takes over
    took_over = reconcile(settle=0)

    assert len(fake_api.activity_queries) == 1  # ONE search for the batch's window, not one per email
    assert "search_recipient" not in fake_api.activity_queries[0]
    assert (took_over.resolved_sent, took_over.released) == (4, 2)
    final = _statuses(ids)
    assert [final[t] for t in ids[:4]] == ["sent"] * 4  # SMTP2Go had them: never sent again
    assert [final[t] for t in ids[4:]] == ["retrying"] * 2  # it never had them: released for a resend
    assert all(fake_api.count_for(t) == 1 for t in ids[:4]) and all(fake_api.count_for(t) == 0 for t in ids[4:])


def test_an_expired_settling_mark_hands_the_batch_to_the_periodic_pass(fake_api: Any, db: str,
                                                                       redis_client: Any) -> None:
    ids = _parked_batch(fake_api, n=2, accepted=2)
    mark_settling(ids, ttl=-1)  # its settle_batch has not run for longer than the mark lasts
    assert settling(ids) == set()
    assert reconcile(settle=0).resolved_sent == 2
    assert set(_statuses(ids).values()) == {MessageStatus.SENT.value}


def test_settle_batch_and_the_reconciler_share_one_activity_budget(fake_api: Any, db: str, redis_client: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.providers.smtp2go import reconcile as smtp2go_reconcile

    ids = _parked_batch(fake_api)  # RECONCILE_RESEND_AFTER at its default: two stay parked after a search
    # A budget of one request a minute, so that the first searcher uses all of it (each run's own cap is 1 too:
    # what stops the second one can only be the shared bucket).
    monkeypatch.setattr(smtp2go_reconcile, "ACTIVITY_REQUESTS_PER_MINUTE", 1)

    settled = settle_parked(ids)  # settle_batch's search: the one request of the minute
    assert len(fake_api.activity_queries) == 1 and settled.resolved_sent == 4 and settled.waiting == 2

    periodic = reconcile(settle=0)  # the two left, not marked as settling: the periodic pass would search

    assert periodic.stopped == "rate_limited", periodic.as_dict()
    assert len(fake_api.activity_queries) == 1  # the shared bucket stopped it before any request
    assert (periodic.resolved_sent, periodic.released) == (0, 0)
    assert [_statuses(ids)[t] for t in ids[4:]] == ["parked"] * 2
