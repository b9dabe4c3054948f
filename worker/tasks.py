"""Celery tasks: thin wrappers that take an id (or an event dict), call a service, classify the outcome.

Task names are part of the contract: ``mailworker.send_email(tracking_id)``, ``mailworker.process_event(event)``,
``mailworker.sweep()``. Arguments are plain JSON values; bodies and secrets never travel through the broker.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from worker.celery_app import app, task_event_dispatcher
from worker.infrastructure.config import get_settings
from worker.infrastructure.dberrors import UPGRADE_HINT, describe, is_schema_error, is_transient

log = logging.getLogger(__name__)
_HOST = socket.gethostname()

#: Errors from the database layer; :func:`_retry_later` decides which of them are an outage to wait out.
_DB_ERRORS = (SQLAlchemyError,)
#: Retries of a send through a database outage: 1, 2, 4 ... 32 s then every 60 s: about 5 minutes in all.
#: Then the task fails; the row is still there and the sweeper republishes it once the database is back.
SEND_DB_RETRIES = 10
#: An event has no row until it is processed, so nothing would republish it: wait out about an hour.
EVENT_DB_RETRIES = 60


def _retry_later(task: Task, err: Exception, what: str, limit: int) -> Exception:
    """Retry the task through a real database outage (bounded by ``limit``); re-raise anything else at once.

    A missing column or table, a syntax error or a constraint violation will fail the same way every time:
    retrying it would only hide a deploy that skipped ``mailworker db upgrade`` behind an "unavailable"
    warning. ``limit`` counts every retry of this task (``send_email`` also retries for provider back-off), so
    a long-retried send gives up sooner; for a send that only means the sweeper picks it up later.
    """
    if not is_transient(err):
        if is_schema_error(err):
            log.error("%s %s: %s", UPGRADE_HINT, what, describe(err))
        else:
            log.error("database error, not retried %s: %s", what, describe(err))
        return err
    retries = task.request.retries
    if retries >= limit:
        log.error("database still unavailable after %d retries %s, giving up: %s", retries, what, describe(err))
        return err
    delay = min(60, 2 ** min(retries, 6))
    log.warning("database unavailable %s retry %d/%d in %ss: %s", what, retries + 1, limit, delay, describe(err))
    # exc=None: Celery would log the exception's str(), which carries the SQL statement and its parameters.
    return task.retry(countdown=delay, exc=None)


def _flower_progress(task: Task) -> Any:
    """Report each step as a ``task-progress`` event for Flower, plus the result backend's state when one is
    configured. Only the step name and counters -- never addresses, bodies or keys. Returns None (no hook, no
    cost) while task events are off, i.e. while no Flower is watching this worker."""
    dispatcher = task_event_dispatcher()
    backend = bool(app.conf.result_backend) and not task.request.called_directly
    if dispatcher is None and not backend:
        return None

    def report(step: str, info: dict[str, object]) -> None:
        state = step.upper()
        try:
            if dispatcher is not None:
                dispatcher.send("task-progress", uuid=task.request.id, state=state, **info)
            if backend:
                task.update_state(state=state, meta=info)
        except Exception as err:  # noqa: BLE001 - monitoring must never break a send
            log.debug("progress event not sent: %s", type(err).__name__)

    return report


@app.task(name="mailworker.send_email", bind=True, acks_late=True, max_retries=None)
def send_email(self: Task, tracking_id: str) -> dict[str, Any]:
    """Deliver one stored message; retries are scheduled from the row's ``next_attempt_at``."""
    from worker.sending.delivery import OutcomeKind, deliver, progress_hook

    owner = f"{_HOST}:{self.request.hostname or '-'}:{self.request.id}"
    token = progress_hook.set(_flower_progress(self))
    try:
        outcome = deliver(str(tracking_id), owner=owner)
    except _DB_ERRORS as err:
        failure = _retry_later(self, err, f"tracking_id={tracking_id}", SEND_DB_RETRIES)
        if failure is err:
            raise
        raise failure from None
    finally:
        progress_hook.reset(token)
    if outcome.kind in (OutcomeKind.RETRY, OutcomeKind.HELD) and outcome.delay is not None:
        visibility = int(app.conf.broker_transport_options.get("visibility_timeout", 3600))
        if outcome.delay < visibility / 2:
            # Same task id; a duplicate delivery is harmless because deliver() claims atomically.
            raise self.retry(countdown=outcome.delay, exc=None)
        # Longer waits are left to the sweeper, never to a broker countdown.
    return {"tracking_id": tracking_id, "outcome": outcome.kind, "provider": outcome.provider}


@app.task(name="mailworker.send_batch", bind=True, acks_late=True, max_retries=None)
def send_batch(self: Task, tracking_ids: list[str]) -> dict[str, Any]:
    """Send stored messages of the bulk lane together (``worker.sending.batch``): one claim, one in-flight mark,
    one provider request, each email recorded with its own outcome. Parked emails are settled by
    ``mailworker.settle_batch``; emails paused (429) or held are retried together, the others are done."""
    from worker.sending.batch import SETTLE_FIRST
    from worker.sending.batch import send_batch as run_batch

    ids = [str(t) for t in tracking_ids]
    owner = f"{_HOST}:{self.request.hostname or '-'}:{self.request.id}"
    hook = _flower_progress(self)
    if hook is not None:
        hook("batch", {"size": len(ids)})
    try:
        report = run_batch(ids, owner=owner)
    except _DB_ERRORS as err:
        failure = _retry_later(self, err, f"batch of {len(ids)}", SEND_DB_RETRIES)
        if failure is err:
            raise
        raise failure from None
    if report.parked:
        from worker.operations.reconcile import mark_settling

        mark_settling(report.parked)  # the periodic reconciler leaves them to settle_batch
        app.send_task("mailworker.settle_batch", args=[report.parked], countdown=SETTLE_FIRST)
    if report.later and report.retry_delay is not None:
        visibility = int(app.conf.broker_transport_options.get("visibility_timeout", 3600))
        if report.retry_delay < visibility / 2:
            raise self.retry(args=[report.later], countdown=report.retry_delay, exc=None)
    return {"size": len(ids), **report.as_dict()}


@app.task(name="mailworker.settle_batch", bind=True, acks_late=True, max_retries=None, ignore_result=True)
def settle_batch(self: Task, tracking_ids: list[str]) -> dict[str, Any]:
    """Settle the parked emails of one batch with one activity search over its window; released emails are
    sent again as a batch, undecided ones are looked at again later."""
    from worker.operations.reconcile import clear_settling, mark_settling
    from worker.sending.batch import SETTLE_AGAIN, settle_parked

    ids = [str(t) for t in tracking_ids]
    report = settle_parked(ids)
    if report.released:
        app.send_task("mailworker.send_batch", args=[report.released])
    if report.waiting:
        mark_settling(ids)  # still on it: the periodic reconciler keeps leaving them alone
        raise self.retry(countdown=SETTLE_AGAIN, exc=None)
    clear_settling(ids)
    return report.as_dict()


@app.task(name="mailworker.process_event", bind=True, acks_late=True, max_retries=None)
def process_event(self: Task, event: dict[str, Any], provider: str = "smtp2go") -> dict[str, Any]:
    """Apply one provider webhook event (idempotent: duplicates change nothing)."""
    from worker.tracking.events import process_event as apply_event

    try:
        result = apply_event(event, provider)
    except _DB_ERRORS as err:
        event_id = event.get("id") if isinstance(event, dict) else None
        failure = _retry_later(self, err, f"event={event_id or '-'}", EVENT_DB_RETRIES)
        if failure is err:
            raise
        raise failure from None
    return result


@app.task(name="mailworker.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    """Periodic repair (Celery beat): lost publishes, due ``send_at`` mail, expired leases, orphan events."""
    from worker.operations.sweeper import sweep as run_sweep
    from worker.tracking.events import link_orphan_events

    report = run_sweep(get_settings()).as_dict()
    report["orphans_linked"] = link_orphan_events()
    return report


@app.task(name="mailworker.reconcile", acks_late=True, ignore_result=True)
def reconcile() -> dict[str, int]:
    """Periodic: settle ambiguous sends and fill in delivery news whose webhooks never came (SMTP2Go activity)."""
    from worker.operations.reconcile import reconcile as run_reconcile

    return run_reconcile(get_settings()).as_dict()


@app.task(name="mailworker.purge", acks_late=True, ignore_result=True)
def purge() -> dict[str, object]:
    """Daily retention: bodies and attachments of finished mail after RETENTION_BODY_DAYS, the rest after
    RETENTION_DAYS."""
    from datetime import timedelta

    from worker.infrastructure import settings_spec
    from worker.operations.maintenance import purge as run_purge

    return run_purge(timedelta(days=get_settings().retention_days),
                     body_older_than=timedelta(days=int(settings_spec.read("RETENTION_BODY_DAYS")))).as_dict()


# ------------------------------------------------------------------------------------------ status callbacks


@app.task(name="mailworker.dispatch_callbacks", acks_late=True, ignore_result=True)
def dispatch_callbacks() -> dict[str, int]:
    """Periodic: make the deliveries of new status events and publish the due ones (callbacks queue)."""
    from worker.callbacks.dispatcher import dispatch

    return dispatch()


#: Celery time limits of a delivery task sent without its own (the dispatcher sends each with limits computed
#: from CALLBACK_TIMEOUT and CALLBACK_HOOK_TIMEOUT: dispatcher.task_time_limits). They back the in-code bound of
#: an attempt under the prefork pool; the threads pool (the Procfile's) ignores time limits, and there the
#: attempt's own deadline and the hook's time limit are the real bound.
CALLBACK_SOFT_TIME_LIMIT, CALLBACK_TIME_LIMIT = 120, 150


@app.task(name="mailworker.deliver_callback", acks_late=True, ignore_result=True,
          soft_time_limit=CALLBACK_SOFT_TIME_LIMIT, time_limit=CALLBACK_TIME_LIMIT)
def deliver_callback(delivery_id: int) -> str:
    """One signed POST of one status event to one endpoint; the retry is scheduled in the delivery's row."""
    from worker.callbacks.dispatcher import attempt_delivery

    return attempt_delivery(int(delivery_id))


@app.task(name="mailworker.status_hook", acks_late=True, ignore_result=True,
          soft_time_limit=CALLBACK_SOFT_TIME_LIMIT, time_limit=CALLBACK_TIME_LIMIT)
def status_hook(delivery_id: int) -> str:
    """One call of ``MAILWORKER_STATUS_HOOK`` with one status event; a failure is retried with backoff."""
    from worker.callbacks.dispatcher import attempt_delivery

    return attempt_delivery(int(delivery_id))


# ---------------------------------------------------------------------------------------------- compliance


@app.task(name="mailworker.unsubscribe", bind=True, acks_late=True, max_retries=None)
def unsubscribe(self: Task, token: str) -> str:
    """A one-click unsubscribe taken by the receiver: suppress the token's address for the token's list."""
    from worker.compliance.unsubscribe import apply_unsubscribe

    try:
        return apply_unsubscribe(token)
    except _DB_ERRORS as err:
        failure = _retry_later(self, err, "unsubscribe", EVENT_DB_RETRIES)
        if failure is err:
            raise
        raise failure from None


@app.task(name="mailworker.sync_suppressions", acks_late=True, ignore_result=True)
def sync_suppressions() -> dict[str, object]:
    """Periodic: pull the provider's suppression list into ours and push our global entries there."""
    from worker.compliance.sync import sync

    return sync().as_dict()
