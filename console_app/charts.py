"""Server-rendered charts: inline SVG built here (the console's CSP allows no script), escaped as it is built.

- :func:`trend`: the last 7 days, per day: emails accepted by a transport (sent), and of those, delivered and
  bounced (grouped by the day they were accepted).
- :func:`latency`: enqueue (or the scheduled time, if later) -> accepted, p50 and p95 per hour over 24 hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.infrastructure.models import ACCEPTED_STATUSES, Message, MessageStatus, utcnow

#: At most this many accepted emails are read for the latency chart (newest first); more only thin the sample.
LATENCY_SAMPLE = 200_000


def fmt_time(value: datetime | str | None) -> str:
    """The one timestamp format of every console page (an ISO string, as some stores return, is read first)."""
    if not value:
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _day_expr(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name in {"mysql", "mariadb"}:
        return func.date_format(column, "%Y-%m-%d")
    return func.strftime("%Y-%m-%d", column)


@dataclass
class TrendDay:
    day: datetime
    sent: int
    delivered: int
    bounced: int


def trend_data(session: Session, now: datetime | None = None, days: int = 7) -> list[TrendDay]:
    now = now or utcnow()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    day = _day_expr(session, Message.sent_at)
    rows = session.execute(select(day, Message.status, func.count())
                           .where(Message.sent_at >= start, Message.status.in_(ACCEPTED_STATUSES))
                           .group_by(day, Message.status)).all()
    per: dict[str, dict[str, int]] = {}
    for bucket, status, count in rows:
        slot = per.setdefault(str(bucket), {"sent": 0, "delivered": 0, "bounced": 0})
        slot["sent"] += int(count)
        if MessageStatus(status) == MessageStatus.DELIVERED:
            slot["delivered"] += int(count)
        elif MessageStatus(status) == MessageStatus.BOUNCED:
            slot["bounced"] += int(count)
    out = []
    for i in range(days):
        d = start + timedelta(days=i)
        slot = per.get(d.strftime("%Y-%m-%d"), {})
        out.append(TrendDay(d, slot.get("sent", 0), slot.get("delivered", 0), slot.get("bounced", 0)))
    return out


@dataclass
class LatencyHour:
    hour: datetime
    count: int
    p50: float | None
    p95: float | None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (non-empty)."""
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]


def latency_data(session: Session, now: datetime | None = None, hours: int = 24) -> list[LatencyHour]:
    now = now or utcnow()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = session.execute(select(Message.queued_at, Message.send_at, Message.sent_at)
                           .where(Message.sent_at >= start).order_by(Message.sent_at.desc())
                           .limit(LATENCY_SAMPLE)).all()
    per: dict[int, list[float]] = {}
    for queued_at, send_at, sent_at in rows:
        due = max(queued_at, send_at) if send_at else queued_at
        slot = int((sent_at - start).total_seconds() // 3600)
        if 0 <= slot < hours:
            per.setdefault(slot, []).append(max(0.0, (sent_at - due).total_seconds()))
    out = []
    for i in range(hours):
        values = sorted(per.get(i, []))
        out.append(LatencyHour(start + timedelta(hours=i), len(values),
                               percentile(values, 0.5) if values else None,
                               percentile(values, 0.95) if values else None))
    return out


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


_W, _H, _LEFT, _BOTTOM, _TOP, _RIGHT = 720, 220, 48, 24, 10, 8


def _frame(label: str, maximum: float, fmt: Any) -> list[str]:
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(label)}" '
             'xmlns="http://www.w3.org/2000/svg">']
    plot = _H - _BOTTOM - _TOP
    for f in (0.25, 0.5, 0.75, 1.0):
        y = round(_H - _BOTTOM - plot * f, 1)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y}" y2="{y}"/>')
        parts.append(f'<text class="axis" x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">'
                     f'{escape(fmt(maximum * f))}</text>')
    base = _H - _BOTTOM
    parts.append(f'<line class="base" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}"/>')
    return parts


def trend(days: list[TrendDay]) -> Markup:
    """Grouped bars per day: sent, delivered, bounced."""
    maximum = _nice_max(max([d.sent for d in days] + [1]))
    parts = _frame("Sent, delivered and bounced per day, last 7 days", maximum, lambda v: f"{v:,.0f}")
    plot = _H - _BOTTOM - _TOP
    step = (_W - _LEFT - _RIGHT) / max(1, len(days))
    bar = (step - 12) / 3
    for i, d in enumerate(days):
        x0 = _LEFT + i * step + 6
        title = (f"{d.day.strftime('%Y-%m-%d')} (UTC day): {d.sent:,} sent, {d.delivered:,} delivered, "
                 f"{d.bounced:,} bounced")
        parts.append(f"<g><title>{escape(title)}</title>")
        for j, (key, n) in enumerate((("sent", d.sent), ("delivered", d.delivered), ("bounced", d.bounced))):
            h = round(plot * n / maximum, 1)
            parts.append(f'<rect class="o-{key}" x="{round(x0 + j * bar, 1)}" y="{round(_H - _BOTTOM - h, 1)}" '
                         f'width="{round(bar - 1, 1)}" height="{h}"/>')
        parts.append(f'<text class="axis" x="{round(x0 + step / 2 - 6, 1)}" y="{_H - 8}" text-anchor="middle">'
                     f'{escape(d.day.strftime("%a %d"))}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def latency(hours: list[LatencyHour]) -> Markup:
    """p50 and p95 per hour as two polylines with a dot per hour that had mail."""
    top = max([h.p95 or 0.0 for h in hours] + [0.0])
    maximum = _nice_max(top) if top > 0 else 1.0
    parts = _frame("Enqueue to accepted latency per hour, p50 and p95, last 24 hours", maximum, _seconds)
    plot = _H - _BOTTOM - _TOP
    step = (_W - _LEFT - _RIGHT) / max(1, len(hours))
    for key in ("p95", "p50"):
        points = []
        for i, h in enumerate(hours):
            value = getattr(h, key)
            if value is None:
                continue
            x = round(_LEFT + i * step + step / 2, 1)
            y = round(_H - _BOTTOM - plot * value / maximum, 1)
            points.append((x, y, h, value))
        if len(points) > 1:
            parts.append(f'<polyline class="l-{key}" points="{" ".join(f"{x},{y}" for x, y, _h, _v in points)}"/>')
        for x, y, h, value in points:
            title = (f"{fmt_time(h.hour)} + 1 h: {key} {_seconds(value)} over {h.count:,} email(s)")
            parts.append(f'<circle class="l-{key}" cx="{x}" cy="{y}" r="2.5"><title>{escape(title)}</title></circle>')
    for i, h in enumerate(hours):
        if i % 3 == 0:
            parts.append(f'<text class="axis" x="{round(_LEFT + i * step + 2, 1)}" y="{_H - 8}">'
                         f'{escape(h.hour.strftime("%H:00"))}</text>')
    if not any(h.count for h in hours):
        parts.append(f'<text class="axis" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">'
                     "no email accepted in the last 24 hours</text>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
