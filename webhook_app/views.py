"""The webhook blueprint: authenticate, parse, enqueue, answer.

Order matters and is part of the contract: size (before reading more than the cap), then credentials, then the
content type and body. A rejected request is never parsed or published. Every answer is a short JSON object;
SMTP2Go retries anything that is not 2xx for 48 hours, so 503 is reserved for "try again later" (the broker)
and everything the sender cannot fix by retrying is a 4xx.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from webhook_app.auth import SecretStore, _prepare, authenticate, check_authorization, signature_header
from webhook_app.parsing import (
    BodyTooLarge,
    MalformedBody,
    UnsupportedContentType,
    parse_body,
    split_events,
)

log = logging.getLogger(__name__)

bp = Blueprint("smtp2go_webhooks", __name__)

EXTENSION = "mailworker_webhooks"
_READ_CHUNK = 64 * 1024

Publisher = Callable[..., None]


@dataclass
class WebhookState:
    """What the view needs, built once by ``create_app`` (nothing here touches the database)."""

    secrets: SecretStore
    publisher: Publisher
    allow_unauthenticated: bool
    max_body_bytes: int
    max_batch_events: int

    @property
    def open_door(self) -> bool:
        """Unauthenticated webhooks are accepted only when explicitly allowed AND no secret exists."""
        return self.allow_unauthenticated and not self.secrets.configured


class _TooLarge(Exception):
    pass


def _state() -> WebhookState:
    state: WebhookState = current_app.extensions[EXTENSION]
    return state


def _read_body(cap: int, length: int | None) -> bytes:
    """The body, never reading more than ``cap + 1`` bytes (enough to know a chunked body is too large).

    With a Content-Length (already checked against ``cap``) exactly that many bytes are read and the loop stops
    there: no extra read just to see the end of the stream, and no 64 KiB buffer for a 400-byte event.
    """
    limit = cap + 1 if length is None else length
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    try:
        while total < limit:
            chunk = stream.read(min(_READ_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except RequestEntityTooLarge as err:  # werkzeug's own MAX_CONTENT_LENGTH guard on streamed bodies
        raise _TooLarge from err
    if total > cap:
        raise _TooLarge
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def json_response(payload: dict[str, Any], status: int) -> Response:
    """A compact JSON answer.

    ``jsonify`` goes through the app's JSON provider, whose options (``sort_keys``, a ``default`` hook) make
    ``json.dumps`` build a new encoder on every call; the payloads here are tiny dicts of str and int, so the
    stdlib's shared default encoder gives the same JSON for a fraction of the cost (this runs per request).
    """
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def _answer(status: int, payload: dict[str, Any], *, auth: str = "-", received: int = 0, queued: int = 0,
            ignored: int = 0, size: int | None = None) -> Response:
    """Build the JSON answer and log this request (counts only: no body, no secret).

    Accepted webhooks log at DEBUG: at INFO this line (record, formatting, a locked write to stderr) was about
    7% of the view's CPU in the py-spy profile, for a line per request that says only "200, 1 queued";
    operators get those counts from Flower, the events queue and the CLI. Every reject (4xx, was INFO) and
    every broker failure (5xx) logs at WARNING, so a misconfigured sender, a wrong secret or a broken broker
    shows at the default level. ``LOG_LEVEL=DEBUG`` brings the line back for accepted webhooks; nothing is
    computed for it while DEBUG is off.
    """
    level = logging.DEBUG if status < 400 else logging.WARNING
    if log.isEnabledFor(level):
        length = size if size is not None else request.content_length
        log.log(level, "smtp2go webhook status=%d received=%d queued=%d ignored=%d auth=%s type=%s bytes=%s",
                status, received, queued, ignored, auth, request.mimetype or "-",
                "-" if length is None else length)
    response = json_response(payload, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness only: it must stay up when the broker or database is down (the webhook answers 503 then)."""
    return json_response({"status": "ok"}, 200)


@bp.post("/api/webhooks/<provider>/events")
def receive_events(provider: str) -> Response:
    """One provider's event delivery: its authentication and event shape come from the provider's webhook
    handler (SMTP2Go's secrets are refreshed from the module row; other providers' come from their settings)."""
    state = _state()
    state.secrets.start()  # no-op unless this process (e.g. a forked gunicorn worker) has no refresher yet
    handler = None
    if provider != "smtp2go":
        from worker.infrastructure.config import load_receiver_settings
        from worker.providers import webhook_handler

        handler = webhook_handler(provider)
        if handler is None:
            return _answer(404, {"error": "unknown provider"})

    cap = state.max_body_bytes
    length = request.content_length
    if length is not None and length > cap:
        return _answer(413, {"error": "payload too large"})
    # Bearer and Basic prove themselves without the body: a request that offers neither a valid one nor a
    # signature (which does need the body) is refused before a byte of its body is read, so a flood of
    # unauthenticated posts costs a header parse each.
    secrets = state.secrets.current() if handler is None else _prepare(handler.secrets(load_receiver_settings()))
    authorization = request.headers.get("Authorization")
    signature = signature_header(request.headers)
    method = check_authorization(authorization, secrets) if authorization and secrets else None
    if method is None and signature is None and not state.open_door:
        return _answer(401, {"error": "unauthorized"})
    try:
        body = _read_body(cap, length)
    except _TooLarge:
        return _answer(413, {"error": "payload too large"})

    if method is None:
        method = authenticate(None, signature, body, secrets)
    if method is None:
        if not state.open_door:
            return _answer(401, {"error": "unauthorized"}, size=len(body))
        method = "none"

    try:
        items = parse_body(request.mimetype, request.mimetype_params, body, max_bytes=cap)
    except BodyTooLarge:
        return _answer(413, {"error": "payload too large"}, auth=method, size=len(body))
    except UnsupportedContentType:
        return _answer(415, {"error": "unsupported content type"}, auth=method, size=len(body))
    except MalformedBody:
        return _answer(400, {"error": "malformed body"}, auth=method, size=len(body))

    events, ignored = split_events(items, None if handler is None else handler.is_event)
    if len(events) > state.max_batch_events:
        return _answer(413, {"error": "too many events"}, auth=method, received=len(items), size=len(body))

    queued = 0
    try:
        for event in events:
            if handler is None:
                state.publisher(event)
            else:
                state.publisher(event, provider=provider)
            queued += 1
    except Exception as err:  # noqa: BLE001 - any broker failure means "retry later" to SMTP2Go
        log.warning("publishing webhook events failed after %d of %d: %s", queued, len(events),
                    type(err).__name__)
        return _answer(503, {"error": "broker unavailable"}, auth=method, received=len(items),
                       queued=queued, ignored=ignored, size=len(body))
    return _answer(200, {"received": len(items), "queued": queued, "ignored": ignored}, auth=method,
                   received=len(items), queued=queued, ignored=ignored, size=len(body))
