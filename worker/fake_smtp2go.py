"""A local stand-in for SMTP2Go's v3 HTTP API and its webhooks.

The real service cannot be used in tests or benchmarks (it costs money, sends real mail and cannot be told to
fail on demand), so this server reproduces its documented wire formats - the responses of ``/email/send`` and
``/activity/search`` and the webhook payloads - and adds the failures the worker must survive: 5xx, 429 with
``X-Ratelimit-Reset``, and ambiguous timeouts where the mail *was* accepted. It records every accepted send by
its ``X-Mailworker-Id`` so tests can prove nothing went out twice. Standard library plus ``requests`` only.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import random
import signal
import socketserver
import string
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import requests

__all__ = ["FakeSMTP2Go", "Scripted", "main"]

_log = logging.getLogger(__name__)
_B62 = string.digits + string.ascii_letters
_VERBOSE = bool(os.environ.get("FAKE_SMTP2GO_VERBOSE"))
_MAX_BODY = 60 * 1024 * 1024  # SMTP2Go takes 50 MB of message; leave room for base64 and JSON
_JSON_ERROR = "An error occurred processing the json data you sent with the request."
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
Reply = tuple[int, dict | str, dict[str, str]]


def _email_id() -> str:
    """A fresh id shaped like SMTP2Go's ``1t9QkX-4Rb2Wm8YzK-Q7aP``: what callers store, never request_id."""
    n, s = uuid.uuid4().int, ""
    while len(s) < 18:
        n, r = divmod(n, 62)
        s += _B62[r]
    return f"{s[:6]}-{s[6:14]}-{s[14:]}"


def _rid() -> str:
    return str(uuid.uuid4())


def _iso(ts: float, micro: bool = False) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.isoformat() if micro else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_error(error: str, code: str) -> dict[str, Any]:
    return {"request_id": _rid(), "data": {"error": error, "error_code": f"E_ApiResponseCodes.{code}"}}


def _toplevel_error(fieldname: str, message: str) -> dict[str, Any]:
    return {"error": _JSON_ERROR, "error_code": "E_ApiResponseCodes.NON_VALIDATING_IN_PAYLOAD",
            "field_validation_errors": {"fieldname": fieldname, "message": message}}


def _rate_limited(reset: int) -> Reply:
    return 429, _api_error("Rate limit exceeded", "RATE_LIMIT_EXCEEDED"), {
        "X-Ratelimit-Reset": str(reset), "Retry-After": str(reset)}


def _success(n_rcpt: int, fast: bool) -> dict[str, Any]:
    if fast:
        return {"request_id": _rid(), "data": {"email_id": _email_id()}}
    return {"request_id": _rid(),
            "data": {"succeeded": n_rcpt, "failed": 0, "failures": [], "email_id": _email_id()}}


@dataclass
class Scripted:
    """One canned answer for the next ``/email/send`` call; the helpers copy the fixture shapes exactly."""

    status: int = 200
    body: dict | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    accept: bool | None = None

    @classmethod
    def error_400_data(cls) -> Scripted:
        return cls(400, _api_error("You do not have permission to access this API endpoint",
                                   "ENDPOINT_PERMISSION_DENIED"))

    @classmethod
    def error_400_toplevel(cls) -> Scripted:
        return cls(400, _toplevel_error("sender", "The field 'sender' was expecting a valid RFC-822 "
                                        "formatted email field but found 'noreply_example.com'."))

    @classmethod
    def failures_strings(cls, status: int = 200) -> Scripted:
        return cls(status, {"request_id": _rid(), "data": {
            "succeeded": 0, "failed": 1, "failures": ["The API Key passed was not in the correct format."]}})

    @classmethod
    def server_error(cls, status: int = 500) -> Scripted:
        return cls(status, _api_error("An internal error occurred, please try again later", "API_EXCEPTION"))

    @classmethod
    def rate_limited(cls, reset_seconds: int = 1) -> Scripted:
        _, body, headers = _rate_limited(reset_seconds)
        return cls(429, body, headers)

    @classmethod
    def fastaccept(cls) -> Scripted:
        return cls(200, _success(0, fast=True))

    @classmethod
    def slow(cls, seconds: float) -> Scripted:
        """A success that arrives late: the mail is accepted even though the client may have given up."""
        return cls(200, None, delay=seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSMTP2Go

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall start().
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        if _VERBOSE:  # clients dropping connections (read timeouts) are expected here, not worth a traceback
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid Nagle/delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        if _VERBOSE:
            super().log_message(format, *args)

    def _reply(self, status: int, body: dict | str, headers: dict[str, str]) -> None:
        if isinstance(body, str):
            kind = "html" if body.lstrip()[:1] == "<" else "plain"
            data, ctype = body.encode(), f"text/{kind}; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (read timeout); provoking that is the point of some answers
            self.close_connection = True

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # cannot find the end of this body, so the connection is unusable
            self._reply(413, _api_error("Body needs a Content-Length under 60 MB", "API_EXCEPTION"), {})
            return
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0].rstrip("/")
        path = path[3:] if path.startswith("/v3/") else path
        fake = self.server.fake
        routes = {"/email/send": fake._handle_send, "/activity/search": fake._handle_activity}
        try:
            if self.command == "POST" and path in routes:
                reply = routes[path](self.headers, body)
            else:
                reply = 404, _api_error(f"Unknown endpoint {self.command} {path}", "NOT_FOUND"), {}
        except Exception as exc:  # noqa: BLE001 - a test double must never take its server thread down
            reply = 500, _api_error(f"fake server error: {exc!r}", "API_EXCEPTION"), {}
        self._reply(*reply)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _dispatch


class FakeSMTP2Go:
    """SMTP2Go's v3 API on localhost, with failure injection, scripted answers and webhook delivery."""

    def __init__(self, *, api_key: str = "api-test-key", host: str = "127.0.0.1", port: int = 0,
                 latency: float = 0.0, error_rate: float = 0.0, rate_limit_rate: float = 0.0,
                 timeout_rate: float = 0.0, timeout_seconds: float = 60.0,
                 webhook_url: str | None = None, webhook_auth: tuple[str, str] | None = None,
                 webhook_format: str = "json", webhook_events: tuple[str, ...] = ("processed", "delivered"),
                 webhook_delay: float = 0.0, seed: int | None = None, activity_rate_per_minute: int = 60,
                 webhook_workers: int = 4, webhook_retries: int = 3, webhook_backoff: float = 0.1) -> None:
        if webhook_format not in ("json", "form"):
            raise ValueError("webhook_format must be 'json' or 'form'")
        self.api_key, self.host, self._port = api_key, host, port
        self.latency, self.error_rate, self.rate_limit_rate = latency, error_rate, rate_limit_rate
        self.timeout_rate, self.timeout_seconds = timeout_rate, timeout_seconds
        self.webhook_url, self.webhook_auth, self.webhook_format = webhook_url, webhook_auth, webhook_format
        self.webhook_events, self.webhook_delay = tuple(webhook_events), webhook_delay
        self.activity_rate_per_minute = activity_rate_per_minute
        self.webhook_workers, self.webhook_retries, self.webhook_backoff = (
            webhook_workers, webhook_retries, webhook_backoff)
        self.sends: list[dict] = []
        self.requests: list[dict] = []
        self.webhooks: list[dict] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._script: deque[Scripted] = deque()
        self._counts: dict[str, int] = {}
        self._activity_hits: deque[float] = deque()
        self._stopping = threading.Event()
        self._wq: deque[tuple[float, list[dict]] | None] = deque()
        self._wcond = threading.Condition()
        self._pending = 0
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> FakeSMTP2Go:
        """Bind (port 0 picks a free one) and serve from background threads."""
        self._stopping.clear()
        self._wq.clear()
        self._server = _Server((self.host, self._port), _Handler)
        self._server.fake = self
        self._port = self._server.server_address[1]
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                          name="fake-smtp2go", daemon=True)]
        self._threads += [threading.Thread(target=self._webhook_worker, name=f"fake-smtp2go-webhook-{i}",
                                           daemon=True) for i in range(max(1, self.webhook_workers))]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes handlers sleeping on delays and drops webhooks not posted yet."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._wcond:
            self._wq.clear()
            self._wq.extend([None] * len(self._threads))
            self._pending = 0
            self._wcond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> FakeSMTP2Go:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self._port}/v3"

    def script(self, *responses: Scripted) -> None:
        """Queue answers for the next valid ``/email/send`` calls; they win over random injection."""
        with self._lock:
            self._script.extend(responses)

    def set_failure(self, *, error_rate: float | None = None, rate_limit_rate: float | None = None,
                    timeout_rate: float | None = None, latency: float | None = None) -> None:
        """Change the injected failure mix while traffic flows (e.g. an outage in the middle of a run)."""
        changes = {"error_rate": error_rate, "rate_limit_rate": rate_limit_rate, "timeout_rate": timeout_rate,
                   "latency": latency}
        with self._lock:
            for name, value in changes.items():
                if value is not None:
                    setattr(self, name, value)

    def reset(self) -> None:
        with self._lock:
            for c in (self.sends, self.requests, self.webhooks, self._script, self._counts):
                c.clear()
            self._activity_hits.clear()

    def count_for(self, tracking_id: str) -> int:
        with self._lock:
            return self._counts.get(tracking_id, 0)

    def duplicates(self) -> dict[str, int]:
        """Tracking ids accepted more than once: each is a recipient who got the same mail twice."""
        with self._lock:
            return {k: v for k, v in self._counts.items() if v > 1}

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

    def _key_ok(self, headers: Any, payload: dict) -> bool:
        return (headers.get("X-Smtp2go-Api-Key") or payload.get("api_key")) == self.api_key

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


def _recipients(p: dict) -> list[str]:
    return [parseaddr(str(a))[1] or str(a) for k in ("to", "cc", "bcc") for a in (p.get(k) or [])]


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


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until Ctrl-C / SIGTERM (``mailworker fake-smtp2go``, local dev)."""
    ap = argparse.ArgumentParser(prog="fake-smtp2go", description="A local fake of SMTP2Go's v3 API.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument("--api-key", default="api-test-key")
    for opt in ("latency", "error-rate", "rate-limit-rate", "timeout-rate", "webhook-delay"):
        ap.add_argument(f"--{opt}", type=float, default=0.0)
    ap.add_argument("--timeout-seconds", type=float, default=60.0)
    ap.add_argument("--webhook-url")
    auth = ap.add_mutually_exclusive_group()
    auth.add_argument("--webhook-bearer", metavar="TOKEN")
    auth.add_argument("--webhook-basic", metavar="USER:PASS")
    ap.add_argument("--webhook-format", choices=("json", "form"), default="json")
    ap.add_argument("--events", default="processed,delivered", help="comma-separated webhook events to emit")
    ap.add_argument("--activity-rate", type=int, default=60, help="activity/search requests per minute")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    webhook_auth = (("bearer", a.webhook_bearer) if a.webhook_bearer
                    else ("basic", a.webhook_basic) if a.webhook_basic else None)
    fake = FakeSMTP2Go(
        api_key=a.api_key, host=a.host, port=a.port, latency=a.latency, error_rate=a.error_rate,
        rate_limit_rate=a.rate_limit_rate, timeout_rate=a.timeout_rate, timeout_seconds=a.timeout_seconds,
        webhook_url=a.webhook_url, webhook_auth=webhook_auth, webhook_format=a.webhook_format,
        webhook_events=tuple(e.strip() for e in a.events.split(",") if e.strip()),
        webhook_delay=a.webhook_delay, seed=a.seed, activity_rate_per_minute=a.activity_rate)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    fake.start()
    print(f"fake SMTP2Go API listening on {fake.url} (POST {fake.url}/email/send)", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
