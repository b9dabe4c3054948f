"""The spam complaint rate over the last 7 days, against the line mailbox providers hold bulk senders to.

Since 2024 Gmail and Yahoo expect bulk senders to keep the spam complaint rate under 0.3 %
(``COMPLAINT_RATE_THRESHOLD``). Here the rate over a window (7 days unless told) is:

- **complaints**: recipients who complained in the window: distinct (message, address) pairs among the
  ``spam`` tracking events that occurred in it, together with the recipient rows whose ``complained_at``
  (status ``complained``) falls in it. An event and the recipient row it was applied to count once; an event
  not yet matched to its message still counts.
- **delivered base**: recipients accepted for delivery in the same window (recipient rows whose ``sent_at``
  falls in it: to, cc and bcc alike; suppressed and failed recipients, and those the provider refused at
  the send, are not accepted).

A complaint about mail sent before the window still counts, so the rate can exceed 1 after a quiet week; with
no mail accepted in the window the rate is 0 (no division by zero). The rate is "over" at or above the line.

Both counts are read with SQLAlchemy Core over the existing tables. :class:`ComplaintWatch` is the sweeper's
once-a-day WARNING: it computes the rate at most every 10 minutes per process and dedupes the WARNING across
processes with ``<send queue>:complaint-warning`` (SET NX, expiring after a day) in the broker's Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, union

from worker.infrastructure.db import session_scope
from worker.infrastructure.models import EventType, Recipient, TrackingEvent, utcnow

log = logging.getLogger(__name__)

WINDOW = timedelta(days=7)
#: The per-process minimum time between two computations by the sweeper, seconds.
CHECK_EVERY = 600.0
#: How long one WARNING silences the others (every process), seconds.
WARNING_EVERY = 86400


@dataclass(frozen=True)
class ComplaintRate:
    complaints: int
    delivered_base: int
    rate: float
    threshold: float
    over: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for people: the rate, the counts it comes from and the line."""
        return (f"{_pct(self.rate)} ({self.complaints:,} complaint(s) / {self.delivered_base:,} recipient(s) "
                f"accepted in the last 7 days; the line is {_pct(self.threshold)})")


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def complaint_rate(window: timedelta = WINDOW, now: datetime | None = None,
                   threshold: float | None = None) -> ComplaintRate:
    """Complaints over recipients accepted, both in ``(now - window, now]``; ``threshold`` defaults to
    ``COMPLAINT_RATE_THRESHOLD``. A naive ``now`` is taken as UTC."""
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise ValueError(f"window must be a positive timedelta, got {window!r}")
    if now is None:
        now = utcnow()
    elif not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if threshold is None:
        from worker.infrastructure.config import get_settings

        threshold = get_settings().complaint_rate_threshold
    since = now - window
    events = TrackingEvent.__table__
    recipients = Recipient.__table__
    complained = union(
        select(events.c.message_id, func.lower(events.c.recipient).label("address"))
        .where(events.c.event_type == EventType.SPAM, events.c.occurred_at > since, events.c.occurred_at <= now),
        select(recipients.c.message_id, func.lower(recipients.c.address))
        .where(recipients.c.complained_at > since, recipients.c.complained_at <= now),
    ).subquery()
    with session_scope() as session:
        complaints = int(session.scalar(select(func.count()).select_from(complained)) or 0)
        base = int(session.scalar(select(func.count()).select_from(recipients).where(
            recipients.c.sent_at > since, recipients.c.sent_at <= now)) or 0)
    rate = complaints / base if base else 0.0
    return ComplaintRate(complaints, base, rate, threshold, over=complaints > 0 and rate >= threshold)


def warning_key(send_queue: str) -> str:
    """``<send queue>:complaint-warning``: set (NX, for a day) by the process that logged the day's WARNING."""
    return f"{send_queue}:complaint-warning"


@dataclass
class ComplaintWatch:
    """The sweeper's check: at most one computation per ``every`` seconds in this process, at most one WARNING
    a day across every process sharing the Redis ``client`` (this process alone when there is none)."""

    every: float = CHECK_EVERY
    next_check: float = 0.0
    warned_until: float = 0.0
    clock: Callable[[], float] = time.monotonic
    #: The last rate computed (None before the first computation).
    last: ComplaintRate | None = None

    def check(self, client: Any = None, send_queue: str | None = None) -> ComplaintRate | None:
        """The rate when it was computed now, None when the last computation is recent enough."""
        now = self.clock()
        if now < self.next_check:
            return None
        self.next_check = now + self.every  # also after a failure: a broken database is not asked every sweep
        result = self.last = complaint_rate()
        if result.over and self._first_today(client, send_queue, now):
            log.warning("spam complaint rate over the last 7 days is at or above the line: %s. Gmail and Yahoo "
                        "throttle or reject bulk senders above %s: find the mail people complain about "
                        "(mailworker stats, the console overview); this warning repeats at most once a day",
                        result.describe(), _pct(result.threshold))
        return result

    def _first_today(self, client: Any, send_queue: str | None, now: float) -> bool:
        if client is not None and send_queue:
            try:
                return bool(client.set(warning_key(send_queue), datetime.now(UTC).isoformat(), nx=True,
                                       ex=WARNING_EVERY))
            except Exception as err:  # noqa: BLE001 - Redis is down: this process alone dedupes its warnings
                log.info("complaint rate: cannot write the warning marker: %s", type(err).__name__)
        if now < self.warned_until:
            return False
        self.warned_until = now + WARNING_EVERY
        return True
