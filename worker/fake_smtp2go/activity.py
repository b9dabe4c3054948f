"""The ``/activity/search`` endpoint: the recorded sends as SMTP2Go's activity events, rate limited.

The reconciler asks this endpoint what happened to sends whose answer it never saw (the ambiguous timeouts),
so it must filter the way the real one does (ids, dates, custom headers, free-text search) and enforce the
per-key request budget that makes the reconciler back off.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from worker.fake_smtp2go.state import _FakeState
from worker.fake_smtp2go.wire import Reply, _api_error, _iso, _rate_limited, _recipients, _rid, _toplevel_error


class _ActivityAPI(_FakeState):
    """The activity-search half of :class:`~worker.fake_smtp2go.FakeSMTP2Go`, read from ``sends``."""

    def _handle_activity(self, headers: Any, raw: bytes) -> Reply:
        try:
            q = json.loads(raw) if raw.strip() else {}
        except ValueError:
            q = None
        if not isinstance(q, dict):
            return 400, _toplevel_error("", "The request body is not a JSON object."), {}
        if not self._key_ok(headers, q):
            return 401, _api_error("Invalid API key", "API_EXCEPTION"), {}
        now = time.monotonic()
        with self._lock:  # one key per fake, so one sliding 60 s window
            hits = self._activity_hits
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= self.activity_rate_per_minute:
                return _rate_limited(max(1, math.ceil(hits[0] + 60 - now)))
            hits.append(now)
            sends = list(self.sends)
        try:
            start, end = _parse_date(q.get("start_date"), False), _parse_date(q.get("end_date"), True)
            limit = int(q.get("limit") or 1000)
        except (TypeError, ValueError) as exc:
            return 400, _toplevel_error("start_date/end_date/limit", str(exc)), {}
        ids, wanted = set(_strings(q.get("email_id"))), q.get("custom_headers")
        wanted = None if wanted is None else {h.lower() for h in _strings(wanted)}
        search, search_rcpt = str(q.get("search") or "").lower(), str(q.get("search_recipient") or "").lower()
        events: list[dict[str, Any]] = []
        for s in sends:
            p = s["payload"]
            t = s["time"]
            if (ids and s["email_id"] not in ids) or (start and t < start) or (end and t > end):
                continue
            sender, subject = parseaddr(str(p.get("sender", "")))[1], str(p.get("subject", ""))
            hdrs = [{"header": h.get("header"), "value": h.get("value")}
                    for h in p.get("custom_headers") or []
                    if isinstance(h, dict) and (wanted is None or str(h.get("header")).lower() in wanted)]
            for rcpt in _recipients(p):
                hay = (s["tracking_id"] or "", rcpt, sender, subject)
                if (search and not any(search in x.lower() for x in hay)) or search_rcpt not in rcpt.lower():
                    continue
                for event, ts in (("processed", s["time"]), ("delivered", s["time"] + 0.5)):
                    events.append({"email_id": s["email_id"], "event": event, "date": _iso(ts, micro=True),
                                   "recipient": rcpt, "sender": sender, "subject": subject,
                                   "custom_headers": hdrs})
        events = events[:max(0, limit)]
        return 200, {"request_id": _rid(), "data": {"events": events, "count": len(events)}}, {}


def _strings(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []


def _parse_date(value: Any, end: bool) -> float | None:
    if value in (None, ""):
        return None
    dt = datetime.fromisoformat(str(value))
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if end and len(str(value)) == 10:  # a bare date as end_date means "through the end of that day"
        dt += timedelta(days=1)
    return dt.timestamp()
