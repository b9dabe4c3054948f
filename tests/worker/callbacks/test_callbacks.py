"""Status callbacks: the outbox is written with each change, a real HTTP receiver on loopback checks
every request with its own Standard Webhooks verifier, retries, 410, dead letters, replay, the Python hook.
MariaDB and SQLite."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import wait_until
from tests.worker.callbacks import hooks
from worker import cancel_email, enqueue_email
from worker.callbacks import dispatcher
from worker.cli import main
from worker.infrastructure.config import reset_settings
from worker.infrastructure.crypto import generate_key
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import CallbackAttempt, CallbackEndpoint, StatusEvent
from worker.sending.delivery import OutcomeKind, deliver
from worker.tracking.events import process_event

# ------------------------------------------------------------------ an independent Standard Webhooks verifier


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Written from the spec (standardwebhooks.com), not with our signer: the signed content is
    ``{webhook-id}.{webhook-timestamp}.{body}``, the key the base64 after ``whsec_``, the header a space-separated
    list of ``v1,<base64 HMAC-SHA256>``; any one matching is enough; the timestamp within the tolerance."""
    msg_id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    if abs(time.time() - int(ts)) > tolerance:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    for sig in sigs.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


class Receiver:
    """A real HTTP server on loopback: answers each request with the next scripted status (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.script.pop(0) if receiver.script else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mail"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


@pytest.fixture
def callbacks_env(base_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    base_env.setenv("CALLBACK_RETRY_SCHEDULE", "0.1,0.1")  # three attempts in all
    base_env.delenv("MAILWORKER_STATUS_HOOK", raising=False)
    base_env.setenv("CALLBACK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")  # the receivers here are on loopback
    reset_settings()
    return base_env


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _add(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["callbacks", "add", url, *args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["secret"].startswith("whsec_") and len(base64.b64decode(data["secret"][6:])) == 32
    return data["id"], data["secret"]


def _run_until_idle(rounds: int = 30) -> None:
    """Run the dispatcher inline (what the periodic task and the callbacks queue do) until nothing is due."""
    for _ in range(rounds):
        dispatcher.dispatch(publish=False)
        time.sleep(0.15)


def _sent(tid: str) -> None:
    assert deliver(tid, owner="w:1").kind == OutcomeKind.SENT


def test_signed_events_in_order_with_their_sequence(fake_api: Any, callbacks_env: Any, database: str,
                                                      receiver: Receiver) -> None:
    endpoint_id, secret = _add(receiver.url)
    tid = enqueue_email("Ann <ann@example.com>", "s", text_body="b", reference="ticket_reply:42")
    _sent(tid)
    with session_scope() as session:
        email_id = session.scalar(select(StatusEvent.smtp2go_message_id).where(StatusEvent.message_id == tid))
    assert email_id
    process_event({"event": "delivered", "id": "ev-d", "email_id": email_id, "rcpt": "ann@example.com",
                   "time": "2026-11-20T11:00:00Z"})
    process_event({"event": "delivered", "id": "ev-d", "email_id": email_id, "rcpt": "ann@example.com",
                   "time": "2026-11-20T11:00:00Z"})  # SMTP2Go's retry: nothing new
    process_event({"event": "bounce", "id": "ev-b", "email_id": email_id, "rcpt": "ann@example.com",
                   "bounce": "hard", "message": "550 5.1.1 no such user", "time": "2026-11-20T11:05:00Z"})
    _run_until_idle(3)
    bodies = receiver.bodies()
    assert [b["type"] for b in bodies] == ["email.sent", "email.delivered", "email.bounced"]
    for headers, body in receiver.requests:
        assert verify(secret, headers, body)
        assert headers["webhook-id"] == json.loads(body)["data"]["event_id"]
    sent, delivered, bounced = (b["data"] for b in bodies)
    assert [d["sequence"] for d in (sent, delivered, bounced)] == [1, 2, 3]
    assert sent == {**sent, "tracking_id": tid, "reference": "ticket_reply:42", "status": "sent", "recipient": None,
                    "smtp2go_message_id": email_id, "transport": "smtp2go"}
    assert delivered["recipient"] == "ann@example.com" and delivered["occurred_at"].startswith("2026-11-20T11:00:00")
    assert bounced["bounce_type"] == "hard" and "no such user" in bounced["detail"]
    assert bounced["status"] == "bounced"
    assert not verify("whsec_" + base64.b64encode(b"k" * 32).decode(), *receiver.requests[0])
    assert endpoint_id


def test_retries_after_500_then_delivered_and_every_attempt_stored(fake_api: Any, callbacks_env: Any,
                                                                   database: str, receiver: Receiver) -> None:
    _add(receiver.url, "--events", "email.sent")
    receiver.script = [500, 503]
    tid = enqueue_email("a@example.com", "s", text_body="b")
    _sent(tid)
    _run_until_idle(6)
    assert len(receiver.requests) == 3
    ids = {h["webhook-id"] for h, _ in receiver.requests}
    assert len(ids) == 1  # stable across retries
    with session_scope() as session:
        attempts = session.scalars(select(CallbackAttempt).order_by(CallbackAttempt.id)).all()
        assert [a.status_code for a in attempts] == [500, 503, 200]
        assert attempts[0].next_attempt_at is not None and attempts[-1].next_attempt_at is None
        assert all(a.duration_ms >= 0 for a in attempts)


def test_410_disables_the_endpoint(fake_api: Any, callbacks_env: Any, database: str, receiver: Receiver) -> None:
    endpoint_id, _ = _add(receiver.url)
    receiver.script = [410]
    first = enqueue_email("a@example.com", "s", text_body="b")
    _sent(first)
    _run_until_idle(2)
    with session_scope() as session:
        endpoint = session.get(CallbackEndpoint, endpoint_id)
        assert endpoint is not None and not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
    second = enqueue_email("a@example.com", "s", text_body="b")
    _sent(second)
    _run_until_idle(2)
    assert len(receiver.requests) == 1  # nothing more to a disabled endpoint
    listing = CliRunner().invoke(main, ["callbacks", "list"])
    assert "DISABLED" in listing.output and "dead=1" in listing.output


def test_dead_letters_then_replay_after_the_outage(fake_api: Any, callbacks_env: Any, database: str,
                                                   receiver: Receiver) -> None:
    endpoint_id, secret = _add(receiver.url)
    receiver.script = [500] * 3  # the receiver is down for all three attempts
    tid = enqueue_email("a@example.com", "s", text_body="b")
    _sent(tid)
    _run_until_idle(6)
    assert len(receiver.requests) == 3
    dead = CliRunner().invoke(main, ["callbacks", "list", "--dead", "--json"])
    letters = json.loads(dead.output)
    assert len(letters) == 1 and letters[0]["type"] == "email.sent"
    missed_id = letters[0]["event_id"]
    # back up: replay by event id, by endpoint, by time range -- the same webhook-id every time
    for args in (["--event", missed_id], ["--endpoint", str(endpoint_id)], ["--since", "1h"]):
        result = CliRunner().invoke(main, ["callbacks", "replay", *args])
        assert result.exit_code == 0 and "1 delivery due now" in result.output, result.output
        _run_until_idle(1)
    replayed = receiver.requests[3:]
    assert len(replayed) == 3 and {h["webhook-id"] for h, _ in replayed} == {missed_id}
    assert all(verify(secret, h, b) for h, b in replayed)
    usage = CliRunner().invoke(main, ["callbacks", "replay"])
    assert usage.exit_code == 2


def test_secret_rotation_signs_with_both(fake_api: Any, callbacks_env: Any, database: str,
                                         receiver: Receiver) -> None:
    endpoint_id, old = _add(receiver.url)
    rotated = CliRunner().invoke(main, ["callbacks", "rotate", str(endpoint_id)])
    new = rotated.output.split()[1]
    _sent(enqueue_email("a@example.com", "s", text_body="b"))
    _run_until_idle(1)
    headers, body = receiver.requests[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(old, headers, body) and verify(new, headers, body)
    with session_scope() as session:
        row = session.get(CallbackEndpoint, endpoint_id)
        assert row is not None and new not in row.secret_encrypted and "whsec_" not in row.secret_encrypted


def test_cancelled_expired_failed_suppressed_events(fake_api: Any, callbacks_env: Any, database: str,
                                                    receiver: Receiver) -> None:
    _add(receiver.url)
    cancelled = enqueue_email("a@example.com", "s", text_body="b", reference="r-1")
    assert cancel_email(cancelled)
    expired = enqueue_email("a@example.com", "s", text_body="b", expires_at=datetime.now(UTC) + timedelta(seconds=0.2))
    time.sleep(0.3)
    deliver(expired, owner="w:1")
    _run_until_idle(1)
    got = {(b["type"], b["data"]["tracking_id"]) for b in receiver.bodies()}
    assert got == {("email.cancelled", cancelled), ("email.expired", expired)}
    assert all(b["data"]["sequence"] == 1 for b in receiver.bodies())


def test_recipients_the_relay_refuses_get_their_own_rejected_event(smtp_sink: Any, callbacks_env: Any,
                                                                   database: str, receiver: Receiver) -> None:
    """A recipient refused for good during the send (SMTP 5xx) is told as ``email.rejected`` for that address,
    as a webhook ``reject`` would be, before the message's own ``email.sent`` -- or ``email.failed`` when every
    recipient was refused."""
    _add(receiver.url)
    smtp_sink.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    smtp_sink.refuse["gone@example.com"] = "550 5.1.1 Gone"
    partial = enqueue_email(["ok@example.com", "nobody@example.com"], "s", text_body="b")
    assert deliver(partial, owner="w:1").kind == OutcomeKind.SENT
    refused = enqueue_email(["gone@example.com"], "s", text_body="b")
    assert deliver(refused, owner="w:1").kind == OutcomeKind.FAILED
    _run_until_idle(1)
    got = sorted((b["data"]["tracking_id"] == partial, b["data"]["sequence"], b["type"], b["data"]["recipient"],
                  b["data"].get("recipient_status")) for b in receiver.bodies())
    assert got == [(False, 1, "email.rejected", "gone@example.com", "rejected"), (False, 2, "email.failed", None, None),
                   (True, 1, "email.rejected", "nobody@example.com", "rejected"), (True, 2, "email.sent", None, None)]
    details = {b["data"]["recipient"]: b["data"]["detail"] for b in receiver.bodies() if b["type"] == "email.rejected"}
    assert "550 5.1.1 No such user" in details["nobody@example.com"] and "Gone" in details["gone@example.com"]


def test_the_hook_is_retried_and_never_blocks_a_send(fake_api: Any, callbacks_env: Any, database: str) -> None:
    callbacks_env.setenv("MAILWORKER_STATUS_HOOK", "tests.worker.callbacks.hooks:record")
    hooks.calls.clear()
    hooks.failed_once.clear()
    tid = enqueue_email("a@example.com", "s", text_body="b", reference="ticket_reply:7")
    _sent(tid)  # the send is done before any hook runs
    _run_until_idle(4)
    assert [c["type"] for c in hooks.calls] == ["email.sent"]
    assert hooks.calls[0]["data"]["reference"] == "ticket_reply:7"
    with session_scope() as session:
        attempts = session.scalars(select(CallbackAttempt).order_by(CallbackAttempt.id)).all()
        assert [a.error is None for a in attempts] == [False, True]
        assert "RuntimeError" in (attempts[0].error or "")


def test_through_the_real_worker_and_the_callbacks_queue(fake_api: Any, callbacks_env: Any, celery_worker: Any,
                                                         receiver: Receiver) -> None:
    _, secret = _add(receiver.url)
    tid = enqueue_email("a@example.com", "s", text_body="b")
    wait_until(lambda: fake_api.count_for(tid) == 1, message="sent")

    def delivered() -> bool:
        dispatcher.dispatch()  # what beat's mailworker.dispatch_callbacks runs: publishes the delivery task
        time.sleep(0.2)
        return bool(receiver.requests)

    wait_until(delivered, timeout=20, message="callback delivered by the worker")
    assert verify(secret, *receiver.requests[0]) and receiver.bodies()[0]["type"] == "email.sent"


def test_concurrent_dispatchers_deliver_each_event_once(fake_api: Any, callbacks_env: Any, database: str,
                                                        receiver: Receiver) -> None:
    """Two dispatcher passes at the same moment (a slow periodic run overlapping the next, or two beat hosts by
    mistake) make each delivery once and send each event to the endpoint once."""
    from collections import Counter

    from tests.threads import run_threads

    _add(receiver.url)
    tids = [enqueue_email(f"r{i}@example.com", "s", text_body="b") for i in range(12)]
    for tid in tids:
        _sent(tid)

    def dispatch_until_idle(_: int) -> None:
        for _round in range(6):
            dispatcher.dispatch(publish=False)
            time.sleep(0.05)

    run_threads(4, dispatch_until_idle)
    _run_until_idle(2)
    sent = Counter(b["data"]["event_id"] for b in receiver.bodies())
    assert len(sent) == len(tids) and set(sent.values()) == {1}, sent
    assert {b["data"]["tracking_id"] for b in receiver.bodies()} == set(tids)
