"""The ``/email/send`` endpoint: validate, decide the answer (scripted or injected failure), record the send.

This is where the failures the worker must survive are made: 5xx, 429 with ``X-Ratelimit-Reset``, and the
ambiguous timeout where the mail *was* accepted. Every accepted send is recorded by its ``X-Mailworker-Id``
before any delay, so tests can prove nothing went out twice even when the client gave up waiting.
"""

from __future__ import annotations

import json
import time
from typing import Any

from worker.devtools.fake_smtp2go.scripted import Scripted
from worker.devtools.fake_smtp2go.webhooks import _Webhooks
from worker.devtools.fake_smtp2go.wire import (
    Reply,
    _api_error,
    _email_id,
    _rate_limited,
    _recipients,
    _success,
    _toplevel_error,
)


class _SendAPI(_Webhooks):
    """The send half of :class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go`; accepted sends raise webhooks."""

    def _handle_send(self, headers: Any, raw: bytes) -> Reply:
        now = time.time()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        status, body, extra, delay, accept = self._decide_send(headers, payload)
        email_id = None
        if accept:
            data = body.get("data") if isinstance(body, dict) else None
            email_id = (data if isinstance(data, dict) else {}).get("email_id") or _email_id()
            self._accept(email_id, payload, now)  # before any delay: the mail is out even if the client quits
        with self._lock:
            self.requests.append({"status": status, "payload": payload, "headers": dict(headers.items()),
                                  "time": now, "email_id": email_id})
        if delay > 0:
            self._stopping.wait(delay)
        return status, body, extra

    def _decide_send(self, headers: Any, payload: Any) -> tuple[int, dict | str, dict[str, str], float, bool]:
        if not isinstance(payload, dict):
            return 400, _toplevel_error("", "The request body is not a JSON object."), {}, 0.0, False
        if not self._key_ok(headers, payload):
            return 401, _api_error("Invalid API key", "API_EXCEPTION"), {}, 0.0, False
        problem = _validate_send(payload)
        if problem:
            return 400, _toplevel_error(*problem), {}, 0.0, False
        ok = _success(len(_recipients(payload)), bool(payload.get("fastaccept")))
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            roll, latency = self._rng.random(), self.latency
            t_rate, r_rate, e_rate = self.timeout_rate, self.rate_limit_rate, self.error_rate
        if scripted is not None:
            body = scripted.body
            if body is None:
                body = ok if scripted.status < 300 else _api_error(f"HTTP {scripted.status}", "API_EXCEPTION")
            accept = scripted.accept
            if accept is None:
                data = body.get("data") if isinstance(body, dict) else None
                accept = scripted.status == 200 and isinstance(data, dict) and bool(data.get("email_id"))
            return scripted.status, body, dict(scripted.headers), scripted.delay, accept
        if roll < t_rate:  # an ambiguous timeout: SMTP2Go sends the mail, the client never hears back
            return 200, ok, {}, self.timeout_seconds, True
        if roll < t_rate + r_rate:
            return (*_rate_limited(1), 0.0, False)
        if roll < t_rate + r_rate + e_rate:
            return 500, Scripted.server_error().body or {}, {}, 0.0, False
        return 200, ok, {}, latency, True

    def _accept(self, email_id: str, payload: dict, now: float) -> None:
        tracking_id = None
        for h in payload.get("custom_headers") or []:
            if isinstance(h, dict) and str(h.get("header", "")).lower() == "x-mailworker-id":
                tracking_id = str(h.get("value"))
        send = {"email_id": email_id, "tracking_id": tracking_id, "payload": payload, "time": now}
        with self._lock:
            self.sends.append(send)
            if tracking_id is not None:
                self._counts[tracking_id] = self._counts.get(tracking_id, 0) + 1
        if self.webhook_url and self.webhook_events:
            events = [self._event_payload(ev, send, r) for ev in self.webhook_events
                      for r in ([None] if ev == "processed" else _recipients(payload))]
            with self._wcond:  # posted in order by one worker; the API answer never waits for it
                self._wq.append((time.monotonic() + self.webhook_delay, events))
                self._pending += 1
                self._wcond.notify()


def _validate_send(p: dict) -> tuple[str, str] | None:
    """The checks SMTP2Go makes before accepting; returns (fieldname, message) of the first failure."""
    if not isinstance(p.get("sender"), str) or not p["sender"].strip():
        return "sender", "The field 'sender' is required and must be an RFC-822 formatted email address."
    for name in ("to", "cc", "bcc"):
        v = p.get(name)
        if (name == "to" or v is not None) and (not isinstance(v, list) or (name == "to" and not v)
                                                or not all(isinstance(x, str) and x.strip() for x in v)):
            return name, f"The field '{name}' must be a non-empty list of RFC-822 formatted email addresses."
    if not any(p.get(k) for k in ("text_body", "html_body", "template_id")):
        return "text_body", "One of 'text_body', 'html_body' or 'template_id' is required."
    return None
