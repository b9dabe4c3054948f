"""The sweeper: the periodic repair that makes the database, not the broker, the source of truth.

It publishes ``queued`` rows whose publish was lost (broker down at enqueue, Redis flushed), re-publishes
``retrying`` rows whose retry message vanished, hands ``send_at`` mail to the broker shortly before it is due
(so no broker message carries a long countdown), and re-publishes messages whose lease expired (a worker
died). Publishing twice is harmless: :func:`worker.sending.delivery.claim` lets only one attempt through, but it is not
free, so a row whose publish is on record is left to its broker message:

- ``published_at`` is NULL (the publish failed, or the row was made due by a write that left the publish to
  the sweeper), or older than the row's last write (``updated_at``: an attempt since then consumed that broker
  message): republished once it has been due for ``grace`` (a few sweep intervals).
- ``published_at`` is on record and no later write superseded it (``enqueue_email``, ``requeue``, this
  sweeper): its broker message is presumably still waiting in a backlog, so it is republished only when it
  has been due for ``SWEEP_REPUBLISH_AFTER`` seconds, i.e. the publish was really lost.

A broker that lost its data (Redis flushed, restarted without persistence, failed over to a replica that missed
writes) is noticed at the next sweep instead of ``SWEEP_REPUBLISH_AFTER`` later. On a Redis broker the sweeper
keeps a marker next to the send queue (``<send queue>:broker-epoch``, see :class:`BrokerEpoch`) holding the
Redis server's ``run_id``: a missing marker (the keys are gone) or another ``run_id`` (another server process)
means every broker message may be lost. That sweep then forgets every pending row's publish and publishes the
due ones at once (the rest are published when due, as unpublished rows); the marker is rewritten only after
that, so a sweep that dies half-way leaves the loss to be noticed again. Publishing a row that still had its
message is harmless (the claim is atomic); the very first sweep against a Redis (a new deployment, or the first
after an upgrade) cannot tell "new" from "flushed", so it republishes the backlog once. Other brokers keep the
ordinary path only.

Rows of the bulk lane (``lane == bulk``) are republished as ``mailworker.send_batch`` tasks on the bulk queue, in
chunks of ``BULK_BATCH_SIZE`` (due ones together; ones due later with the latest due time of their chunk, so none
is claimed early), never as one ``send_email`` each: the bulk lane's claim, in-flight mark and request stay one
per batch after a repair too, and transactional mail never queues behind bulk mail. Transactional rows are
published one ``send_email`` each, as before. The same holds after a broker loss.

A sweep also watches the spam complaint rate of the last 7 days (:mod:`worker.tracking.complaints`): computed at
most every 10 minutes per process, one WARNING a day across processes while it is at or above
``COMPLAINT_RATE_THRESHOLD`` (marker ``<send queue>:complaint-warning``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, not_, or_, select, update

from worker.celery_app import app
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Lane, Message, MessageStatus, utcnow
from worker.sending.publish import _send, publish_send
from worker.tracking.complaints import ComplaintWatch

log = logging.getLogger(__name__)

BATCH_TASK = "mailworker.send_batch"

_PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD)


@dataclass
class SweepReport:
    scheduled: int = 0
    republished: int = 0
    expired_leases: int = 0
    broker_lost: bool = False

    def as_dict(self) -> dict[str, int]:
        return {"scheduled": self.scheduled, "republished": self.republished,
                "expired_leases": self.expired_leases, "broker_lost": int(self.broker_lost)}


@dataclass
class BrokerEpoch:
    """The marker that tells one Redis dataset from the next: key ``<send queue>:broker-epoch`` in the Redis
    that holds the send queue, valued with that server's ``run_id`` (``INFO server``; ``-`` where INFO is not
    allowed, which leaves a flush detectable but not a restart with persistence)."""

    client: Any
    key: str
    run_id: str

    @classmethod
    def of_broker(cls) -> BrokerEpoch | None:
        """The send queue's Redis and its current ``run_id``; None for brokers that are not a plain Redis
        URL and when Redis cannot be asked now (the ordinary path then runs alone)."""
        from worker.sending.publish import broker_redis, send_queue

        try:
            client = broker_redis()
            if client is None:
                return None
            try:
                info: Any = client.info("server")
                run_id = str(info.get("run_id") or "-")
            except Exception:  # noqa: BLE001 - INFO renamed or forbidden (managed Redis): flushes still show
                run_id = "-"
            return cls(client, f"{send_queue()}:broker-epoch", run_id)
        except Exception as err:  # noqa: BLE001 - a broker outage: publishes fail too; the next sweep decides
            log.info("sweep: cannot check the broker for lost messages: %s", type(err).__name__)
            return None

    def lost(self) -> bool:
        """Whether the broker may have lost its messages since the marker was written."""
        seen = self.client.get(self.key)
        return seen is None or seen.decode() != self.run_id

    def remember(self) -> None:
        self.client.set(self.key, self.run_id)


def sweep(settings: Settings | None = None, *, grace: float | None = None, republish_after: float | None = None,
          batch: int = 1000) -> SweepReport:
    """One sweep pass; returns what it published. ``grace`` (default 4 sweep intervals) and ``republish_after``
    (default ``SWEEP_REPUBLISH_AFTER``) override the settings, for tests and the fault harness."""
    settings = settings or get_settings()
    grace_td = timedelta(seconds=settings.sweep_interval * 4 if grace is None else grace)
    republish_td = timedelta(seconds=settings.sweep_republish_after if republish_after is None
                             else republish_after)
    now = utcnow()
    soon = now + timedelta(seconds=settings.sweep_interval * 1.5)
    stale = now - grace_td
    due = func.coalesce(Message.next_attempt_at, Message.queued_at)
    on_record = and_(Message.published_at.is_not(None), Message.published_at >= Message.updated_at)
    report = SweepReport()
    pending = list(_PENDING)
    epoch = BrokerEpoch.of_broker()
    if epoch is not None and _lost(epoch):
        report.broker_lost = True
        _forget_publishes(now)
    # After a loss every unpublished row due soon goes now (no grace: nothing is left to wait for), with its ETA.
    unpublished_due = soon if report.broker_lost else stale
    with session_scope() as session:
        scheduled = session.execute(
            select(Message.id, Message.next_attempt_at, Message.lane)
            .where(Message.status == MessageStatus.QUEUED, Message.published_at.is_(None),
                   Message.send_at.is_not(None), Message.next_attempt_at <= soon,
                   Message.next_attempt_at > stale)
            .limit(batch)
        ).all()
        lost = session.execute(
            select(Message.id, due, Message.lane)
            .where(
                Message.status.in_(pending),
                Message.ambiguous_since.is_(None),
                or_(and_(not_(on_record), due <= unpublished_due),
                    # a publish on record is repeated once it is SWEEP_REPUBLISH_AFTER old, not on every sweep
                    and_(on_record, due <= now - republish_td, Message.published_at <= now - republish_td)),
            )
            .limit(batch)
        ).all()
        expired = session.execute(
            select(Message.id, Message.lane)
            .where(Message.status == MessageStatus.SENDING, Message.lease_expires_at < now,
                   or_(Message.published_at.is_(None), Message.published_at <= stale))
            .limit(batch)
        ).all()
    published: list[str] = []
    failed = 0
    bulk: list[tuple[str, datetime | None, str]] = []  # (tracking id, due time if later, report field)
    for tracking_id, eta, lane in scheduled:
        when = eta if eta and _aware(eta) > now else None
        if _is_bulk(lane):
            bulk.append((tracking_id, when, "scheduled"))
        elif publish_send(tracking_id, eta=when):
            published.append(tracking_id)
            report.scheduled += 1
        else:
            failed += 1
    already = set(published) | {tracking_id for tracking_id, _, _ in bulk}
    for tracking_id, when, lane in lost:
        if tracking_id in already:
            continue
        later = when if _aware(when) > now else None
        if _is_bulk(lane):
            bulk.append((tracking_id, later, "republished"))
        elif publish_send(tracking_id, eta=later):
            published.append(tracking_id)
            report.republished += 1
        else:
            failed += 1
    for tracking_id, lane in expired:
        if _is_bulk(lane):
            bulk.append((tracking_id, None, "expired_leases"))
        elif publish_send(tracking_id):
            published.append(tracking_id)
            report.expired_leases += 1
    sent, not_sent = _publish_bulk(bulk, settings.bulk_batch_size, report)
    published += sent
    failed += not_sent
    if published:
        _record_published(published, now)
        log.info("sweep published %s", report.as_dict())
    if report.broker_lost and epoch is not None and not failed:
        # Only now: a sweep that died or could not publish leaves the loss to be noticed again next time.
        try:
            epoch.remember()
        except Exception as err:  # noqa: BLE001 - noticed again at the next sweep: more duplicates, none lost
            log.info("sweep: cannot write the broker epoch marker: %s", type(err).__name__)
    if epoch is not None:
        _heartbeat(epoch, now, settings.sweep_interval)
    _watch_complaints(epoch)
    return report


#: This process's spam complaint check (computed at most every 10 minutes, one WARNING a day across processes).
_COMPLAINTS = ComplaintWatch()


def _watch_complaints(epoch: BrokerEpoch | None) -> None:
    """Warn (once a day) when the 7-day spam complaint rate reaches ``COMPLAINT_RATE_THRESHOLD``; the marker
    ``<send queue>:complaint-warning`` sits next to the epoch marker."""
    try:
        if epoch is None:
            _COMPLAINTS.check()
        else:
            _COMPLAINTS.check(epoch.client, epoch.key.removesuffix(":broker-epoch"))
    except Exception as err:  # noqa: BLE001 - the sweep's own work is done; the next check is in 10 minutes
        log.info("sweep: cannot check the spam complaint rate: %s", type(err).__name__)


def heartbeat_key(send_queue: str) -> str:
    """``<send queue>:sweep-heartbeat``: the time of the last completed sweep (ISO), read by the console."""
    return f"{send_queue}:sweep-heartbeat"


def _heartbeat(epoch: BrokerEpoch, now: datetime, interval: float) -> None:
    """Record that a sweep completed (beat is alive), next to the epoch marker; it expires on its own."""
    try:
        epoch.client.set(heartbeat_key(epoch.key.removesuffix(":broker-epoch")), now.isoformat(),
                         ex=max(3600, int(interval * 40)))
    except Exception as err:  # noqa: BLE001 - only the console's beat health misses it
        log.info("sweep: cannot write the heartbeat: %s", type(err).__name__)


#: Rows per bookkeeping UPDATE, and tries per chunk when it meets a deadlock with the workers' claims.
_RECORD_CHUNK, _RECORD_TRIES = 100, 3


def _record_published(published: list[str], now: datetime) -> None:
    """Put the publishes on record, in small chunks of their own transactions, in primary-key order (the order
    the workers' claims lock rows in). A chunk that keeps meeting deadlocks (MariaDB, workers claiming the same
    rows) is left off the record: a later sweep publishes those rows again, a second broker message that the
    atomic claim makes harmless, instead of the whole sweep failing."""
    from sqlalchemy.exc import OperationalError

    from worker.infrastructure.dberrors import is_transient

    ids = sorted(published)
    for start in range(0, len(ids), _RECORD_CHUNK):
        chunk = ids[start:start + _RECORD_CHUNK]
        for attempt in range(1, _RECORD_TRIES + 1):
            try:
                with session_scope() as session:
                    session.execute(
                        # updated_at keeps its value (no onupdate bump), so this publish is "on record"
                        # unless a worker wrote the row after ``now``, i.e. already consumed something.
                        update(Message).where(Message.id.in_(chunk))
                        .values(published_at=now, updated_at=Message.updated_at)
                        .execution_options(synchronize_session=False)
                    )
                break
            except OperationalError as err:
                if not is_transient(err):
                    raise
                if attempt == _RECORD_TRIES:
                    log.info("sweep: %d publish(es) left off the record after %d deadlocks (%s); a later sweep "
                             "publishes them again", len(chunk), attempt, type(err).__name__)


def _is_bulk(lane: Any) -> bool:
    return bool(lane == Lane.BULK or lane == Lane.BULK.value)


def _publish_bulk(rows: list[tuple[str, datetime | None, str]], size: int, report: SweepReport
                  ) -> tuple[list[str], int]:
    """Bulk-lane rows as ``send_batch`` tasks on the bulk queue, ``size`` ids each: the due ones together, then the
    later ones in due order, each such chunk published for its latest due time (none of its emails claimed early).
    Returns the ids published and how many could not be (the broker refused: the next sweep tries again)."""
    now_rows = [row for row in rows if row[1] is None]
    later_rows = sorted((row for row in rows if row[1] is not None), key=lambda row: _aware(row[1]))  # type: ignore[arg-type]
    step = max(1, size)
    chunks = [now_rows[i:i + step] for i in range(0, len(now_rows), step)]
    chunks += [later_rows[i:i + step] for i in range(0, len(later_rows), step)]
    published: list[str] = []
    failed = 0
    for chunk in chunks:
        ids = [tracking_id for tracking_id, _, _ in chunk]
        dues = [_aware(when) for _, when, _ in chunk if when is not None]
        try:
            _send(BATCH_TASK, args=[ids], task_id=str(uuid.uuid4()), queue=app.conf.bulk_queue,
                  eta=max(dues) if dues else None)
        except Exception as err:  # noqa: BLE001 - the broker is down: these rows are published by a later sweep
            log.warning("sweep: could not publish a batch of %d bulk email(s): %s", len(ids), type(err).__name__)
            failed += len(ids)
            continue
        published += ids
        for _, _, field in chunk:
            setattr(report, field, getattr(report, field) + 1)
    return published, failed


def _lost(epoch: BrokerEpoch) -> bool:
    try:
        lost = epoch.lost()
    except Exception as err:  # noqa: BLE001 - the broker is unreachable now: nothing can be republished anyway
        log.info("sweep: cannot check the broker for lost messages: %s", type(err).__name__)
        return False
    if lost:
        log.warning("sweep: the broker lost its data (Redis flushed, restarted or failed over: the marker %s is "
                    "missing or names another server); every queued message is published again now", epoch.key)
    return lost


def _forget_publishes(now: datetime) -> None:
    """Every pending row published before ``now`` is unpublished again: its broker message may be gone.

    One statement over the whole backlog, so the database remembers the loss even if this sweep stops here:
    the rows due now are published by this sweep, later ones when due, and any left over by a later sweep.
    ``updated_at`` keeps its value (no onupdate bump). Ambiguous rows are reconciliation's, never republished.
    """
    with session_scope() as session:
        result: Any = session.execute(
            update(Message)
            .where(Message.status.in_(_PENDING), Message.ambiguous_since.is_(None),
                   Message.published_at.is_not(None), Message.published_at <= now)
            .values(published_at=None, updated_at=Message.updated_at)
            .execution_options(synchronize_session=False)
        )
    log.info("sweep: %d queued message(s) to publish again after the broker loss", result.rowcount)


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive UTC datetimes from ``coalesce`` (the column type is lost); compare as UTC."""
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)
