"""A message's life, in one place: its states and the named transitions between them.

Every write to a message's status goes through a function of this module. The send path, the sweeper,
reconciliation and the operator's ``requeue`` call these transitions; none of them writes a status itself.

::

    queued ─claim─▶ sending ─record_accepted──▶ sent ─(webhook events)─▶ delivered / bounced / complained / rejected
      ▲  ▲            │ ├─retry_later─────────▶ retrying ─claim─▶ sending
      │  │            │ ├─park_unknown────────▶ retrying, parked ─settle_accepted─▶ sent
      │  │            │ │                                        └release_parked──▶ retrying (due now)
      │  │            │ ├─hold────────────────▶ retrying, held ─claim (problem fixed)─▶ sending
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

**Parked** (``retrying`` with ``ambiguous_since``): a transport may have accepted the last attempt (a read
timeout after the request left, a relay that took the DATA but never answered, a worker that died while the
in-flight mark was set). Only reconciliation or an explicit operator decision moves it on: :func:`settle_accepted`
when the provider shows it accepted, :func:`release_parked` when it provably did not (or, for SMTP, once
``SMTP_UNKNOWN_RESEND_AFTER`` passed: at least once, documented).

**Held** (``retrying`` with ``held_since``): an operator problem (revoked API key, missing encryption key, no
usable transport) stops the attempt. The message is never failed for it; it is tried again after a cool-down and
sent once the problem is fixed, or at once by ``mailworker requeue --held``.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session

from worker.callbacks import outbox
from worker.infrastructure.models import (
    Message,
    MessageStatus,
    Recipient,
    RecipientStatus,
    TrackingEvent,
    Transport,
    utcnow,
)

log = logging.getLogger(__name__)

messages = cast(Table, Message.__table__)
recipients = cast(Table, Recipient.__table__)
events = cast(Table, TrackingEvent.__table__)

#: Columns that describe a running attempt; cleared whenever an attempt ends.
_END_ATTEMPT: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "inflight_since": None,
                                "inflight_transport": None}


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
_WAITING = messages.c.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING])
_PARKED = (messages.c.status == MessageStatus.RETRYING, messages.c.ambiguous_since.is_not(None))


def _not_expired(now: datetime) -> Any:
    return or_(messages.c.expires_at.is_(None), messages.c.expires_at > now, messages.c.sent_at.is_not(None))


def _end_recipients(conn: Connection, tracking_id: str, status: RecipientStatus) -> None:
    conn.execute(update(recipients).where(recipients.c.message_id == tracking_id,
                                          recipients.c.status == RecipientStatus.QUEUED).values(status=status))


def _attempt_counter(transport: Transport) -> str:
    """The column that counts this transport's attempts (each has its own retry budget)."""
    return "api_attempts" if transport == Transport.SMTP2GO else "smtp_attempts"


def _provider_ids(transport: Transport, provider_id: str) -> dict[str, str]:
    """Where an accepting transport's id is stored: SMTP2Go's ``email_id``, or the relay's Message-ID."""
    if transport == Transport.SMTP2GO:
        return {"smtp2go_message_id": provider_id}
    return {"message_id_header": provider_id} if provider_id else {}


def _email_id(transport: Transport, provider_id: str) -> str | None:
    """The id SMTP2Go's events carry, when SMTP2Go accepted the message (early events are looked up by it)."""
    return provider_id if transport == Transport.SMTP2GO else None


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
            status=MessageStatus.EXPIRED, lease_owner=None, lease_expires_at=None, inflight_transport=None,
            next_attempt_at=None, held_since=None, updated_at=now,
            last_error="expired: its expires_at passed before it was handed to a transport")).rowcount == 1:
        _end_recipients(conn, tracking_id, RecipientStatus.EXPIRED)
        _emit_message_event(conn, tracking_id, MessageStatus.EXPIRED, now)
        log.info("final state expired tracking_id=%s (never handed to a transport)", tracking_id)
    return None


def _write(conn: Connection, lease: Lease, values: dict[str, Any]) -> None:
    """One UPDATE of the leased message, fenced by the lease owner; :class:`LeaseLost` when it is no longer ours.
    ``values`` maps columns to values or SQL expressions (``messages.c.attempts + 1``)."""
    fenced = _update(lease.tracking_id).where(messages.c.lease_owner == lease.owner,
                                              messages.c.status == MessageStatus.SENDING)
    if conn.execute(fenced.values({**values, "updated_at": utcnow()})).rowcount != 1:
        conn.rollback()
        raise LeaseLost(f"tracking_id={lease.tracking_id}: the lease of {lease.owner} was taken over")


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


def mark_in_flight(conn: Connection, lease: Lease, transport: Transport, *, lease_seconds: float) -> None:
    """Record (and commit) that a send is about to leave: a take-over after this point parks, never resends.

    Counts the attempt and renews the lease, so a fallback within one attempt gets a whole lease again.
    """
    counter = _attempt_counter(transport)
    now = utcnow()
    _write(conn, lease, {"inflight_transport": transport, "inflight_since": now,
                         "lease_expires_at": now + timedelta(seconds=lease_seconds),
                         "attempts": messages.c.attempts + 1,
                         counter: messages.c[counter] + 1})
    conn.commit()


def abandon_api(conn: Connection, lease: Lease, reason: str) -> None:
    """This message gave up on SMTP2Go (a permanent API error, or its retries used up): the relay sends it."""
    _write(conn, lease, {"api_abandoned": True, "fallback_reason": reason, "last_error": reason})
    log.warning("fallback to smtp tracking_id=%s reason=%s", lease.tracking_id, reason)


def relay_this_attempt(conn: Connection, lease: Lease, reason: str) -> None:
    """SMTP2Go cannot be used right now (breaker open, key refused): the relay sends this attempt, while the
    message keeps SMTP2Go as its transport for later ones (mail held meanwhile returns to the API once fixed)."""
    _write(conn, lease, {"fallback_reason": reason})
    log.info("relaying this attempt tracking_id=%s reason=%s", lease.tracking_id, reason)


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


def record_accepted(conn: Connection, lease: Lease, transport: Transport, provider_id: str, *,
                    refused: dict[str, str] | None = None, deferred: dict[str, str] | None = None,
                    retry_at: datetime | None = None) -> int:
    """The transport accepted the message (``provider_id``: SMTP2Go's ``email_id`` or the relay's Message-ID).

    ``refused`` recipients (5xx) are ``rejected`` for good. ``deferred`` recipients (a relay's per-recipient
    4xx) stay ``queued`` and the message stays ``retrying`` until ``retry_at``, when only they are sent again;
    the others are ``sent``. Returns how many events that arrived before the id was known were applied.
    """
    now = utcnow()
    ids = _provider_ids(transport, provider_id)
    if deferred:
        assert retry_at is not None
        text = "; ".join(f"{a}: {why}" for a, why in deferred.items())
        _write(conn, lease, {**_END_ATTEMPT, **ids, "status": MessageStatus.RETRYING, "transport": transport,
                             "sent_at": func.coalesce(messages.c.sent_at, now), "next_attempt_at": retry_at,
                             "last_error": f"relay deferred {len(deferred)} recipient(s), retrying them: {text}"})
    else:
        _write(conn, lease, {**_END_ATTEMPT, **ids, "status": MessageStatus.SENT, "transport": transport,
                             "sent_at": now, "next_attempt_at": None, "held_since": None})
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
        _emit_message_event(conn, lease.tracking_id, MessageStatus.SENT, now, transport=transport.value,
                            rejected=sorted(refused) if refused else None)
    log.info("accepted tracking_id=%s transport=%s provider_id=%s refused=%d deferred=%d", lease.tracking_id,
             transport.value, provider_id, len(refused or {}), len(deferred or {}))
    return _apply_early_events(conn, lease.tracking_id, _email_id(transport, provider_id))


def retry_later(conn: Connection, lease: Lease, reason: str, retry_at: datetime, *,
                refused: dict[str, str] | None = None) -> None:
    """Nothing was sent this time; try again at ``retry_at`` (refused recipients are ``rejected`` for good)."""
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.RETRYING, "next_attempt_at": retry_at,
                         "last_error": reason, "held_since": None})
    _reject_recipients(conn, lease, refused, MessageStatus.RETRYING)
    log.info("retry scheduled tracking_id=%s at=%s reason=%s", lease.tracking_id, retry_at.isoformat(), reason)


def park_unknown(conn: Connection, lease: Lease, reason: str) -> str:
    """The last send may have landed: park the message for reconciliation (never resent blindly).

    ``inflight_transport`` is kept: reconciliation needs to know where to look.
    """
    last_error = f"ambiguous: {reason}; parked until reconciliation settles it"
    _write(conn, lease, {"status": MessageStatus.RETRYING, "ambiguous_since": utcnow(), "next_attempt_at": None,
                         "lease_owner": None, "lease_expires_at": None, "inflight_since": None,
                         "last_error": last_error})
    log.warning("send outcome unknown tracking_id=%s reason=%s (parked for reconciliation)", lease.tracking_id,
                reason)
    return last_error


def hold(conn: Connection, lease: Lease, problem: str, retry_at: datetime, *,
         refund: Transport | None = None) -> None:
    """An operator problem stopped the attempt: keep the message ``retrying`` (never ``failed``) with
    ``last_error`` naming the problem, and try again at ``retry_at``. ``refund`` gives back the attempt that met
    the problem, so a revoked key does not use up the message's retry budget."""
    values: dict[str, Any] = {**_END_ATTEMPT, "status": MessageStatus.RETRYING, "next_attempt_at": retry_at,
                              "last_error": f"held: {problem}",
                              "held_since": func.coalesce(messages.c.held_since, utcnow())}
    if refund is not None:
        values[_attempt_counter(refund)] = messages.c[_attempt_counter(refund)] - 1
    _write(conn, lease, values)


def fail(conn: Connection, lease: Lease, reason: str, *, refused: dict[str, str] | None = None) -> None:
    """Give up: every transport refused for good (refused recipients ``rejected``, the rest ``failed``)."""
    now = utcnow()
    _write(conn, lease, {**_END_ATTEMPT, "status": MessageStatus.FAILED, "failed_at": now,
                         "last_error": reason, "next_attempt_at": None, "held_since": None})
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


def settle_accepted(conn: Connection, tracking_id: str, *, transport: Transport, provider_id: str,
                    note: str) -> bool:
    """A parked message turned out to be accepted: record it ``sent`` with ``provider_id`` and apply events
    that arrived before the id was known. Runs in the caller's transaction; False (nothing changed) when the
    message is no longer parked."""
    now = utcnow()
    ids = _provider_ids(transport, provider_id)
    settled = conn.execute(
        _update(tracking_id).where(*_PARKED)
        .values({**_END_ATTEMPT, **ids, "status": MessageStatus.SENT, "transport": transport, "sent_at": now,
                 "ambiguous_since": None, "next_attempt_at": None, "last_error": note, "updated_at": now})
    ).rowcount == 1
    if not settled:
        return False
    _recipients_sent(conn, tracking_id, now)
    _emit_message_event(conn, tracking_id, MessageStatus.SENT, now, transport=transport.value)
    _apply_early_events(conn, tracking_id, _email_id(transport, provider_id))
    log.info("parked message settled as sent tracking_id=%s transport=%s provider_id=%s", tracking_id,
             transport.value, provider_id)
    return True


def release_parked(conn: Connection, tracking_id: str, *, note: str, parked_since: datetime | None = None) -> bool:
    """A parked message was not accepted (a completed negative search, an SMTP outcome past its resend delay,
    or an operator's decision): make it due now, so the send path sends it again. Runs in the caller's
    transaction; False (nothing changed) when the message is no longer parked -- or, with ``parked_since``, when
    it was parked again since (the search that justified the release was about an earlier attempt)."""
    now = utcnow()
    same_parking = [messages.c.ambiguous_since == parked_since] if parked_since is not None else []
    released = conn.execute(
        _update(tracking_id).where(*_PARKED, *same_parking)
        .values({**_END_ATTEMPT, "ambiguous_since": None, "next_attempt_at": now, "last_error": note,
                 "updated_at": now})
    ).rowcount == 1
    if released:
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
            .values({**common, **_END_ATTEMPT, "status": MessageStatus.QUEUED, "api_attempts": 0,
                     "smtp_attempts": 0, "crashes": 0, "api_abandoned": False, "failed_at": None,
                     "held_since": None}))
        return "requeued" if restarted.rowcount == 1 else "changed meanwhile"
    if row.ambiguous_since is not None:
        return "parked (outcome unknown): reconciliation settles it, or pass --include-ambiguous"
    if row.status == MessageStatus.SENDING:
        if row.lease_expires_at is None or row.lease_expires_at >= now:
            return "a worker holds its lease"
        expired = (messages.c.status == MessageStatus.SENDING, messages.c.lease_expires_at < now)
        if row.inflight_since is not None:
            done = conn.execute(_update(tracking_id).where(*expired).values(
                status=MessageStatus.RETRYING, ambiguous_since=now, lease_owner=None, lease_expires_at=None,
                inflight_since=None, next_attempt_at=None, updated_at=now,
                last_error=f"ambiguous: its worker died mid-send; parked until reconciliation settles it ({note})"))
            return "parked" if done.rowcount == 1 else "changed meanwhile"
        done = conn.execute(_update(tracking_id).where(*expired).values(
            {**common, "status": MessageStatus.QUEUED, "lease_owner": None, "lease_expires_at": None}))
        return "requeued" if done.rowcount == 1 else "changed meanwhile"
    if row.status in (MessageStatus.QUEUED, MessageStatus.RETRYING):
        due = row.next_attempt_at or row.queued_at
        if row.held_since is None and due is not None and due > now - stuck_after:
            return "not stuck: it is due soon"
        done = conn.execute(_update(tracking_id).where(
            messages.c.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING]),
            messages.c.ambiguous_since.is_(None)).values(common))
        return "requeued" if done.rowcount == 1 else "changed meanwhile"
    return f"status is {row.status.value}"


# ----------------------------------------------------------------------------------------------- events


def _emit_message_event(conn: Connection, tracking_id: str, status: MessageStatus, occurred_at: datetime,
                        **extra: Any) -> None:
    """The status callback of a message-level transition (``email.<status>``), written in the transition's own
    transaction, after its UPDATE took the message row's lock."""
    outbox.emit(conn, tracking_id, f"email.{status.value}", status=status.value, occurred_at=occurred_at,
                data={k: v for k, v in extra.items() if v is not None} or None)




def _apply_early_events(conn: Connection, tracking_id: str, smtp2go_message_id: str | None) -> int:
    """Apply events that arrived before this message's provider id was known (never dropped, see events)."""
    from worker.sending.jobs import pending_event_ids

    pending = pending_event_ids(conn, tracking_id, smtp2go_message_id)
    if not pending:
        return 0
    from worker.tracking.events import link_pending_events

    with Session(bind=conn) as session:  # joins the caller's transaction; never commits it
        message = session.get(Message, tracking_id)
        assert message is not None
        applied = link_pending_events(session, message, pending)
        session.flush()
    return applied
