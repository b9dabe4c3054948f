"""Delivering status events: fan new outbox rows out into deliveries, run due deliveries, replay.

Two kinds of target: each enabled HTTP endpoint that wants the event type (signed the Standard Webhooks way,
:mod:`worker.callbacks.signing`), and the Python hook ``MAILWORKER_STATUS_HOOK=package.module:function`` (called
with the body as a dict). Every delivery is one row; every attempt of it is stored (status code or error,
duration, the next attempt). The periodic ``mailworker.dispatch_callbacks`` task (:func:`dispatch`) makes the
deliveries of new events and publishes one task per due delivery (``mailworker.deliver_callback`` /
``mailworker.status_hook``) on the callbacks queue, so a slow receiver or hook never delays a send.

Each attempt is bounded: an HTTP attempt by a total deadline (``CALLBACK_TIMEOUT``) and at most 64 KB read of
the answer, to public addresses only (:mod:`worker.callbacks.http`); the hook by ``CALLBACK_HOOK_TIMEOUT``
(:mod:`worker.callbacks.hook`). :func:`attempt_delivery` first takes the delivery (a conditional UPDATE that moves its
``next_attempt_at`` and ``locked_until`` to the end of the attempt's lease): a second copy of the task arriving
while it is in flight, or after it is done, finds it taken and does nothing.

Retries: network errors, timeouts, 429 and 5xx (a hook: any exception or a timeout) are retried on
:data:`RETRY_SCHEDULE` with +-20 % jitter, about a day in all (``CALLBACK_RETRY_SCHEDULE``, comma-separated
seconds, overrides it); then the delivery is ``dead`` (a dead letter, kept for ``replay``). A 410 disables the
endpoint and makes its delivery dead; another 4xx is a permanent refusal (dead at once), and so is a URL that
resolves to an address that is not allowed. 2xx is delivered.

Receivers must apply an event idempotently: ``webhook-id`` (and ``data.event_id``) is the same on every retry and
every replay of one event, and ``data.sequence`` orders one message's events.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Table, and_, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from worker.callbacks import endpoints, http, signing
from worker.callbacks.hook import call_hook, hook_spec
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine
from worker.infrastructure.dberrors import describe, is_transient
from worker.infrastructure.models import (
    CallbackAttempt,
    CallbackDelivery,
    CallbackEndpoint,
    StatusEvent,
    utcnow,
)
from worker.infrastructure.settings_spec import read, setting

log = logging.getLogger(__name__)
T = TypeVar("T")

SE = cast(Table, StatusEvent.__table__)
CD = cast(Table, CallbackDelivery.__table__)
CA = cast(Table, CallbackAttempt.__table__)
CE = cast(Table, CallbackEndpoint.__table__)

HTTP, HOOK = "http", "hook"
HOOK_ENDPOINT_ID = 0
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
DELIVER_TASK, HOOK_TASK = "mailworker.deliver_callback", "mailworker.status_hook"

#: Seconds before attempt 2, 3, ... (Standard Webhooks' suggested schedule): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
#: 10 h -- eight attempts over about 27 hours. The default of ``CALLBACK_RETRY_SCHEDULE`` (settings_spec).
RETRY_SCHEDULE: tuple[float, ...] = setting("CALLBACK_RETRY_SCHEDULE").default
#: How long a published delivery task may wait in the queue for a worker before the dispatcher publishes it
#: again (a late copy is harmless: :func:`attempt_delivery` finds the delivery taken or done).
QUEUE_WAIT = 300.0


def retry_schedule() -> tuple[float, ...]:
    """``CALLBACK_RETRY_SCHEDULE``, else :data:`RETRY_SCHEDULE` (its declared default)."""
    return tuple(read("CALLBACK_RETRY_SCHEDULE"))


def attempt_seconds(settings: Settings) -> float:
    """The longest one attempt runs by its in-code bound: the HTTP deadline or the hook's time limit."""
    return max(settings.callback_timeout, settings.callback_hook_timeout)


def task_time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) Celery time limits of one delivery task: just above the in-code bound plus the database
    writes around it. They back that bound under the prefork pool; the threads pool ignores time limits, and
    there the in-code deadline is the only bound."""
    soft = attempt_seconds(settings) + 15
    return soft, soft + 10


def lease_seconds(settings: Settings) -> float:
    """How long :func:`attempt_delivery` holds a delivery it took: beyond the task's hard time limit (a task killed at
    it leaves the delivery to be taken again after this), with room for the attempt to run twice as long."""
    return max(task_time_limits(settings)[1], 2 * attempt_seconds(settings)) + 30


def publish_lock_seconds(settings: Settings) -> float:
    """A published delivery is not published again for this long: the queue wait, then the attempt's lease."""
    return QUEUE_WAIT + lease_seconds(settings)


# ------------------------------------------------------------------------------------------ the body


def body_of(event: Any) -> dict[str, Any]:
    """``{"type", "timestamp", "data": {...}}`` of one ``status_events`` row; the same on every attempt."""
    data = {"event_id": event.event_id, "tracking_id": event.message_id, "reference": event.reference,
            "status": event.status, "recipient": event.recipient, "smtp2go_message_id": event.smtp2go_message_id,
            "occurred_at": event.occurred_at.isoformat(), "sequence": event.seq, **(event.data or {})}
    return {"type": event.type, "timestamp": event.created_at.isoformat(), "data": data}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


# ------------------------------------------------------------------------------------------ dispatch


def fan_out(limit: int = 500) -> int:
    """Make the deliveries of events not dispatched yet; returns how many events were dispatched."""
    now = utcnow()
    hook = hook_spec() is not None
    with get_engine().begin() as conn:
        events = conn.execute(select(SE.c.id, SE.c.type).where(SE.c.dispatched_at.is_(None))
                              .order_by(SE.c.id).limit(limit)).all()
        if not events:
            return 0
        targets = [e for e in conn.execute(select(CE)).all() if e.enabled]
        existing = {(d.event_pk, d.kind, d.endpoint_id) for d in conn.execute(  # made by a replay meanwhile
            select(CD.c.event_pk, CD.c.kind, CD.c.endpoint_id).where(CD.c.event_pk.in_([e.id for e in events])))}
        rows = []
        for ev in events:
            rows += [{"event_pk": ev.id, "kind": HTTP, "endpoint_id": t.id} for t in targets
                     if endpoints.wants(t, ev.type)]
            if hook:
                rows.append({"event_pk": ev.id, "kind": HOOK, "endpoint_id": HOOK_ENDPOINT_ID})
        rows = [r for r in rows if (r["event_pk"], r["kind"], r["endpoint_id"]) not in existing]
        if rows:
            conn.execute(insert(CD), [{**r, "state": PENDING, "attempts": 0, "next_attempt_at": now,
                                       "created_at": now} for r in rows])
        conn.execute(update(SE).where(SE.c.id.in_([e.id for e in events]), SE.c.dispatched_at.is_(None))
                     .values(dispatched_at=now))
    return len(events)


def due_deliveries(limit: int = 500) -> list[tuple[int, str]]:
    """Pending deliveries that are due, locked for :func:`publish_lock_seconds` (so they are published once)."""
    now = utcnow()
    lock = timedelta(seconds=publish_lock_seconds(get_settings()))
    due = and_(CD.c.state == PENDING, CD.c.next_attempt_at <= now,
               or_(CD.c.locked_until.is_(None), CD.c.locked_until < now))
    with get_engine().begin() as conn:
        found = conn.execute(select(CD.c.id, CD.c.kind).where(due).order_by(CD.c.next_attempt_at).limit(limit)).all()
        taken = []
        for row in found:
            if conn.execute(update(CD).where(CD.c.id == row.id, due)
                            .values(locked_until=now + lock)).rowcount == 1:
                taken.append((row.id, row.kind))
    return taken


def _or_next_pass(step: Callable[[], T], nothing: T, what: str) -> T:
    """``step()``, or ``nothing`` when another dispatcher pass running at the same moment got in its way (it
    made the same deliveries first, or locked the same rows: a duplicate key or a deadlock); the next pass goes
    on from where that one left off."""
    try:
        return step()
    except DBAPIError as err:
        if not (isinstance(err, IntegrityError) or is_transient(err)):
            raise
        log.info("%s left to the next pass (another dispatcher ran at the same moment): %s", what, describe(err))
        return nothing


def dispatch(publish: bool = True) -> dict[str, int]:
    """One pass of the dispatcher: fan out new events, then publish (or, ``publish=False``, run) due deliveries."""
    from worker.celery_app import app

    dispatched = _or_next_pass(fan_out, 0, "callback fan-out")
    nothing_due: list[tuple[int, str]] = []
    due = _or_next_pass(due_deliveries, nothing_due, "due callbacks")
    soft, hard = task_time_limits(get_settings())
    for delivery_id, kind in due:
        if publish:
            app.send_task(HOOK_TASK if kind == HOOK else DELIVER_TASK, args=[delivery_id], soft_time_limit=soft,
                          time_limit=hard)
        else:
            attempt_delivery(delivery_id)
    return {"dispatched": dispatched, "due": len(due)}


# ------------------------------------------------------------------------------------------ one attempt


def _load(conn: Connection, delivery_id: int) -> Any:
    return conn.execute(select(CD, SE.c.event_id, SE.c.message_id, SE.c.seq, SE.c.type, SE.c.recipient,
                               SE.c.status, SE.c.reference, SE.c.smtp2go_message_id, SE.c.occurred_at,
                               SE.c.created_at, SE.c.data)
                        .join(SE, SE.c.id == CD.c.event_pk).where(CD.c.id == delivery_id)).one_or_none()


def _take(delivery_id: int, lease: float) -> datetime | None:
    """Take a due pending delivery for one attempt: its ``next_attempt_at`` and ``locked_until`` move to the end
    of the lease, so it is no longer due and no other copy of the task can take it until the lease runs out
    (the attempt ends long before: its in-code bound). Returns the lease's end (the attempt's token), or None
    when it is not due (in flight elsewhere, waiting for its retry, delivered, dead or gone)."""
    now = utcnow()
    until = now + timedelta(seconds=lease)
    with get_engine().begin() as conn:
        taken = conn.execute(update(CD).where(CD.c.id == delivery_id, CD.c.state == PENDING,
                                              CD.c.next_attempt_at <= now)
                             .values(next_attempt_at=until, locked_until=until)).rowcount
    return until if taken == 1 else None


def attempt_delivery(delivery_id: int) -> str:
    """One attempt of one delivery; returns its state afterwards (``pending`` when a retry is scheduled, or when
    another copy of the task has it in flight)."""
    settings = get_settings()
    token = _take(delivery_id, lease_seconds(settings))
    with get_engine().connect() as conn:
        row = _load(conn, delivery_id)
        endpoint = (conn.execute(select(CE).where(CE.c.id == row.endpoint_id)).one_or_none()
                    if row is not None and row.kind == HTTP else None)
        conn.rollback()
    if row is None:
        return "unknown"
    if token is None:
        log.debug("callback delivery=%s not taken: not due (in flight elsewhere, or %s)", delivery_id, row.state)
        return str(row.state)
    body = body_of(row)
    started = time.monotonic()
    code: int | None = None
    error: str | None = None
    retryable = True
    disable = False
    if row.kind == HOOK:
        error = call_hook(body, settings.callback_hook_timeout)
    elif endpoint is None:
        error, retryable = "the endpoint was removed", False
    elif not endpoint.enabled:
        error, retryable = f"the endpoint is disabled ({endpoint.disabled_reason or 'by the operator'})", False
    else:
        code, error, retryable, disable = _post(endpoint, row.event_id, body, settings)
    duration_ms = int((time.monotonic() - started) * 1000)
    return _record(delivery_id, token, row.attempts + 1, code, error, retryable, disable, duration_ms,
                   endpoint.id if endpoint is not None else None)


def _post(endpoint: Any, msg_id: str, body: dict[str, Any],
          settings: Settings) -> tuple[int | None, str | None, bool, bool]:
    """POST the signed body: (status code, error, retryable, disable the endpoint)."""
    payload = encode(body)
    headers = signing.headers(endpoints.signing_secrets(endpoint), msg_id, int(time.time()), payload)
    headers["user-agent"] = "mailworker-callbacks"
    try:
        answer = http.post(endpoint.url, payload, headers, seconds=settings.callback_timeout,
                           allowed=settings.callback_allowed_networks)
    except http.Failure as failure:
        return None, failure.message, failure.retryable, False
    code = answer.status
    said = f": {answer.excerpt}" if answer.excerpt else ""
    if 200 <= code < 300:
        return code, None, False, False
    if code == 410:
        return code, f"410 Gone: the endpoint is disabled{said}", False, True
    if code == 429 or code >= 500:
        return code, f"HTTP {code}{said}", True, False
    return code, f"HTTP {code}: refused (not retried){said}", False, False


def _record(delivery_id: int, token: datetime, attempt: int, code: int | None, error: str | None, retryable: bool,
            disable: bool, duration_ms: int, endpoint_id: int | None) -> str:
    """Store the attempt, and the delivery's new state while the attempt still holds it (``locked_until`` is
    still its ``token``: a replay that restarted the delivery meanwhile decides its state instead)."""
    now = utcnow()
    schedule = retry_schedule()
    next_at: datetime | None = None
    if error is None:
        state = DELIVERED
    elif retryable and attempt <= len(schedule):
        state = PENDING
        next_at = now + timedelta(seconds=schedule[attempt - 1] * random.uniform(0.8, 1.2))
    else:
        state = DEAD
    with get_engine().begin() as conn:
        conn.execute(insert(CA).values(delivery_id=delivery_id, attempted_at=now, status_code=code,
                                       duration_ms=duration_ms, error=error, next_attempt_at=next_at))
        held = conn.execute(update(CD).where(CD.c.id == delivery_id, CD.c.locked_until == token).values(
            state=state, attempts=attempt, next_attempt_at=next_at, locked_until=None, last_status_code=code,
            last_error=error, delivered_at=now if state == DELIVERED else None)).rowcount
        if disable and endpoint_id is not None:
            conn.execute(update(CE).where(CE.c.id == endpoint_id).values(
                enabled=False, disabled_reason=f"answered 410 Gone at {now.isoformat()}"))
    if held != 1:
        log.info("callback delivery=%s attempt=%d: restarted while in flight (a replay); this attempt is stored, "
                 "the delivery's state is the new run's", delivery_id, attempt)
    level = logging.INFO if state != DEAD else logging.WARNING
    log.log(level, "callback delivery=%s attempt=%d state=%s status=%s error=%s", delivery_id, attempt, state,
            code, error)
    return state


# ------------------------------------------------------------------------------------------ replay


def replay(*, event_ids: list[str] | None = None, endpoint_id: int | None = None,
           since: datetime | None = None, until: datetime | None = None) -> int:
    """Deliver events again (same ``webhook-id``): by event id, to one endpoint, or in a time range of the
    events' creation. Each selected event goes to the given endpoint, else to every enabled endpoint that wants
    it; delivered and dead deliveries start over, new ones are made. Returns how many deliveries are due now."""
    if not (event_ids or endpoint_id is not None or since or until):
        raise ValueError("give event ids, an endpoint or a time range")
    where: list[Any] = []
    if event_ids:
        where.append(SE.c.event_id.in_(event_ids))
    if since:
        where.append(SE.c.created_at >= since)
    if until:
        where.append(SE.c.created_at < until)
    now = utcnow()
    count = 0
    with get_engine().begin() as conn:
        targets = conn.execute(select(CE)).all()
        if endpoint_id is not None:
            targets = [t for t in targets if t.id == endpoint_id]
            if not targets:
                raise LookupError(f"no callback endpoint {endpoint_id}")
            if not targets[0].enabled:  # the operator asks for it by name: it is back
                conn.execute(update(CE).where(CE.c.id == endpoint_id).values(enabled=True, disabled_reason=None))
        events = conn.execute(select(SE.c.id, SE.c.type).where(*where).order_by(SE.c.id)).all()
        for ev in events:
            for target in targets:
                if target.events and ev.type not in target.events:
                    continue
                if endpoint_id is None and not target.enabled:
                    continue
                restarted = conn.execute(update(CD).where(
                    CD.c.event_pk == ev.id, CD.c.kind == HTTP, CD.c.endpoint_id == target.id).values(
                    state=PENDING, attempts=0, next_attempt_at=now, locked_until=None, delivered_at=None))
                if restarted.rowcount == 0:
                    conn.execute(insert(CD).values(event_pk=ev.id, kind=HTTP, endpoint_id=target.id, state=PENDING,
                                                   attempts=0, next_attempt_at=now, created_at=now))
                count += 1
    return count


def dead_letters(limit: int = 100) -> list[dict[str, Any]]:
    with get_engine().connect() as conn:
        rows = conn.execute(select(CD.c.id, CD.c.kind, CD.c.endpoint_id, CD.c.attempts, CD.c.last_status_code,
                                   CD.c.last_error, SE.c.event_id, SE.c.type, SE.c.message_id)
                            .join(SE, SE.c.id == CD.c.event_pk).where(CD.c.state == DEAD)
                            .order_by(CD.c.id.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]
