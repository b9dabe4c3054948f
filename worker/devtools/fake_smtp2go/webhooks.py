"""Webhook delivery: SMTP2Go's event payloads, posted to the receiver from background workers.

The webhook receiver and the event pipeline are only tested honestly when events arrive the way SMTP2Go sends
them: after the API answered, in order per send, as JSON or form posts, retried with backoff when the receiver
fails. Tests can also inject one event (an open, a bounce) at a moment of their choosing.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlencode

import requests

from worker.devtools.fake_smtp2go.state import _FakeState
from worker.devtools.fake_smtp2go.wire import _iso, _recipients

_log = logging.getLogger("worker.devtools.fake_smtp2go")  # the package's name, as before it was split into modules
_UA = "Mozilla/5.0 (X11; Linux x86_64)"
_MX = "mx1.example.com [203.0.113.25]"
_EVENT_FIELDS: dict[str, dict[str, str]] = {  # per-recipient event details, as in the fixture files
    "delivered": {"host": _MX, "context": "Unavailable", "message": "250 2.0.0 Ok: queued as 4Xk2pQ"},
    "open": {"user-agent": _UA, "srchost": "203.0.113.90"},
    "click": {"url": "https://example.org/", "user-agent": _UA, "srchost": "203.0.113.90"},
    "bounce": {"bounce": "hard", "context": "RCPT TO", "host": _MX,
               "message": "550 5.1.1 Recipient address rejected: User unknown"},
    "reject": {"context": "submission", "message": "Recipient address is on the suppression list"},
}


class _Webhooks(_FakeState):
    """The webhook half of :class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go`; accepted sends queue onto ``_wq``."""

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every queued webhook was posted (or given up on); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wcond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wcond.wait(left)
        return True

    def _event_payload(self, event: str, send: dict, rcpt: str | None, **extra: Any) -> dict[str, Any]:
        payload = send["payload"]
        sender = parseaddr(str(payload.get("sender", "")))[1]
        ev: dict[str, Any] = {"event": event, "id": uuid.uuid4().hex, "email_id": send["email_id"],
                              "time": _iso(time.time()), "sendtime": _iso(send["time"], micro=True),
                              "sender": sender}
        if event == "processed":
            ev.update({"from": payload.get("sender", ""), "from_address": sender,
                       "recipients": _recipients(payload), "subject": payload.get("subject", ""),
                       "message-id": f"<E{send['email_id']}@message-id.smtpcorp.com>",
                       "srchost": "198.51.100.7"})
        else:
            ev.update({"rcpt": rcpt or "", **_EVENT_FIELDS.get(event, {})})
        if send.get("tracking_id") is not None:
            ev["X-Mailworker-Id"] = send["tracking_id"]
        return {**ev, **extra}

    def _post_webhook(self, session: Any, ev: dict[str, Any], retries: int) -> int:
        """POST one event, retrying non-2xx and connection errors with backoff as SMTP2Go does."""
        if not self.webhook_url:
            raise RuntimeError("no webhook_url configured")
        headers = {"User-Agent": "SMTP2Go-Webhooks (fake)"}
        if self.webhook_auth:
            kind, secret = self.webhook_auth
            secret = base64.b64encode(secret.encode()).decode() if kind.lower() == "basic" else secret
            headers["Authorization"] = f"{kind.capitalize()} {secret}"
        if self.webhook_format == "json":
            data, headers["Content-Type"] = json.dumps(ev).encode(), "application/json"
        else:  # SMTP2Go's default "form" output; list values (recipients) become repeated keys
            data = urlencode(ev, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        statuses: list[int | None] = []
        error = None
        for attempt in range(retries + 1):
            if attempt and self._stopping.wait(self.webhook_backoff * 2 ** (attempt - 1)):
                break
            try:
                resp = session.post(self.webhook_url, data=data, headers=headers, timeout=10)
                statuses.append(resp.status_code)
                error = None
            except requests.RequestException as exc:
                statuses.append(None)
                error = repr(exc)
            if statuses[-1] is not None and 200 <= statuses[-1] < 300:
                break
        last = statuses[-1] if statuses else None
        record = {"event": ev.get("event"), "email_id": ev.get("email_id"), "rcpt": ev.get("rcpt"),
                  "payload": ev, "status": last, "statuses": statuses, "attempts": len(statuses),
                  "error": error, "time": time.time()}
        with self._lock:
            self.webhooks.append(record)
        if last is None and error is not None and session is requests:
            raise requests.ConnectionError(error)
        return last or 0

    def _webhook_worker(self) -> None:
        session = requests.Session()
        while True:
            with self._wcond:
                while not self._wq:
                    self._wcond.wait()
                job = self._wq.popleft()
            if job is None:
                session.close()
                return
            try:
                due, events = job
                if due <= time.monotonic() or not self._stopping.wait(due - time.monotonic()):
                    for ev in events:
                        if self._stopping.is_set():
                            break
                        self._post_webhook(session, ev, self.webhook_retries)
            except Exception:  # noqa: BLE001 - one bad webhook must not stop delivery of the rest
                _log.debug("webhook delivery failed", exc_info=True)
            finally:
                with self._wcond:
                    self._pending = max(0, self._pending - 1)
                    self._wcond.notify_all()

    def post_event(self, event: str, email_id: str, rcpt: str, **extra: Any) -> int:
        """Post one webhook now (no retries) and return the receiver's HTTP status.

        Lets a test inject an open, click, bounce or complaint at a moment of its choosing; an unknown
        email_id is allowed (the receiver must keep such events). Connection errors propagate.
        """
        with self._lock:
            send = next((s for s in reversed(self.sends) if s["email_id"] == email_id), None)
        send = send or {"email_id": email_id, "tracking_id": None, "payload": {}, "time": time.time()}
        return self._post_webhook(requests, self._event_payload(event, send, rcpt, **extra), retries=0)
