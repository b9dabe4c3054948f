"""What the console's pages show, read from the database (and the protections' state in Redis)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, defer, selectinload

from console_app.charts import fmt_time
from worker.infrastructure.models import (
    ACCEPTED_STATUSES,
    PENDING_STATUSES,
    AuditEntry,
    Message,
    MessageStatus,
    Suppression,
    utcnow,
)
from worker.infrastructure.redaction import redact
from worker.tracking.stats import get_email_stats

#: Overview tiles, in order: (key, label), one per status, so the tiles add up to the total. ``parked`` (the
#: send's outcome is unknown, waiting for reconciliation) and ``held`` (an operator problem holds it) are
#: statuses of their own. A status not listed here gets a tile of its own after these.
TILES = (
    ("queued", "Queued"), ("sending", "Sending"), ("retrying", "Retrying"),
    ("parked", "Parked (waiting for reconciliation)"), ("held", "Held (operator problem)"),
    ("sent", "Sent"), ("delivered", "Delivered"), ("bounced", "Bounced"), ("complained", "Complained"),
    ("rejected", "Rejected"), ("failed", "Failed"), ("suppressed", "Suppressed"),
    ("cancelled", "Cancelled"), ("expired", "Expired"),
)

#: The hourly chart's outcome groups: (key, label, statuses).
OUTCOMES = (
    ("delivered", "delivered", (MessageStatus.DELIVERED,)),
    ("sent", "sent (no event yet)", (MessageStatus.SENT,)),
    ("pending", "queued / retrying", (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.RETRYING)),
    ("bounced", "bounced / complained / rejected",
     (MessageStatus.BOUNCED, MessageStatus.COMPLAINED, MessageStatus.REJECTED)),
    ("failed", "failed / suppressed / cancelled / expired",
     (MessageStatus.FAILED, MessageStatus.SUPPRESSED, MessageStatus.CANCELLED, MessageStatus.EXPIRED)),
)
_OUTCOME_OF = {status: key for key, _label, statuses in OUTCOMES for status in statuses}


@dataclass
class Window:
    label: str
    term: str  # the search term for the same window (after:24h)
    stats: dict[str, Any]
    tiles: list[tuple[str, str, int]]
    warnings: dict[str, bool]


def window(label: str, term: str, since: datetime, thresholds: Any) -> Window:
    """One window's tiles and rates. Opens its own sessions, one after the other: on SQLite every transaction
    is a writer (BEGIN IMMEDIATE), so a session nested in another would wait for it."""
    stats = get_email_stats(since=since)
    counts = dict(stats["by_status"])
    sent = stats["sent_total"]
    warnings = {
        "delivery": sent > 0 and stats["delivery_rate"] < thresholds.warn_delivery_below,
        "bounce": sent > 0 and stats["bounce_rate"] > thresholds.warn_bounce_above,
        "spam": sent > 0 and stats["spam_rate"] > thresholds.warn_spam_above,
    }
    known = {key for key, _name in TILES}
    tiles = [(key, name, counts.get(key, 0)) for key, name in TILES]
    tiles += [(key, key.capitalize(), n) for key, n in sorted(counts.items()) if key not in known]
    return Window(label, term, stats, tiles, warnings)


def _hour_expr(session: Session) -> Any:
    if session.get_bind().dialect.name in {"mysql", "mariadb"}:
        return func.date_format(Message.queued_at, "%Y-%m-%d %H")
    return func.strftime("%Y-%m-%d %H", Message.queued_at)


@dataclass
class Chart:
    """A stacked bar chart of the last 24 hours, laid out for a server-rendered SVG."""

    width: int
    height: int
    bars: list[dict[str, Any]]
    legend: list[tuple[str, str]]
    maximum: int
    gridlines: list[tuple[float, int]] = field(default_factory=list)


def hourly_chart(session: Session, now: datetime | None = None, hours: int = 24) -> Chart:
    now = now or utcnow()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    hour = _hour_expr(session)
    rows = session.execute(select(hour, Message.status, func.count()).where(Message.queued_at >= start)
                           .group_by(hour, Message.status)).all()
    buckets: dict[str, dict[str, int]] = {}
    for bucket, status, count in rows:
        outcome = _OUTCOME_OF.get(MessageStatus(status), "pending")
        slot = buckets.setdefault(str(bucket), {})
        slot[outcome] = slot.get(outcome, 0) + int(count)
    labels = [(start + timedelta(hours=i)) for i in range(hours)]
    totals = [sum(buckets.get(h.strftime("%Y-%m-%d %H"), {}).values()) for h in labels]
    maximum = max(totals + [1])
    width, height, left, bottom, top = 720, 200, 40, 24, 8
    plot = height - bottom - top
    step = (width - left) / hours
    bars = []
    for i, h in enumerate(labels):
        counts = buckets.get(h.strftime("%Y-%m-%d %H"), {})
        y = float(height - bottom)
        segments = []
        for key, label, _statuses in OUTCOMES:
            n = counts.get(key, 0)
            if not n:
                continue
            size = plot * n / maximum
            y -= size
            segments.append({"key": key, "label": label, "count": n, "y": round(y, 1), "h": round(size, 1)})
        bars.append({"x": round(left + i * step + 1, 1), "w": round(step - 2, 1), "segments": segments,
                     "total": totals[i], "hour": h.strftime("%H:00"), "show_label": i % 3 == 0,
                     "title": f"{fmt_time(h)} + 1 h: {totals[i]}"})
    grid = [(round(height - bottom - plot * f, 1), round(maximum * f)) for f in (0.5, 1.0)]
    return Chart(width, height, bars, [(k, label) for k, label, _s in OUTCOMES], maximum, grid)


@dataclass
class Oldest:
    id: str
    status: str
    queued_at: datetime
    age_seconds: float


def oldest_waiting(session: Session, now: datetime | None = None) -> Oldest | None:
    """The oldest email not yet handed to a transport (queued, retrying or held), one index probe each."""
    now = now or utcnow()
    found: list[Any] = []
    for status in (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.HELD):
        row = session.execute(select(Message.id, Message.status, Message.queued_at)
                              .where(Message.status == status)
                              .order_by(Message.queued_at.asc()).limit(1)).first()
        if row is not None:
            found.append(row)
    if not found:
        return None
    row = min(found, key=lambda r: r.queued_at)
    return Oldest(row.id, row.status.value, row.queued_at, max(0.0, (now - row.queued_at).total_seconds()))


def protection_state(hook: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    if hook is not None:
        return hook()
    try:  # the providers' breaker (per provider; the default one is SMTP2Go's), else the older single module
        from worker.providers.breaker import state
    except ImportError:
        from worker.sending.protection import state  # type: ignore[no-redef]

    return state()


# ------------------------------------------------------------------------------------------ one message


@dataclass
class TimelineEntry:
    at: datetime
    kind: str  # css class: enqueued, attempt, accepted, problem, event, audit, final, ended
    title: str
    detail: str | None = None
    recipient: str | None = None
    raw: str | None = None
    #: Where it sits among entries of the same moment: what caused what (enqueued, then the send, then what the
    #: provider reported about it).
    rank: float = 0.0
    #: It cannot have happened before this (a provider event before the acceptance it reports on is a clock that
    #: counts whole seconds, not an event before its cause).
    floor: datetime | None = None


#: Provider events of one moment, in the order one leads to the next.
_EVENT_RANK = {"processed": 0, "delivered": 1, "bounce": 1, "reject": 1, "open": 2, "click": 3, "spam": 4,
               "unsubscribe": 5, "resubscribe": 6}
#: Message states that end it without any transport accepting it; their entry is not an error.
ENDED = {MessageStatus.CANCELLED: "Cancelled", MessageStatus.EXPIRED: "Expired"}


def ended_at(session: Session, message: Message) -> datetime | None:
    """When a cancelled or expired message ended: its status event's time (written in the same transaction as
    the change), else its last write."""
    if message.status not in ENDED:
        return None
    from worker.infrastructure.models import StatusEvent

    at = session.scalar(select(StatusEvent.occurred_at).where(
        StatusEvent.message_id == message.id, StatusEvent.status == message.status.value)
        .order_by(StatusEvent.seq.desc()).limit(1))
    return at or message.updated_at


def causal_order(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """Time order, except that nothing is shown before its cause: each entry's time is taken as at least its
    ``floor``, and entries of the same moment go by ``rank``."""
    def key(item: tuple[int, TimelineEntry]) -> tuple[datetime, float, datetime, int]:
        i, e = item
        effective = max(e.at, e.floor) if e.floor is not None else e.at
        return effective, e.rank, e.at, i

    return [e for _i, e in sorted(enumerate(entries), key=key)]


def _redacted_json(value: Any) -> str:
    return redact(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def load_message(session: Session, tracking_id: str) -> Message | None:
    return session.scalar(
        select(Message).where(Message.id == tracking_id)
        .options(selectinload(Message.recipients), selectinload(Message.events),
                 selectinload(Message.attachments).options(defer(_attachment_content())))
    )


def _attachment_content() -> Any:
    from worker.infrastructure.models import Attachment

    return Attachment.content


def timeline(message: Message, audit: list[AuditEntry], ended: datetime | None = None) -> list[TimelineEntry]:
    """The message's story in causal order. ``ended``: when a cancelled or expired message ended
    (:func:`ended_at`)."""
    m = message
    q = m.queued_at
    entries: list[TimelineEntry] = []
    bits = [f"{len(m.recipients)} recipient(s)", f"{m.size_bytes:,} bytes"]
    if m.reference:
        bits.append(f"reference {m.reference}")
    if m.idempotency_key:
        bits.append(f"idempotency key {m.idempotency_key}")
    if m.template_id:
        bits.append(f"template {m.template_id}")
    entries.append(TimelineEntry(q, "enqueued", "Enqueued", "; ".join(bits), rank=0))
    end_time = ended or (m.updated_at if m.status in ENDED else None)
    never_due = m.send_at is not None and end_time is not None and m.send_at > end_time and m.sent_at is None
    if m.send_at and not never_due:
        entries.append(TimelineEntry(m.send_at, "enqueued", "Scheduled send time", rank=1, floor=q))
    if m.held_since:
        entries.append(TimelineEntry(m.held_since, "problem", "Held by an operator problem",
                                     redact(m.last_error or "") or None, rank=2, floor=q))
    if m.ambiguous_since:
        where = _text(getattr(m, "inflight_transport", None)) or _text(getattr(m, "provider", None)) or "a transport"
        entries.append(TimelineEntry(m.ambiguous_since, "problem", "Parked: the send's outcome is unknown",
                                     f"{where} may have accepted the last attempt; reconciliation settles it "
                                     "before any second send", rank=2, floor=q))
    if m.status in ENDED and end_time is not None:
        if m.status == MessageStatus.CANCELLED:
            detail = redact(m.last_error or "") or "taken back before any transport was handed it"
        else:
            when = fmt_time(m.expires_at) if m.expires_at else "its expiry time"
            detail = f"not handed to a transport by {when}"
        if never_due and m.send_at is not None:
            detail += f"; it was scheduled for {fmt_time(m.send_at)} and was never sent"
        entries.append(TimelineEntry(end_time, "ended", ENDED[m.status], detail, rank=5, floor=q))
    if m.sent_at:
        transport = _text(getattr(m, "provider", None)) or _text(m.transport) or "a transport"
        provider = m.smtp2go_message_id or m.message_id_header or "-"
        latency = (m.sent_at - m.queued_at).total_seconds()
        detail = (f"provider id {provider}; {m.attempts} attempt(s){per_transport(m)}; {latency:.1f}s after it was "
                  "enqueued")
        if m.fallback_reason:
            detail += f"; fell back to the relay because: {redact(m.fallback_reason)}"
        entries.append(TimelineEntry(m.sent_at, "accepted", f"Accepted by {transport}", detail, rank=3, floor=q))
    if m.reconciled_at:
        entries.append(TimelineEntry(m.reconciled_at, "attempt", "Checked against SMTP2Go's activity", rank=4,
                                     floor=q))
    if m.failed_at:
        detail = (f"{m.attempts} attempt(s){per_transport(m)}: "
                  f"{redact(m.last_error or '')}")
        if m.fallback_reason:
            detail += f"; fell back to the relay because: {redact(m.fallback_reason)}"
        entries.append(TimelineEntry(m.failed_at, "final", "Failed: gave up", detail, rank=5, floor=q))
    for rcpt in m.recipients:
        if rcpt.rejected_at and not any(e.recipient == rcpt.address for e in m.events):
            entries.append(TimelineEntry(rcpt.rejected_at, "final", "Refused by the transport",
                                         redact(rcpt.error or ""), rcpt.address, rank=5, floor=q))
    accepted = m.sent_at or q
    for event in m.events:
        bits = []
        if event.bounce_type:
            bits.append(f"{event.bounce_type} bounce")
        if event.detail:
            bits.append(redact(event.detail))
        if event.url:
            bits.append(event.url)
        late = (event.received_at - event.occurred_at).total_seconds() if event.received_at else 0
        if late > 60:
            bits.append(f"received {late / 60:.0f} min later")
        if event.applied_at is None:
            bits.append("not applied yet")
        raw = _redacted_json(event.smtp2go_data) if event.smtp2go_data is not None else None
        entries.append(TimelineEntry(event.occurred_at, "event", f"{event.event_type.value}"
                                     + (f" ({event.raw_event})" if event.raw_event and
                                        event.raw_event != event.event_type.value else ""),
                                     "; ".join(bits) or None, event.recipient, raw,
                                     rank=6 + _EVENT_RANK.get(event.event_type.value, 7) / 10, floor=accepted))
    for entry in audit:
        entries.append(TimelineEntry(entry.created_at, "audit", f"Operator {entry.actor}: {entry.action}",
                                     f"{entry.outcome}. Reason: {redact(entry.reason)}", rank=4.5, floor=q))
    return causal_order(entries)


def audit_for(session: Session, tracking_id: str) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).where(AuditEntry.message_id == tracking_id)
                                .order_by(AuditEntry.created_at.asc(), AuditEntry.id.asc())))


def suppressions_for(session: Session, message: Message) -> dict[str, Any]:
    """Suppressions on the list now for this message's recipients, and those this message caused."""
    addresses = sorted({r.address.lower() for r in message.recipients})
    current = list(session.scalars(select(Suppression).where(
        or_(Suppression.address.in_(addresses), Suppression.source_message_id == message.id))
        .order_by(Suppression.created_at)))
    return {"current": current, "by_address": {s.address: s for s in current}}


def headers_for(message: Message) -> list[tuple[str, str]]:
    """The headers the message was sent with (as far as stored), secrets redacted."""
    rows: list[tuple[str, str]] = [("From", message.sender)]
    for kind in ("to", "cc", "bcc"):
        names = [f"{r.display_name} <{r.address}>" if r.display_name else r.address
                 for r in message.recipients if r.kind.value == kind]
        if names:
            rows.append((kind.capitalize(), ", ".join(names)))
    if message.reply_to:
        rows.append(("Reply-To", message.reply_to))
    rows.append(("Subject", message.subject or ""))
    if message.message_id_header:
        rows.append(("Message-ID", message.message_id_header))
    rows.append(("X-Mailworker-Id", message.id))
    for name, value in (message.headers or {}).items():
        rows.append((name, redact(str(value))))
    return rows


# --------------------------------------------------------------------------------------------- attempts

#: A send attempt's outcome as shown (the send path's words -> the page's).
ATTEMPT_OUTCOMES = {"in_flight": "in flight", "accepted": "accepted", "not_sent": "not sent", "refused": "refused",
                    "unknown": "unknown (parked)", "held": "held"}


@dataclass
class AttemptRow:
    at: datetime | None
    provider: str
    outcome: str
    finished_at: datetime | None = None
    error: str | None = None
    provider_message_id: str | None = None
    latency_ms: int | None = None

    @property
    def outcome_label(self) -> str:
        return ATTEMPT_OUTCOMES.get(self.outcome, self.outcome)

    @property
    def bad(self) -> bool:
        return self.outcome in {"refused", "not_sent"}


def _field(row: Any, *names: str) -> Any:
    for name in names:
        value = getattr(row, name, None)
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def attempt_model() -> Any | None:
    """The send path's attempts table (one row per attempt), where this version has one."""
    from worker.infrastructure import models

    return getattr(models, "Attempt", None)


def attempts_for(session: Session, tracking_id: str) -> list[AttemptRow] | None:
    """Every send attempt of one message, oldest first, as ``get_email_status`` lists them; None when the
    database keeps no per-attempt rows (only counters and the last error)."""
    model = attempt_model()
    if model is None:
        return None
    owner = _field(model, "message_id", "tracking_id")
    order = [c for c in (_field(model, "at", "started_at", "created_at"), getattr(model, "id", None)) if c is not None]
    rows = session.scalars(select(model).where(owner == tracking_id).order_by(*order))
    out = []
    for row in rows:
        at = _field(row, "at", "started_at", "created_at")
        finished = _field(row, "finished_at", "ended_at")
        latency = _field(row, "latency_ms")
        if latency is None and at is not None and finished is not None:
            latency = int((finished - at).total_seconds() * 1000)
        error = _field(row, "error", "detail")
        out.append(AttemptRow(at=at, provider=_text(_field(row, "provider", "transport")) or "-",
                              outcome=_text(_field(row, "outcome")) or "unknown", finished_at=finished,
                              error=redact(str(error)) if error else None,
                              provider_message_id=_text(_field(row, "provider_message_id")),
                              latency_ms=int(latency) if latency is not None else None))
    return out


def provider_of(message: Message) -> tuple[str | None, str | None]:
    """(provider, provider message id): the send path's own columns where it records them, else the transport
    and SMTP2Go's email_id."""
    provider = _text(getattr(message, "provider", None)) or _text(message.transport)
    provider_id = _text(getattr(message, "provider_message_id", None)) or message.smtp2go_message_id
    return provider, provider_id


def shown_status(message: Any) -> str:
    """The status as the console shows it (``-`` when there is none)."""
    return _text(message.status) or "-"


def per_transport(message: Any) -> str:
    """`` (SMTP2Go API n, relay m)`` where the database counts attempts per transport, else nothing."""
    api, smtp = getattr(message, "api_attempts", None), getattr(message, "smtp_attempts", None)
    return f" (SMTP2Go API {api}, relay {smtp})" if api is not None and smtp is not None else ""


@dataclass
class BatchProgress:
    """Where the emails of one ``send_batch`` stand: queued (still in the send path), sent (a provider accepted
    them), failed, and the rest (suppressed, cancelled, expired)."""

    batch_id: str
    queued: int
    sent: int
    failed: int
    other: int

    @property
    def total(self) -> int:
        return self.queued + self.sent + self.failed + self.other


def batch_progress(session: Session, message: Any) -> BatchProgress | None:
    """The progress of the batch ``message`` was sent in (one GROUP BY over ix_messages_batch_id); None for an
    email sent on its own."""
    batch_id = getattr(message, "batch_id", None)
    if not batch_id:
        return None
    rows = session.execute(select(Message.status, func.count()).where(Message.batch_id == batch_id)
                           .group_by(Message.status)).all()
    counts: dict[MessageStatus, int] = {status: int(n) for status, n in rows}
    pending = sum(counts.get(s, 0) for s in PENDING_STATUSES)
    sent = sum(counts.get(s, 0) for s in ACCEPTED_STATUSES)
    failed = counts.get(MessageStatus.FAILED, 0)
    return BatchProgress(batch_id, pending, sent, failed, sum(counts.values()) - pending - sent - failed)
