"""A message's life, in one place: its states and the named transitions between them.

Every write to a message's status goes through a function of this module. The send path, the sweeper,
reconciliation and the operator's ``requeue`` call these transitions; none of them writes a status itself.

::

    queued ─claim─▶ sending ─record_accepted──▶ sent ─(webhook events)─▶ delivered / bounced / complained / rejected
      ▲  ▲            │ ├─retry_later─────────▶ retrying ─claim─▶ sending
      │  │            │ ├─park_unknown────────▶ parked ─settle_accepted─▶ sent
      │  │            │ │                                └release_parked──▶ retrying (due now)
      │  │            │ ├─hold────────────────▶ held ─claim (problem fixed)─▶ sending
      │  │            │ ├─fail────────────────▶ failed
      │  │            │ └─suppress────────────▶ suppressed
      │  └─requeue (operator: failed, stuck, held)
      └─ enqueue_email

**The lease is the fence.** :func:`claim` takes an expiring lease (one atomic ``UPDATE ... WHERE``; two workers
racing the same id cannot both win). Every later write of that attempt is conditioned on
``lease_owner = <this attempt>`` and checks its row count: an attempt that outlived its lease (the sweeper
re-published the message, another worker took it over) raises :class:`LeaseLost` instead of overwriting the
take-over's state. ``SEND_LEASE_SECONDS`` is validated at start-up to outlive the worst-case attempt, and
:func:`mark_in_flight` renews it before each transport call.

**Parked** (``parked``, since ``ambiguous_since``): a provider may have accepted the last attempt (a read
timeout after the request left, a relay that took the DATA but never answered, a worker that died while the
in-flight mark was set). Only reconciliation or an explicit operator decision moves it on: :func:`settle_accepted`
when the provider shows it accepted, :func:`release_parked` when it provably did not (or, for SMTP, once
``SMTP_UNKNOWN_RESEND_AFTER`` passed: at least once, documented).

**Held** (``held``, since ``held_since``): an operator problem (revoked API key, missing encryption key, no
usable provider) stops the attempt. The message is never failed for it; it is tried again after a cool-down and
sent once the problem is fixed, or at once by ``mailworker requeue --held``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Connection,
    String,
    Table,
    Update,
    and_,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, selectinload

from worker.callbacks import outbox
from worker.infrastructure.models import (
    ACCEPTED_STATUSES,
    Attempt,
    AttemptOutcome,
    Message,
    MessageStatus,
    Recipient,
    RecipientStatus,
    TrackingEvent,
    UTCDateTime,
    utcnow,
)
from worker.sending.jobs import pending_event_ids, pending_event_owners
from worker.tracking import apply as event_effects

log = logging.getLogger(__name__)

messages = cast(Table, Message.__table__)
recipients = cast(Table, Recipient.__table__)
events = cast(Table, TrackingEvent.__table__)
attempts = cast(Table, Attempt.__table__)

#: Columns that describe a running attempt; cleared whenever an attempt ends.
_END_ATTEMPT: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "inflight_since": None}


def _update(tracking_id: str) -> Update:
    """``UPDATE messages ... WHERE id = :tracking_id``, through the primary key on MariaDB.

    Left to itself, MariaDB's optimizer may run such an UPDATE as a range over ``ix_messages_status`` (the
    secondary index entries carry the id), locking that index's entry before the row. Two writers of one message
    then lock in opposite orders, one by the row, one by the index, and deadlock (seen with duplicate publishes:
    a take-over attempt against the owner's ``record_accepted``). Every writer here goes row first.
    """
    return update(messages).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql").where(messages.c.id == tracking_id)


#: Never handed to a transport: not in flight, not parked, no recipient accepted yet. ``cancel`` and ``expire``
#: apply only to such messages (a queued, scheduled, retrying or held one; a ``sending`` one only when its
#: worker died before the in-flight mark, for ``expire``).
_UNSENT = (messages.c.ambiguous_since.is_(None), messages.c.inflight_since.is_(None), messages.c.sent_at.is_(None))
_WAITING = messages.c.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD])
_PARKED = (messages.c.status == MessageStatus.PARKED,)


def _not_expired(now: datetime) -> Any:
    return or_(messages.c.expires_at.is_(None), messages.c.expires_at > now, messages.c.sent_at.is_not(None))


def _end_recipients(conn: Connection, tracking_id: str, status: RecipientStatus) -> None:
    conn.execute(update(recipients).where(recipients.c.message_id == tracking_id,
                                          recipients.c.status == RecipientStatus.QUEUED).values(status=status))


def _provider_ids(provider: str, provider_id: str) -> dict[str, str]:
    """Where an accepting provider's id is stored: the relay's is the Message-ID header; any other provider's is
    the id its events carry."""
    if provider.partition(":")[0] == "smtp":
        return {"message_id_header": provider_id} if provider_id else {}
    return {"smtp2go_message_id": provider_id}


def _email_id(provider: str, provider_id: str) -> str | None:
    """The id the provider's events carry (early events are looked up by it); None for the relay."""
    return None if provider.partition(":")[0] == "smtp" else provider_id


class LeaseLost(RuntimeError):
    """This attempt no longer owns the message (its lease expired and someone else took it over)."""


class ClaimKind(enum.StrEnum):
    FRESH = "fresh"  # queued or retrying and due
    TAKEOVER = "takeover"  # its last worker's lease expired while it was sending


@dataclass(frozen=True)
class Lease:
    """The fence of one attempt: writes apply only while ``owner`` still holds the message."""

    tracking_id: str
    owner: str
    kind: ClaimKind


def claim(conn: Connection, tracking_id: str, *, owner: str, lease_seconds: float) -> Lease | None:
    """Take the lease on a due message, or take over one whose worker died; None when it is not ours to send.

    A message past its ``expires_at`` that no transport was handed is moved to ``expired`` here instead (and
    None returned): nothing is sent after the time its sender gave.

    Not committed: the caller commits with the in-flight mark (:func:`mark_in_flight`) or with the attempt's
    end, so a database outage in between leaves the message simply due.
    """
    now = utcnow()
    take: dict[str, Any] = {"status": MessageStatus.SENDING, "lease_owner": owner, "updated_at": now,
                            "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    fresh = _update(tracking_id).where(
        _WAITING, messages.c.ambiguous_since.is_(None), _not_expired(now),
        or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now))
    if conn.execute(fresh.values(take)).rowcount == 1:
        return Lease(tracking_id, owner, ClaimKind.FRESH)
    # its last worker's lease expired while it was sending (and it is not past its expiry unsent)
    takeover = _update(tracking_id).where(
        messages.c.status == MessageStatus.SENDING, messages.c.lease_expires_at < now,
        or_(_not_expired(now), messages.c.inflight_since.is_not(None)))
    if conn.execute(takeover.values({**take, "crashes": messages.c.crashes + 1})).rowcount == 1:
        return Lease(tracking_id, owner, ClaimKind.TAKEOVER)
    expire = _update(tracking_id).where(
        *_UNSENT, messages.c.expires_at.is_not(None), messages.c.expires_at <= now,
        or_(_WAITING, and_(messages.c.status == MessageStatus.SENDING, messages.c.lease_expires_at < now)))
    if conn.execute(expire.values(
            status=MessageStatus.EXPIRED, lease_owner=None, lease_expires_at=None,
            next_attempt_at=None, held_since=None, updated_at=now,
            last_error="expired: its expires_at passed before it was handed to a transport")).rowcount == 1:
        _end_recipients(conn, tracking_id, RecipientStatus.EXPIRED)
        _emit_message_event(conn, tracking_id, MessageStatus.EXPIRED, now)
        log.info("final state expired tracking_id=%s (never handed to a transport)", tracking_id)
    return None


@dataclass(frozen=True)
class AttemptEnd:
    """What came back for one attempt row: written by the transition that follows, in the same statement."""

    id: int
    outcome: AttemptOutcome
    error: str | None = None
    provider_message_id: str | None = None
    started: datetime | None = None  # when the send began (gives ``latency_ms``)

    def values(self, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {"outcome": self.outcome, "finished_at": now, "error": self.error,
                                  "provider_message_id": self.provider_message_id}
        if self.started is not None:
            values["latency_ms"] = int((now - self.started).total_seconds() * 1000)
        return values


def _write(conn: Connection, lease: Lease, values: dict[str, Any], attempt: AttemptEnd | None = None) -> None:
    """One UPDATE of the leased message, fenced by the lease owner; :class:`LeaseLost` when it is no longer ours.
    ``values`` maps columns to values or SQL expressions (``messages.c.attempts + 1``).

    With ``attempt``, the attempt row gets what came back in the same statement on MariaDB (a multi-table
    UPDATE: the join matches nothing once the lease is lost, so neither row changes), a second UPDATE elsewhere.
    """
    now = utcnow()
    fence = (messages.c.id == lease.tracking_id, messages.c.lease_owner == lease.owner,
             messages.c.status == MessageStatus.SENDING)
    if attempt is not None and conn.dialect.name in ("mysql", "mariadb"):
        # MariaDB appends a table hint to the whole table list, so listing ``messages`` last gives it the primary
        # key (see _update); the attempt row is found through its own primary key either way.
        both = (update(attempts).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql")
                .where(attempts.c.id == attempt.id, attempts.c.message_id == messages.c.id, *fence)
                .values({**{attempts.c[k]: v for k, v in attempt.values(now).items()},
                         **{messages.c[k]: v for k, v in values.items()}, messages.c.updated_at: now}))
        if conn.execute(both).rowcount != 2:  # rows matched (the dialect asks for FOUND_ROWS): both or none
            conn.rollback()
            raise LeaseLost(f"tracking_id={lease.tracking_id}: the lease of {lease.owner} was taken over")
        return
    fenced = update(messages).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql").where(*fence)
    if conn.execute(fenced.values({**values, "updated_at": now})).rowcount != 1:
        conn.rollback()
        raise LeaseLost(f"tracking_id={lease.tracking_id}: the lease of {lease.owner} was taken over")
    if attempt is not None:
        conn.execute(update(attempts).where(attempts.c.id == attempt.id).values(attempt.values(now)))


def _reject_recipients(conn: Connection, lease: Lease, refused: dict[str, str] | None,
                       status: MessageStatus) -> None:
    """Recipients a transport refused for good during the send (address -> reason) are ``rejected``, each
    still queued one with its own ``email.rejected`` callback (as a webhook ``reject`` gives one); runs after the
    transition's UPDATE took the message row's lock, so the events take their sequence numbers in order."""
    now = utcnow()
    for address, why in (refused or {}).items():
        moved = conn.execute(update(recipients)
                             .where(recipients.c.message_id == lease.tracking_id,
                                    recipients.c.status == RecipientStatus.QUEUED,
                                    func.lower(recipients.c.address) == address.lower())
                             .values(status=RecipientStatus.REJECTED, error=why, rejected_at=now)).rowcount
        if moved:
            outbox.emit(conn, lease.tracking_id, "email.rejected", status=status.value, occurred_at=now,
                        recipient=address, data={"recipient_status": RecipientStatus.REJECTED.value,
                                                 "detail": why})


# ------------------------------------------------------------------------------------------ one attempt


def mark_in_flight(conn: Connection, lease: Lease, provider: str, *, lease_seconds: float) -> int:
    """Record (and commit) that a send through ``provider`` is about to leave: a take-over after this point
    parks, never resends. Counts the attempt, opens its row (returns its id) and renews the lease, so a fallback
    within one attempt gets a whole lease again."""
    now = utcnow()
    _write(conn, lease, {"inflight_since": now, "provider": provider, "attempts": messages.c.attempts + 1,
                         "lease_expires_at": now + timedelta(seconds=lease_seconds)})
    inserted = conn.execute(attempts.insert().values(
        message_id=lease.tracking_id, provider=provider, started_at=now, outcome=AttemptOutcome.IN_FLIGHT))
    conn.commit()
    return int(inserted.inserted_primary_key[0])  # type: ignore[index]


def claim_batch(conn: Connection, tracking_ids: list[str], *, owner: str, lease_seconds: float) -> list[Lease]:
    """Take one lease (``owner``) on every message of ``tracking_ids`` that is due now, together; returns the
    leases in the order of ``tracking_ids``. Rows another worker holds, rows not due (``send_at``, a retry
    later), expired or finished rows are left alone: the single-send claim (:func:`claim`) decides about those.

    MariaDB locks the due rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (a batch never waits behind another
    batch's rows); SQLite has one writer at a time, so the conditional UPDATE alone is the claim. Either way the
    UPDATE repeats the due conditions and the leases are read back by owner: a row only one worker can win.
    Not committed (as :func:`claim`).
    """
    if not tracking_ids:
        return []
    now = utcnow()
    due = (messages.c.id.in_(tracking_ids), _WAITING, messages.c.ambiguous_since.is_(None), _not_expired(now),
           or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now))
    candidates = list(tracking_ids)
    if conn.dialect.name != "sqlite":
        # through the primary key (as ``_update``): scanning ``ix_messages_status`` would lock every queued row
        # it examines, other batches' rows included, and they would all skip them
        candidates = list(conn.scalars(select(messages.c.id).with_hint(messages, "FORCE INDEX (PRIMARY)", "mysql")
                                       .where(*due).with_for_update(skip_locked=True)))
    if not candidates:
        return []
    conn.execute(update(messages).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql")
                 .where(*due, messages.c.id.in_(candidates))
                 .values(status=MessageStatus.SENDING, lease_owner=owner, updated_at=now,
                         lease_expires_at=now + timedelta(seconds=lease_seconds)))
    mine = set(conn.scalars(select(messages.c.id).where(messages.c.id.in_(candidates),
                                                        messages.c.lease_owner == owner,
                                                        messages.c.status == MessageStatus.SENDING)))
    return [Lease(t, owner, ClaimKind.FRESH) for t in tracking_ids if t in mine]


def mark_batch_in_flight(conn: Connection, leases: list[Lease], provider: str, *,
                         lease_seconds: float) -> dict[str, int]:
    """:func:`mark_in_flight` for a batch, in ONE commit: every message of ``leases`` (one owner) is counted and
    marked in flight, each gets its own attempt row; returns tracking id -> attempt row id."""
    if not leases:
        return {}
    owner = leases[0].owner
    ids = [lease.tracking_id for lease in leases]
    now = utcnow()
    marked = conn.execute(
        update(messages).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql")
        .where(messages.c.id.in_(ids), messages.c.lease_owner == owner, messages.c.status == MessageStatus.SENDING)
        .values(inflight_since=now, provider=provider, attempts=messages.c.attempts + 1, updated_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds))).rowcount
    if marked != len(ids):
        conn.rollback()
        raise LeaseLost(f"{len(ids) - marked} message(s) of the batch of {owner} were taken over")
    conn.execute(attempts.insert(), [{"message_id": t, "provider": provider, "started_at": now,
                                      "outcome": AttemptOutcome.IN_FLIGHT} for t in ids])
    rows = conn.execute(select(attempts.c.message_id, func.max(attempts.c.id))
                        .where(attempts.c.message_id.in_(ids), attempts.c.outcome == AttemptOutcome.IN_FLIGHT)
                        .group_by(attempts.c.message_id)).all()
    conn.commit()
    return {str(message_id): int(attempt_id) for message_id, attempt_id in rows}


def finish_attempt(conn: Connection, attempt_id: int, outcome: AttemptOutcome, *, error: str | None = None,
                   provider_message_id: str | None = None, started: datetime | None = None) -> None:
    """Write what came back for one attempt (in the transaction of the transition that follows); a transition
    given ``attempt=`` does this itself, in its own UPDATE."""
    end = AttemptEnd(attempt_id, outcome, error, provider_message_id, started)
    conn.execute(update(attempts).where(attempts.c.id == attempt_id).values(end.values(utcnow())))


def next_provider(conn: Connection, lease: Lease, reason: str, *, attempt: AttemptEnd | None = None) -> None:
    """This attempt moves on to the next provider of the chain (the reason is kept as the fallback reason)."""
    _write(conn, lease, {"fallback_reason": reason, "last_error": reason}, attempt)
    log.warning("fallback to the next provider tracking_id=%s reason=%s", lease.tracking_id, reason)


def suppress_recipients(conn: Connection, lease: Lease, recipient_ids: list[int]) -> None:
    """Recipients on the suppression list are dropped from this and every later attempt."""
    if recipient_ids:
        conn.execute(update(recipients)
                     .where(recipients.c.id.in_(recipient_ids), recipients.c.status == RecipientStatus.QUEUED)
                     .values(status=RecipientStatus.SUPPRESSED, error="address is on the suppression list"))


def _recipients_sent(conn: Connection, tracking_id: str, now: datetime) -> None:
    """Every recipient still queued is sent (the common acceptance: no relay deferrals)."""
    conn.execute(update(recipients).where(recipients.c.message_id == tracking_id,
                                          recipients.c.status == RecipientStatus.QUEUED)
                 .values(status=RecipientStatus.SENT, sent_at=now))


def record_accepted(conn: Connection, lease: Lease, provider: str, provider_id: str, *,
                    refused: dict[str, str] | None = None, deferred: dict[str, str] | None = None,
                    retry_at: datetime | None = None, attempt: AttemptEnd | None = None) -> int:
    """The provider accepted the message (``provider_id``: the id its events carry, or the relay's Message-ID).

    ``refused`` recipients (5xx) are ``rejected`` for good. ``deferred`` recipients (a relay's per-recipient
    4xx) stay ``queued`` and the message stays ``retrying`` until ``retry_at``, when only they are sent again;
    the others are ``sent``. Returns how many events that arrived before the id was known were applied.
    """
    now = utcnow()
    ids = {**_provider_ids(provider, provider_id), "transport": provider.partition(":")[0], "provider": provider}
    if deferred:
        assert retry_at is not None
        text = "; ".join(f"{a}: {why}" for a, why in deferred.items())
        _write(conn, lease, {**_END_ATTEMPT, **ids, "status": MessageStatus.RETRYING,
                             "sent_at": func.coalesce(messages.c.sent_at, now), "next_attempt_at": retry_at,
                             "last_error": f"relay deferred {len(deferred)} recipient(s), retrying them: {text}"},
               attempt)
    else:
        _write(conn, lease, {**_END_ATTEMPT, **ids, "status": MessageStatus.SENT, "sent_at": now,
                             "next_attempt_at": None, "held_since": None}, attempt)
    _reject_recipients(conn, lease, refused, MessageStatus.RETRYING if deferred else MessageStatus.SENT)
    if deferred:
        conn.execute(update(recipients)
                     .where(recipients.c.message_id == lease.tracking_id,
                            recipients.c.status == RecipientStatus.QUEUED,
                            func.lower(recipients.c.address).not_in({a.lower() for a in deferred}))
                     .values(status=RecipientStatus.SENT, sent_at=now))
    else:
        _recipients_sent(conn, lease.tracking_id, now)
    if not deferred:  # a message with deferred recipients is sent (the event) once the last of them is
        _emit_message_event(conn, lease.tracking_id, MessageStatus.SENT, now, transport=ids["transport"],
                            rejected=sorted(refused) if refused else None)
    log.info("accepted tracking_id=%s provider=%s provider_id=%s refused=%d deferred=%d", lease.tracking_id,
             provider, provider_id, len(refused or {}), len(deferred or {}))
    return _apply_early_events(conn, lease.tracking_id, _email_id(provider, provider_id))


def suppress_batch_recipients(conn: Connection, recipient_ids: list[int]) -> None:
    """:func:`suppress_recipients` for every email of a batch: one UPDATE (none when there are none)."""
    if recipient_ids:
        conn.execute(update(recipients)
                     .where(recipients.c.id.in_(recipient_ids), recipients.c.status == RecipientStatus.QUEUED)
                     .values(status=RecipientStatus.SUPPRESSED, error="address is on the suppression list"))


@dataclass(frozen=True)
class BatchAccepted:
    """One email of a batch the provider accepted whole (no refused or deferred recipient)."""

    lease: Lease
    provider_id: str
    attempt_id: int


def record_batch_accepted(conn: Connection, accepted: list[BatchAccepted], provider: str, *,
                          started: datetime) -> list[BatchAccepted]:
    """:func:`record_accepted` for the emails of one batch (one lease owner, one ``provider``) that were accepted
    whole, with a statement per table for the whole batch: the messages ``sent`` with their own provider ids
    (fenced by the lease owner), their attempt rows finished, their queued recipients ``sent``, one
    ``email.sent`` callback each (one multi-row INSERT), and events that arrived before the ids were known
    looked up once and applied to the emails that have any.

    Must open the caller's transaction (it may roll back): when the fenced UPDATE does not match every
    message, the rows still ours are locked and read, the rest (their lease was lost) are left untouched, and
    those are returned (nothing is written for them: their attempt rows stay in flight, as :func:`_write`
    leaves them). Returns the emails NOT recorded.
    """
    if not accepted:
        return []
    owner = accepted[0].lease.owner
    mine = accepted
    for _ in range(3):
        now = utcnow()
        count = _mark_batch_sent(conn, mine, owner, provider, now)
        if count == len(mine):
            break
        conn.rollback()  # nothing else written in this transaction yet: only this UPDATE is undone
        locked = select(messages.c.id).where(messages.c.id.in_([a.lease.tracking_id for a in mine]),
                                             messages.c.lease_owner == owner,
                                             messages.c.status == MessageStatus.SENDING)
        if conn.dialect.name != "sqlite":
            locked = locked.with_hint(messages, "FORCE INDEX (PRIMARY)", "mysql").with_for_update()
        ours = set(conn.scalars(locked))
        mine = [a for a in mine if a.lease.tracking_id in ours]
        if not mine:
            break
    else:
        conn.rollback()
        mine = []
    kept = {a.lease.tracking_id for a in mine}
    lost = [a for a in accepted if a.lease.tracking_id not in kept]
    for a in lost:
        log.error("lease lost before the batch's outcome was recorded tracking_id=%s owner=%s; left to the new "
                  "owner and reconciliation", a.lease.tracking_id, owner)
    if not mine:
        return lost
    ids = [a.lease.tracking_id for a in mine]
    end = AttemptEnd(0, AttemptOutcome.ACCEPTED, started=started).values(now)
    conn.execute(update(attempts).where(attempts.c.id.in_([a.attempt_id for a in mine]))
                 .values({**end, "provider_message_id": case({a.attempt_id: a.provider_id for a in mine},
                                                              value=attempts.c.id)}))
    conn.execute(update(recipients).where(recipients.c.message_id.in_(ids),
                                          recipients.c.status == RecipientStatus.QUEUED)
                 .values(status=RecipientStatus.SENT, sent_at=now))
    transport = provider.partition(":")[0]
    _emit_sent_events(conn, ids, now, {"transport": transport})
    log.info("accepted %d email(s) of a batch provider=%s", len(mine), provider)
    if log.isEnabledFor(logging.DEBUG):
        for a in mine:
            log.debug("accepted tracking_id=%s provider=%s provider_id=%s", a.lease.tracking_id, provider,
                      a.provider_id)
    waiting = pending_event_owners(conn, {a.lease.tracking_id: _email_id(provider, a.provider_id) for a in mine})
    for a in mine:
        if a.lease.tracking_id in waiting:
            _apply_early_events(conn, a.lease.tracking_id, _email_id(provider, a.provider_id))
    return lost


def _mark_batch_sent(conn: Connection, accepted: list[BatchAccepted], owner: str, provider: str,
                     now: datetime) -> int:
    """The messages of ``accepted`` ``sent``, each with its own provider id, in ONE UPDATE fenced by the lease
    owner; returns how many rows matched."""
    column = "message_id_header" if provider.partition(":")[0] == "smtp" else "smtp2go_message_id"
    pids = {a.lease.tracking_id: a.provider_id for a in accepted if a.provider_id}
    values: dict[str, Any] = {**_END_ATTEMPT, "status": MessageStatus.SENT, "sent_at": now, "next_attempt_at": None,
                              "held_since": None, "transport": provider.partition(":")[0], "provider": provider,
                              "updated_at": now}
    if pids:
        values[column] = case(pids, value=messages.c.id, else_=messages.c[column])
    return int(conn.execute(
        update(messages).with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql")
        .where(messages.c.id.in_([a.lease.tracking_id for a in accepted]), messages.c.lease_owner == owner,
               messages.c.status == MessageStatus.SENDING).values(values)).rowcount)


def _emit_sent_events(conn: Connection, tracking_ids: list[str], now: datetime, data: dict[str, Any]) -> None:
    """One ``email.sent`` callback per message of ``tracking_ids`` (each its own event id, next ``seq``,
    ``reference`` and provider id copied from its row, as :func:`worker.callbacks.outbox.emit` writes one), in
    ONE ``INSERT ... SELECT``; the caller's UPDATE holds the rows' locks."""
    se = outbox.SE
    event_ids = {t: f"evt_{uuid.uuid4().hex}" for t in tracking_ids}
    seq = (select(func.coalesce(func.max(se.c.seq), 0) + 1).where(se.c.message_id == messages.c.id)
           .scalar_subquery())
    rows = select(
        case(event_ids, value=messages.c.id), messages.c.id, seq, literal("email.sent", String()),
        null(), literal(MessageStatus.SENT.value, String()), messages.c.reference, messages.c.smtp2go_message_id,
        literal(now, UTCDateTime()), literal(utcnow(), UTCDateTime()), literal(data, JSON()),
    ).where(messages.c.id.in_(tracking_ids))
    conn.execute(insert(se).from_select(["event_id", "message_id", "seq", "type", "recipient", "status", "reference",
                                         "smtp2go_message_id", "occurred_at", "created_at", "data"], rows))


def retry_later(conn: Connection, lease: Lease, reason: str, retry_at: datetime, *,
                refused: dict[str, str] | None = None, attempt: AttemptEnd | None = None) -> None:
    """Nothing was sent this time; try again at ``retry_at`` (refused recipients are ``rejected`` for good)."""
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.RETRYING, "next_attempt_at": retry_at,
                         "last_error": reason, "held_since": None}, attempt)
    _reject_recipients(conn, lease, refused, MessageStatus.RETRYING)
    log.info("retry scheduled tracking_id=%s at=%s reason=%s", lease.tracking_id, retry_at.isoformat(), reason)


def park_unknown(conn: Connection, lease: Lease, reason: str, *, attempt: AttemptEnd | None = None) -> str:
    """The last send may have landed: park the message for reconciliation (never resent blindly).

    Its attempt row says which provider took it: reconciliation asks that one.
    """
    last_error = f"ambiguous: {reason}; parked until reconciliation settles it"
    _write(conn, lease, {"status": MessageStatus.PARKED, "ambiguous_since": utcnow(), "next_attempt_at": None,
                         "lease_owner": None, "lease_expires_at": None, "inflight_since": None,
                         "last_error": last_error}, attempt)
    log.warning("send outcome unknown tracking_id=%s reason=%s (parked for reconciliation)", lease.tracking_id,
                reason)
    return last_error


def hold(conn: Connection, lease: Lease, problem: str, retry_at: datetime, *,
         attempt: AttemptEnd | None = None) -> None:
    """An operator problem stopped the attempt: the message is ``held`` (never ``failed``) with ``last_error``
    naming the problem, and tried again at ``retry_at`` (an attempt that met the problem is recorded ``held``
    and spends no retry budget)."""
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.HELD, "next_attempt_at": retry_at,
                         "last_error": f"held: {problem}",
                         "held_since": func.coalesce(messages.c.held_since, utcnow())}, attempt)


def fail(conn: Connection, lease: Lease, reason: str, *, refused: dict[str, str] | None = None,
         attempt: AttemptEnd | None = None) -> None:
    """Give up: every transport refused for good (refused recipients ``rejected``, the rest ``failed``)."""
    now = utcnow()
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.FAILED, "failed_at": now,
                         "last_error": reason, "next_attempt_at": None, "held_since": None}, attempt)
    _reject_recipients(conn, lease, refused, MessageStatus.FAILED)
    conn.execute(update(recipients)
                 .where(recipients.c.message_id == lease.tracking_id, recipients.c.status == RecipientStatus.QUEUED)
                 .values(status=RecipientStatus.FAILED, error=func.coalesce(recipients.c.error, reason)))
    _emit_message_event(conn, lease.tracking_id, MessageStatus.FAILED, now, error=reason)
    log.warning("final state failed tracking_id=%s reason=%s", lease.tracking_id, reason)


def suppress(conn: Connection, lease: Lease) -> None:
    """Every recipient is on the suppression list: nothing is sent."""
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.SUPPRESSED, "next_attempt_at": None,
                         "last_error": "every recipient is on the suppression list", "held_since": None})
    _emit_message_event(conn, lease.tracking_id, MessageStatus.SUPPRESSED, utcnow())
    log.info("final state suppressed tracking_id=%s", lease.tracking_id)


# ------------------------------------------------------------------------- reconciliation and operators


def settle_accepted(conn: Connection, tracking_id: str, *, provider: str, provider_id: str,
                    note: str) -> bool:
    """A parked message turned out to be accepted: record it ``sent`` with ``provider_id`` and apply events
    that arrived before the id was known. Runs in the caller's transaction; False (nothing changed) when the
    message is no longer parked."""
    now = utcnow()
    ids = {**_provider_ids(provider, provider_id), "transport": provider.partition(":")[0], "provider": provider}
    settled = conn.execute(
        _update(tracking_id).where(*_PARKED)
        .values({**_END_ATTEMPT, **ids, "status": MessageStatus.SENT, "sent_at": now,
                 "ambiguous_since": None, "next_attempt_at": None, "last_error": note, "updated_at": now})
    ).rowcount == 1
    if not settled:
        return False
    _recipients_sent(conn, tracking_id, now)
    _settle_attempt(conn, tracking_id, AttemptOutcome.ACCEPTED, note, provider_id)
    _emit_message_event(conn, tracking_id, MessageStatus.SENT, now, transport=ids["transport"])
    _apply_early_events(conn, tracking_id, _email_id(provider, provider_id))
    log.info("parked message settled as sent tracking_id=%s provider=%s provider_id=%s", tracking_id,
             provider, provider_id)
    return True


def _settle_attempt(conn: Connection, tracking_id: str, outcome: AttemptOutcome, note: str,
                    provider_id: str | None = None) -> None:
    """The parked attempt (the last one left unknown or in flight) gets the outcome reconciliation found."""
    last = conn.scalar(select(attempts.c.id).where(
        attempts.c.message_id == tracking_id,
        attempts.c.outcome.in_([AttemptOutcome.UNKNOWN, AttemptOutcome.IN_FLIGHT])).order_by(attempts.c.id.desc())
        .limit(1))
    if last is not None:
        conn.execute(update(attempts).where(attempts.c.id == last).values(
            outcome=outcome, error=f"settled by reconciliation: {note}", provider_message_id=provider_id,
            finished_at=func.coalesce(attempts.c.finished_at, utcnow())))


def release_parked(conn: Connection, tracking_id: str, *, note: str, parked_since: datetime | None = None) -> bool:
    """A parked message was not accepted (a completed negative search, an SMTP outcome past its resend delay,
    or an operator's decision): make it due now, so the send path sends it again. Runs in the caller's
    transaction; False (nothing changed) when the message is no longer parked -- or, with ``parked_since``, when
    it was parked again since (the search that justified the release was about an earlier attempt)."""
    now = utcnow()
    same_parking = [messages.c.ambiguous_since == parked_since] if parked_since is not None else []
    released = conn.execute(
        _update(tracking_id).where(*_PARKED, *same_parking)
        .values({**_END_ATTEMPT, "status": MessageStatus.RETRYING, "ambiguous_since": None, "next_attempt_at": now,
                 "last_error": note, "updated_at": now})
    ).rowcount == 1
    if released:
        _settle_attempt(conn, tracking_id, AttemptOutcome.NOT_SENT, note)
        log.warning("parked message released for a new attempt tracking_id=%s: %s", tracking_id, note)
    return released


def cancel(conn: Connection, tracking_id: str, *, note: str = "cancelled by the application") -> bool:
    """The application takes the message back (``cancel_email``): ``cancelled`` if it is queued, scheduled,
    retrying or held and no transport was ever handed it (no in-flight mark, not parked, nothing accepted);
    False when it is too late (or unknown). Runs in the caller's transaction.

    One conditional UPDATE on the row: a worker claiming the same message at the same moment either claimed it
    first (its UPDATE set ``sending``: this one matches nothing and says False) or finds it ``cancelled``.
    """
    now = utcnow()
    done = conn.execute(
        _update(tracking_id).where(_WAITING, *_UNSENT)
        .values({**_END_ATTEMPT, "status": MessageStatus.CANCELLED, "next_attempt_at": None, "held_since": None,
                 "last_error": note, "updated_at": now})
    ).rowcount == 1
    if done:
        _end_recipients(conn, tracking_id, RecipientStatus.CANCELLED)
        _emit_message_event(conn, tracking_id, MessageStatus.CANCELLED, now)
        log.info("final state cancelled tracking_id=%s", tracking_id)
    return done


def requeue(conn: Connection, tracking_id: str, *, note: str, stuck_after: timedelta) -> str:
    """The operator's ``requeue`` of one message; returns what it did (``requeued``, ``parked``) or why not.

    A failed message starts over (counters, fallback and failed recipients reset). A message stuck in
    ``sending`` whose worker died is parked when its in-flight mark is set (the send may have landed:
    reconciliation decides), otherwise made due. Queued, retrying and held messages are made due now.
    Parked messages are left to reconciliation; :func:`release_parked` is the operator's explicit override.
    """
    now = utcnow()
    row = conn.execute(select(messages.c.status, messages.c.ambiguous_since, messages.c.lease_expires_at,
                              messages.c.inflight_since, messages.c.purged_at, messages.c.next_attempt_at,
                              messages.c.queued_at, messages.c.held_since)
                       .where(messages.c.id == tracking_id)).one_or_none()
    if row is None:
        return "unknown id"
    common = {"next_attempt_at": None, "last_error": note, "updated_at": now, "published_at": now}
    if row.status == MessageStatus.FAILED:
        if row.purged_at is not None:
            return "content purged"
        conn.execute(update(recipients)
                     .where(recipients.c.message_id == tracking_id, recipients.c.status == RecipientStatus.FAILED)
                     .values(status=RecipientStatus.QUEUED, error=None))
        restarted = conn.execute(
            _update(tracking_id).where(messages.c.status == MessageStatus.FAILED)
            # the attempt rows stay on record; ``attempts`` counts those since this start-over (the budgets)
            .values({**common, **_END_ATTEMPT, "status": MessageStatus.QUEUED, "crashes": 0, "attempts": 0,
                     "failed_at": None, "held_since": None}))
        return "requeued" if restarted.rowcount == 1 else "changed meanwhile"
    if row.ambiguous_since is not None:
        return "parked (outcome unknown): reconciliation settles it, or pass --include-ambiguous"
    if row.status == MessageStatus.SENDING:
        if row.lease_expires_at is None or row.lease_expires_at >= now:
            return "a worker holds its lease"
        expired = (messages.c.status == MessageStatus.SENDING, messages.c.lease_expires_at < now)
        if row.inflight_since is not None:
            done = conn.execute(_update(tracking_id).where(*expired).values(
                status=MessageStatus.PARKED, ambiguous_since=now, lease_owner=None, lease_expires_at=None,
                inflight_since=None, next_attempt_at=None, updated_at=now,
                last_error=f"ambiguous: its worker died mid-send; parked until reconciliation settles it ({note})"))
            return "parked" if done.rowcount == 1 else "changed meanwhile"
        done = conn.execute(_update(tracking_id).where(*expired).values(
            {**common, "status": MessageStatus.QUEUED, "lease_owner": None, "lease_expires_at": None}))
        return "requeued" if done.rowcount == 1 else "changed meanwhile"
    if row.status in (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD):
        due = row.next_attempt_at or row.queued_at
        held = row.status == MessageStatus.HELD or row.held_since is not None
        if not held and due is not None and due > now - stuck_after:
            return "not stuck: it is due soon"
        done = conn.execute(_update(tracking_id).where(_WAITING).values(common))
        return "requeued" if done.rowcount == 1 else "changed meanwhile"
    return f"status is {row.status.value}"


# ----------------------------------------------------------------------------------------------- events


def _emit_message_event(conn: Connection, tracking_id: str, status: MessageStatus, occurred_at: datetime,
                        **extra: Any) -> None:
    """The status callback of a message-level transition (``email.<status>``), written in the transition's own
    transaction, after its UPDATE took the message row's lock."""
    outbox.emit(conn, tracking_id, f"email.{status.value}", status=status.value, occurred_at=occurred_at,
                data={k: v for k, v in extra.items() if v is not None} or None)


# -------------------------------------------------------------------------------- recipient events roll up

#: Recipient statuses that count as reached (delivered, or the recipient acted on the message).
_REACHED = (RecipientStatus.DELIVERED, RecipientStatus.OPENED, RecipientStatus.CLICKED)


def roll_up(message: Message) -> MessageStatus:
    """An accepted message's status follows its recipients' events: write the rolled-up status on ``message``
    (locked and loaded with its recipients by the caller, flushed with the caller's session) and return it. A
    message that is not accepted (queued, sending, retrying, parked, held, failed, ...) keeps its status.

    Over the recipients handed to a provider (all but suppressed and failed ones): ``complained`` if any
    complained; else ``bounced`` if any hard-bounced or all bounced; else ``delivered`` if any was delivered,
    opened or clicked; else ``rejected`` if every one was rejected or bounced; else ``sent``.
    """
    if message.status not in ACCEPTED_STATUSES:
        return message.status
    rs = [r for r in message.recipients
          if r.status not in (RecipientStatus.SUPPRESSED, RecipientStatus.FAILED)]
    if not rs:
        return message.status
    statuses = [r.status for r in rs]
    if RecipientStatus.COMPLAINED in statuses:
        new = MessageStatus.COMPLAINED
    elif (any(r.status == RecipientStatus.BOUNCED and r.bounce_type == "hard" for r in rs)
          or all(s == RecipientStatus.BOUNCED for s in statuses)):
        new = MessageStatus.BOUNCED
    elif any(s in _REACHED for s in statuses):
        new = MessageStatus.DELIVERED
    elif all(s in (RecipientStatus.REJECTED, RecipientStatus.BOUNCED) for s in statuses):
        new = MessageStatus.REJECTED
    else:
        new = MessageStatus.SENT
    # Derived, never accumulated, so arrival order cannot change it: the earliest bounce of a recipient that is
    # bounced now (a soft bounce later overtaken by a delivery does not count).
    message.email_bounced_at = min(
        (r.bounced_at for r in rs if r.status == RecipientStatus.BOUNCED and r.bounced_at), default=None)
    message.status = new
    return new


def apply_stored_events(session: Session, message: Message, event_ids: Sequence[int]) -> int:
    """Apply stored, unapplied events to ``message`` (locked by the caller) in event-time order, roll its status
    up and emit each event's callback; returns how many were applied. Uses the caller's session, never commits."""
    applied = event_effects.claim_events(session, message, event_ids)
    if applied:
        roll_up(message)
        session.flush()
        for row in applied:
            event_effects.emit_event(session, message, row)
    return len(applied)


def _apply_early_events(conn: Connection, tracking_id: str, provider_message_id: str | None) -> int:
    """Apply events that arrived before this message's provider id was known (never dropped, see events)."""
    pending = pending_event_ids(conn, tracking_id, provider_message_id)
    if not pending:
        return 0
    with Session(bind=conn) as session:  # joins the caller's transaction; never commits it
        message = session.scalars(select(Message).where(Message.id == tracking_id).with_for_update()
                                  .options(selectinload(Message.recipients))).one()
        applied = apply_stored_events(session, message, pending)
        session.flush()
    if applied:
        log.info("linked %d pending event(s) tracking_id=%s", applied, tracking_id)
    return applied
