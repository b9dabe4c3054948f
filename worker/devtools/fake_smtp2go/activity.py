"""The ``/activity/search`` endpoint, built from SMTP2Go's documented shapes (``fixtures/smtp2go``).

The reconciler decides whether an ambiguous send may be sent again from what this endpoint says, so the fake
must answer the way SMTP2Go documents it, not the way our client happens to read it: an earlier version echoed
custom headers as the ``[{"header", "value"}]`` list that ``/email/send`` takes, our client read that list, and
every test passed while reconciliation against the real service could never match. Hence, from the fixture
``activity_search.json`` and its README: ``custom_headers`` is an object holding only the requested header
names; events are named ``processed``, ``delivered``, ``soft-bounced``, ``hard-bounced``, ``rejected``, ``spam``,
``unsubscribed``, ``resubscribed``, ``opened``, ``clicked``; the filters are the documented ones (an unknown
field or a wrong type is a 400, so a client sending an undocumented filter fails here rather than silently in
production); ``limit`` (default 100, at most 1000) sets the page size and ``data.continue_token`` pages;
``data.total_events`` counts every match. The per-key budget (60 a minute) answers 429, a wrong key 401, and a
test can queue answers (``script_activity``) such as a 500.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import math
import time
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from worker.devtools.fake_smtp2go.scripted import Scripted
from worker.devtools.fake_smtp2go.state import _FakeState
from worker.devtools.fake_smtp2go.wire import Reply, _api_error, _iso, _rate_limited, _recipients, _rid, _toplevel_error

#: The documented activity event names (they differ from the webhook names).
ACTIVITY_EVENTS = ("processed", "delivered", "soft-bounced", "hard-bounced", "rejected", "spam", "unsubscribed",
                   "resubscribed", "opened", "clicked")
_STRING_FIELDS = {"api_key", "start_date", "end_date", "search", "search_email_id", "search_subject",
                  "search_sender", "search_recipient", "continue_token", "region"}
_LIST_FIELDS = {"search_usernames", "subaccounts", "event_types", "custom_headers"}
_BOOL_FIELDS = {"include_headers", "only_latest", "only_latest_by_sent"}
_DEFAULT_LIMIT, _MAX_LIMIT = 100, 1000
USERNAME = "api-FAKE5BFDE1E6"
#: Per-event fields, as in the fixture: delivery outcomes carry the receiving server's answer and address.
_EVENT_DETAIL: dict[str, dict[str, str]] = {
    "processed": {"host": ""},
    "delivered": {"smtp_response": "250 2.0.0 OK queued as 4XYZ", "host": "203.0.113.25"},
    "hard-bounced": {"smtp_response": "550 5.1.1 Recipient address rejected: User unknown",
                     "host": "198.51.100.7"},
    "soft-bounced": {"smtp_response": "452 4.2.2 Mailbox full", "host": "198.51.100.9"},
    "rejected": {"reason": "Recipient is on the suppression list"},
}


class _ActivityAPI(_FakeState):
    """The activity-search half of :class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go`: events for the recorded sends
    (``activity_events`` per recipient: ``processed`` and ``delivered`` unless a test changes it) plus any a
    test added with :meth:`add_activity`. Every authenticated query is kept in ``activity_queries``."""

    def add_activity(self, email_id: str, event: str, recipient: str, *, at: float | None = None,
                     **fields: Any) -> None:
        """Record one more activity event (a bounce, a reject, a complaint) for a send, e.g. to test the
        fill-in of missing webhooks. ``fields`` override the documented per-event details."""
        if event not in ACTIVITY_EVENTS:
            raise ValueError(f"{event!r} is not a documented activity event ({', '.join(ACTIVITY_EVENTS)})")
        with self._lock:
            self._activity_extra.append({"email_id": email_id, "event": event, "recipient": recipient,
                                         "time": time.time() if at is None else at, "fields": fields})

    def script_activity(self, *responses: Scripted) -> None:
        """Queue answers for the next authenticated ``/activity/search`` calls (e.g. ``Scripted.server_error()``)."""
        with self._lock:
            self._activity_script.extend(responses)

    def _handle_activity(self, headers: Any, raw: bytes) -> Reply:
        try:
            q = json.loads(raw) if raw.strip() else {}
        except ValueError:
            q = None
        if not isinstance(q, dict):
            return 400, _toplevel_error("", "The request body is not a JSON object."), {}
        if not self._key_ok(headers, q):
            return 401, _api_error("Invalid API key", "API_EXCEPTION"), {}
        with self._lock:
            scripted = self._activity_script.popleft() if self._activity_script else None
        if scripted is not None:
            if scripted.delay > 0:
                self._stopping.wait(scripted.delay)
            body = scripted.body if scripted.body is not None else _api_error(f"HTTP {scripted.status}",
                                                                               "API_EXCEPTION")
            return scripted.status, body, dict(scripted.headers)
        now = time.monotonic()
        with self._lock:  # one key per fake, so one sliding 60 s window
            hits = self._activity_hits
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= self.activity_rate_per_minute:
                return _rate_limited(max(1, math.ceil(hits[0] + 60 - now)))
            hits.append(now)
        with self._lock:
            self.activity_queries.append({k: v for k, v in q.items() if k != "api_key"})
        problem = _validate(q)
        if problem:
            return 400, _toplevel_error(*problem), {}
        try:
            start = _parse_date(q.get("start_date")) if q.get("start_date") else _midnight()
            end = _parse_date(q.get("end_date")) if q.get("end_date") else time.time()
        except ValueError as exc:
            return 400, _toplevel_error("start_date/end_date", str(exc)), {}
        limit = q.get("limit", _DEFAULT_LIMIT)
        fingerprint = _fingerprint(q)
        offset = 0
        if q.get("continue_token"):
            try:
                token = json.loads(base64.urlsafe_b64decode(str(q["continue_token"]).encode()))
                offset, same = int(token["o"]), token["f"] == fingerprint
            except (ValueError, KeyError, TypeError):
                same = False
            if not same:
                return 400, _toplevel_error("continue_token", "The continue_token is not valid for this search."), {}
        matches = [ev for ts, ev in self._activity_events(q.get("custom_headers") or [])
                   if start <= ts < end and _matches(ev, q)]
        page = matches[offset:offset + limit]
        nxt = offset + len(page)
        token_out = (base64.urlsafe_b64encode(json.dumps({"o": nxt, "f": fingerprint}).encode()).decode()
                     if nxt < len(matches) else None)
        return 200, {"data": {"events": page, "total_events": len(matches), "continue_token": token_out},
                     "request_id": _rid()}, {}

    def _activity_events(self, wanted: list[str]) -> list[tuple[float, dict[str, Any]]]:
        """Every event, oldest first, with ``custom_headers`` holding the ``wanted`` names only."""
        with self._lock:
            sends = list(self.sends)
            extra = list(self._activity_extra)
        by_id = {s["email_id"]: s for s in sends}
        raw: list[tuple[float, int, dict[str, Any], str, str, dict[str, Any]]] = []
        for n, s in enumerate(sends):
            for rcpt in _recipients(s["payload"]):
                for step, name in enumerate(self.activity_events):  # processed, then delivered, per recipient
                    raw.append((s["time"] + step / 1000, n, s, name, rcpt, {}))
        for n, x in enumerate(extra, start=len(sends)):
            send = by_id.get(x["email_id"]) or {"email_id": x["email_id"], "payload": {}, "time": x["time"]}
            raw.append((x["time"], n, send, x["event"], x["recipient"], x["fields"]))
        raw.sort(key=lambda r: (r[0], r[1]))
        return [(ts, _event(send, name, rcpt, ts, fields, wanted)) for ts, _, send, name, rcpt, fields in raw]


def _event(send: dict, name: str, rcpt: str, ts: float, fields: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    p = send["payload"]
    sender = parseaddr(str(p.get("sender", "")))[1]
    to = ", ".join(parseaddr(str(a))[1] or str(a) for a in p.get("to") or [])
    sent_headers = {str(h.get("header", "")).lower(): str(h.get("value"))
                    for h in p.get("custom_headers") or [] if isinstance(h, dict)}
    ev: dict[str, Any] = {"from": sender, "recipient": rcpt, "subaccount_name": "Master account",
                          "email_id": send["email_id"], "date": _iso(ts), "event": name,
                          "subject": str(p.get("subject", "")), "username": USERNAME, "sender": sender,
                          "to": to, **_EVENT_DETAIL.get(name, {}),
                          "custom_headers": {h: sent_headers[h.lower()] for h in wanted if h.lower() in sent_headers}}
    if name == "processed":
        ev["delivery_attempts"] = []
    ev.update(fields)
    return ev


def _validate(q: dict[str, Any]) -> tuple[str, str] | None:
    """(fieldname, message) of the first field SMTP2Go would not accept: unknown, or of the wrong type."""
    for key, value in q.items():
        if key in _STRING_FIELDS:
            ok = value is None or isinstance(value, str)
        elif key in _LIST_FIELDS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key in _BOOL_FIELDS:
            ok = isinstance(value, bool)
        elif key == "limit":
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_LIMIT
        else:
            return key, f"The field '{key}' is not a field of this endpoint."
        if not ok:
            kind = ("a string" if key in _STRING_FIELDS else "a list of strings" if key in _LIST_FIELDS
                    else "a boolean" if key in _BOOL_FIELDS else f"an integer from 1 to {_MAX_LIMIT}")
            return key, f"The field '{key}' must be {kind}."
    unknown = [e for e in q.get("event_types") or [] if e not in ACTIVITY_EVENTS]
    if unknown:
        return "event_types", f"Unknown event type(s) {', '.join(unknown)}; valid: {', '.join(ACTIVITY_EVENTS)}."
    return None


def _matches(ev: dict[str, Any], q: dict[str, Any]) -> bool:
    def has(field: str, needle: Any) -> bool:
        return not needle or str(needle).lower() in str(ev.get(field, "")).lower()

    if q.get("search_email_id") and ev["email_id"] != q["search_email_id"]:
        return False
    if q.get("event_types") and ev["event"] not in q["event_types"]:
        return False
    if q.get("search_usernames") and ev["username"] not in q["search_usernames"]:
        return False
    if not (has("recipient", q.get("search_recipient")) and has("sender", q.get("search_sender"))
            and has("subject", q.get("search_subject"))):
        return False
    if q.get("search"):  # documented: Email_id, Subject, To, Recipient or BCC; '|' separates alternatives
        hay = " ".join(str(ev.get(f, "")) for f in ("email_id", "subject", "to", "recipient", "bcc")).lower()
        return any(alt.strip().lower() in hay for alt in str(q["search"]).split("|") if alt.strip())
    return True


def _fingerprint(q: dict[str, Any]) -> str:
    """The search a continue_token belongs to (its parameters minus the paging and the key)."""
    same = {k: v for k, v in q.items() if k not in ("continue_token", "limit", "api_key")}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def _midnight() -> float:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _parse_date(value: Any) -> float:
    """The documented formats: ISO 8601 (date, date and time with ``T`` or a space, optional fraction and
    offset) and the RFC 822 forms; no offset means UTC."""
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            raise ValueError(f"'{text}' is not a date in a documented format") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
