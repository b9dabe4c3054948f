"""Operator actions: each previews what it will change, asks for a reason, goes through the lifecycle's
transitions (the same ones as ``mailworker requeue``), and is written to the audit log in the same transaction.

- **Retry** a failed message (it starts over: counters reset, failed recipients queued again) or a held one (due
  now instead of after its cool-down): :func:`worker.sending.lifecycle.requeue`. A parked message (its last send
  may have landed) is never retried from here: reconciliation settles it (``mailworker requeue
  --include-ambiguous`` is the explicit, audited-by-shell override).
- **Release a suppression** (and **add** one): :mod:`worker.tracking.suppressions`.
- **Cancel** a queued, scheduled, retrying or held message no transport was handed yet:
  :func:`worker.sending.lifecycle.cancel` (the same transition as ``cancel_email``; a worker claiming it at the
  same moment either wins, and the cancel says too late, or finds it ``cancelled``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from console_app.charts import fmt_time
from worker.errors import InvalidEmail
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import (
    AuditEntry,
    Message,
    MessageStatus,
    Recipient,
    RecipientStatus,
    Suppression,
    utcnow,
)
from worker.sending import lifecycle
from worker.tracking import suppressions

MAX_REASON = 2000


class ActionRefused(ValueError):
    """The action cannot be taken (wrong state, missing reason); the text says why."""


@dataclass
class Preview:
    allowed: bool
    why_not: str | None = None
    changes: list[str] = field(default_factory=list)


def clean_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise ActionRefused("a reason is required: say why, for whoever reads the audit log later")
    if len(text) > MAX_REASON:
        raise ActionRefused(f"the reason is longer than {MAX_REASON} characters")
    return text


def _audit(conn_or_session: Any, *, actor: str, action: str, reason: str, outcome: str,
           message_id: str | None = None, target: str | None = None, changes: dict[str, Any] | None = None) -> None:
    conn_or_session.execute(insert(AuditEntry).values(
        created_at=utcnow(), actor=actor[:191], action=action, message_id=message_id, target=target,
        reason=reason, outcome=outcome[:255], changes=changes))


# ------------------------------------------------------------------------------------------------ retry


def retry_preview(message: Message) -> Preview:
    if message.status == MessageStatus.FAILED:
        if message.purged_at is not None:
            return Preview(False, "its content was purged: there is nothing left to send")
        failed = [r.address for r in message.recipients if r.status == RecipientStatus.FAILED]
        return Preview(True, changes=[
            "status: failed -> queued",
            f"recipients failed -> queued: {', '.join(failed) or 'none'} (rejected and suppressed ones stay)",
            f"attempt counters reset ({message.attempts} -> 0),"
            " the SMTP2Go API is tried again first",
            "a send task is published now",
        ])
    if message.status == MessageStatus.PARKED:
        return Preview(False, "it is parked: its last send may have landed. Reconciliation settles it before any "
                              "second send; it is never resent blindly from the console")
    if message.status == MessageStatus.HELD:
        due = fmt_time(message.next_attempt_at) if message.next_attempt_at else "its cool-down"
        return Preview(True, changes=[
            f"next attempt: now, instead of {due}",
            "status stays held until a worker takes it; if the operator problem is not fixed it is held again",
            "a send task is published now",
        ])
    return Preview(False, f"only failed or held messages are retried here; this one is {message.status.value}")


def _message_action(tracking_id: str, *, action: str, actor: str, reason: str,
                    preview_of: Callable[[Message], Preview], snapshot: Callable[[Message], dict[str, Any]],
                    run: Callable[[Connection, str], str]) -> str:
    """The shape every message action shares: preview the message, ``run`` the lifecycle transition only when
    the preview allows it (with ``reason`` checked), and audit the outcome with the status before and after in
    the same transaction. Returns the outcome (what ``run`` returned, or ``refused: ...``)."""
    reason = clean_reason(reason)
    with session_scope() as session:
        message = session.get(Message, tracking_id)
        if message is None:
            raise ActionRefused("unknown tracking id")
        preview = preview_of(message)
        before = snapshot(message)
    with get_engine().connect() as conn:
        outcome = run(conn, reason) if preview.allowed else f"refused: {preview.why_not}"
        after = conn.execute(select(Message.status).where(Message.id == tracking_id)).scalar_one()
        _audit(conn, actor=actor, action=action, reason=reason, outcome=outcome, message_id=tracking_id,
               changes={"before": before, "after": {"status": after.value}, "preview": preview.changes})
        conn.commit()
    return outcome


def retry(tracking_id: str, *, actor: str, reason: str,
          publisher: Callable[[str], bool] | None = None) -> str:
    """Retry through the lifecycle; returns the outcome (``requeued`` or why not). Audited either way."""
    def run(conn: Connection, why: str) -> str:
        note = f"retried from the console by {actor}: {why}"
        return lifecycle.requeue(conn, tracking_id, note=note[:1000], stuck_after=timedelta(0))

    outcome = _message_action(
        tracking_id, action="retry", actor=actor, reason=reason, preview_of=retry_preview, run=run,
        snapshot=lambda m: {"status": m.status.value, "held": m.status == MessageStatus.HELD,
                            "attempts": m.attempts})
    if outcome == "requeued":
        if publisher is None:
            from worker.sending.publish import publish_send

            publisher = publish_send
        publisher(tracking_id)  # a failed publish is repaired by the sweeper
    return outcome


# ----------------------------------------------------------------------------------------------- cancel


def cancel_preview(message: Message) -> Preview:
    waiting = message.status in (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD)
    if message.status == MessageStatus.PARKED:
        return Preview(False, "a transport may already have it (it is parked): too late to cancel")
    if not waiting:
        return Preview(False, f"only queued, scheduled, retrying or held messages can be cancelled; this one is "
                              f"{message.status.value}")
    if message.ambiguous_since is not None or getattr(message, "inflight_transport", None) is not None \
            or message.inflight_since is not None:
        return Preview(False, "a transport may already have it (it is parked or in flight): too late to cancel")
    if any(r.status not in (RecipientStatus.QUEUED, RecipientStatus.SUPPRESSED) for r in message.recipients):
        return Preview(False, "some recipients were already handed to a transport: too late to cancel")
    queued = [r.address for r in message.recipients if r.status == RecipientStatus.QUEUED]
    return Preview(True, changes=[
        f"status: {message.status.value} -> cancelled (final: it will never be sent)",
        f"recipients queued -> cancelled: {', '.join(queued) or 'none'}",
        "an email.cancelled status callback is emitted",
    ])


def cancel(tracking_id: str, *, actor: str, reason: str) -> str:
    """Cancel through the lifecycle; returns ``cancelled`` or why not. Audited either way."""
    def run(conn: Connection, why: str) -> str:
        done = lifecycle.cancel(conn, tracking_id, note=f"cancelled from the console by {actor}: {why}"[:1000])
        return "cancelled" if done else "refused: too late (a worker took it meanwhile)"

    return _message_action(tracking_id, action="cancel", actor=actor, reason=reason, preview_of=cancel_preview,
                           snapshot=lambda m: {"status": m.status.value}, run=run)


# ------------------------------------------------------------------------------------------ suppressions


def release_preview(session: Session, address: str) -> tuple[Suppression | None, Preview, list[str]]:
    addr = suppressions.normalize_address(address)
    entry = session.scalar(select(Suppression).where(Suppression.address == addr))
    if entry is None:
        return None, Preview(False, f"{addr or 'that address'} is not on the suppression list"), []
    waiting = list(session.scalars(
        select(Recipient.message_id).join(Message, Message.id == Recipient.message_id)
        .where(Recipient.address.in_(sorted({addr, address.strip()})),
               Recipient.status == RecipientStatus.QUEUED,
               Message.status.in_([MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD]))
        .limit(20)))
    changes = [f"{addr} comes off the suppression list (it was added as {entry.reason} on "
               f"{fmt_time(entry.created_at)})",
               "mail to it is sent again from now on; messages already suppressed stay suppressed"]
    if entry.reason in {suppressions.REASON_SPAM, suppressions.REASON_HARD_BOUNCE, suppressions.REASON_REJECT}:
        changes.append(f"careful: {entry.reason} suppressions protect the sender's reputation")
    return entry, Preview(True, changes=changes), waiting


def release_suppression(address: str, *, actor: str, reason: str, message_id: str | None = None) -> str:
    reason = clean_reason(reason)
    with session_scope() as session:
        entry, preview, _waiting = release_preview(session, address)
        if entry is None:
            raise ActionRefused(preview.why_not or "not suppressed")
        was = {"address": entry.address, "reason": entry.reason, "detail": entry.detail,
               "created_at": entry.created_at.isoformat(), "source_message_id": entry.source_message_id}
        removed = suppressions.remove_suppression(session, entry.address)
        outcome = "released" if removed else "already released"
        _audit(session, actor=actor, action="release suppression", reason=reason, outcome=outcome,
               message_id=message_id or entry.source_message_id, target=entry.address,
               changes={"removed": was})
    if removed:
        from worker.compliance.sync import release_remote

        outcome = f"{outcome}; {release_remote(entry.address)}"
    return outcome


def erase_address(address: str, *, actor: str, reason: str) -> str:
    """Erase an address (:mod:`worker.compliance.erasure`); audited under the address's keyed hash."""
    from worker.compliance.erasure import erase
    from worker.errors import ConfigurationError

    reason = clean_reason(reason)
    try:
        report = erase(address, actor=actor, reason=reason)
    except (InvalidEmail, ConfigurationError) as err:
        raise ActionRefused(str(err)) from None
    return f"erased ({report.address_hash}): {report.describe()}"


def add_suppression(address: str, *, kind: str, actor: str, reason: str) -> str:
    reason = clean_reason(reason)
    with session_scope() as session:
        try:
            added = suppressions.add_suppression(session, address, kind or suppressions.REASON_MANUAL,
                                                 detail=f"added in the console by {actor}: {reason}")
        except InvalidEmail as err:
            raise ActionRefused(str(err)) from None
        addr = suppressions.validate_address(address)
        outcome = "suppressed" if added else "already suppressed (kept as it was)"
        _audit(session, actor=actor, action="add suppression", reason=reason, outcome=outcome, target=addr,
               changes={"added": {"address": addr, "reason": kind or suppressions.REASON_MANUAL}} if added else None)
    return outcome


def recent_audit(session: Session, limit: int = 50) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
                                .limit(limit)))
