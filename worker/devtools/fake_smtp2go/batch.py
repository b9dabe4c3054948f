"""The ``/email/batch`` endpoint: up to 1,000 emails in one request, answered as the fixtures show.

A 200 is ``{"request_id", "data": [...]}``: one ``{"email_id"}`` per email in request order (``{"schedule_id"}``
for an item with ``schedule``), see ``tests/fixtures/smtp2go/email_batch_success.json``. SMTP2Go does not
document its answer to an invalid item; the fake refuses the whole request with its usual validation error
(400, ``field_validation_errors`` naming ``emails[<index>].<field>``) and accepts nothing. Every accepted item
is recorded like a single send (by its ``X-Mailworker-Id``, before any delay), so duplicate counts, activity
search and webhooks cover batch mail too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from typing import Any

from worker.devtools.fake_smtp2go.scripted import Scripted
from worker.devtools.fake_smtp2go.send import _SendAPI, _validate_send
from worker.devtools.fake_smtp2go.wire import Reply, _api_error, _email_id, _rate_limited, _rid, _toplevel_error

#: SMTP2Go's documented maximum number of emails in one batch.
BATCH_MAX = 1000


class _BatchAPI(_SendAPI):
    """The batch half of the send API. ``batch_latency_per_email`` adds to ``latency`` per email of a batch."""

    batch_latency_per_email: float = 0.0
    _batch_script: deque[Scripted]

    def script_batch(self, *responses: Scripted) -> None:
        """Queue answers for the next valid ``/email/batch`` calls. A scripted answer accepts every item when
        ``accept`` is True (or it is a 200), or only the first ``accept_items`` items when that is set."""
        with self._lock:
            self._batch_script.extend(responses)

    def _handle_batch(self, headers: Any, raw: bytes) -> Reply:
        now = time.time()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        status, body, extra, delay, accepted = self._decide_batch(headers, payload)
        ids: list[str | None] = []
        if accepted:
            emails = payload["emails"]
            data = body.get("data") if isinstance(body, dict) and status == 200 else None
            for index in range(accepted):
                item = data[index] if isinstance(data, list) and index < len(data) else {}
                email_id = item.get("email_id") if isinstance(item, dict) else None
                if isinstance(item, dict) and item.get("schedule_id"):
                    ids.append(None)  # scheduled, not sent now
                    continue
                email_id = email_id or _email_id()
                ids.append(email_id)
                self._accept(email_id, emails[index], now)
        with self._lock:
            self.requests.append({"status": status, "payload": payload, "headers": dict(headers.items()),
                                  "time": now, "email_id": None, "path": "/email/batch", "email_ids": ids})
        if delay > 0:
            self._stopping.wait(delay)
        return status, body, extra

    def _decide_batch(self, headers: Any, payload: Any) -> tuple[int, dict | str, dict[str, str], float, int]:
        """(status, body, headers, delay, how many leading items are accepted)."""
        if not isinstance(payload, dict):
            return 400, _toplevel_error("", "The request body is not a JSON object."), {}, 0.0, 0
        if not self._key_ok(headers, payload):
            return 401, _api_error("Invalid API key", "API_EXCEPTION"), {}, 0.0, 0
        emails = payload.get("emails")
        if not isinstance(emails, list) or not 1 <= len(emails) <= BATCH_MAX:
            return 400, _toplevel_error("emails", f"The field 'emails' must be a list of 1 to {BATCH_MAX} "
                                        "emails."), {}, 0.0, 0
        for index, item in enumerate(emails):
            problem = _validate_send(item) if isinstance(item, dict) else ("", "must be a JSON object")
            if problem:
                return 400, _toplevel_error(f"emails[{index}].{problem[0]}".rstrip("."), problem[1]), {}, 0.0, 0
        ok = _batch_success(emails)
        with self._lock:
            scripted = self._batch_script.popleft() if self._batch_script else None
            roll = self._rng.random()
            latency = self.latency + self.batch_latency_per_email * len(emails)
            t_rate, r_rate, e_rate = self.timeout_rate, self.rate_limit_rate, self.error_rate
        if scripted is not None:
            body = scripted.body
            if body is None:
                body = ok if scripted.status < 300 else _api_error(f"HTTP {scripted.status}", "API_EXCEPTION")
            if scripted.accept_items is not None:
                count = min(scripted.accept_items, len(emails))
            elif scripted.accept is not None:
                count = len(emails) if scripted.accept else 0
            else:
                count = len(emails) if scripted.status == 200 else 0
            return scripted.status, body, dict(scripted.headers), scripted.delay, count
        if roll < t_rate:  # an ambiguous timeout: every email is sent, the client never hears back
            return 200, ok, {}, self.timeout_seconds, len(emails)
        if roll < t_rate + r_rate:
            return (*_rate_limited(1), 0.0, 0)
        if roll < t_rate + r_rate + e_rate:
            return 500, Scripted.server_error().body or {}, {}, 0.0, 0
        return 200, ok, {}, latency, len(emails)


def _batch_success(emails: list[dict]) -> dict[str, Any]:
    """The 200 of ``email_batch_success.json``: ``data`` is a list, one id per email in request order."""
    return {"request_id": _rid(),
            "data": [{"schedule_id": str(uuid.uuid4())} if e.get("schedule") else {"email_id": _email_id()}
                     for e in emails]}
