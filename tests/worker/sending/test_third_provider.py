"""The provider seam: a third provider, defined in this file only (its transport speaks HTTP to a tiny local
server, its reconciler asks that server), is registered and named in ``MAIL_PROVIDERS``; the core sends through
it, falls back to it and reconciles an unknown send through it, with no change to core code."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from worker import enqueue_email, get_email_status, providers
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.config import reset_settings
from worker.operations.reconcile import reconcile
from worker.providers.base import (
    Accepted,
    NormalizedEvent,
    NotSent,
    Outcome,
    OutgoingEmail,
    ParkedSend,
    ProviderKind,
    Unknown,
    Verdict,
)
from worker.sending.delivery import deliver


@dataclass
class PigeonPost:
    """The provider's service: takes a message, answers with an id (or too late, when ``slow``)."""

    accepted: dict[str, str] = field(default_factory=dict)  # tracking id -> our id
    slow: float = 0.0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _serve(post: PigeonPost) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            post.accepted[message["tracking_id"]] = pigeon_id = f"pg-{uuid.uuid4().hex[:8]}"
            time.sleep(post.slow)
            self._answer({"id": pigeon_id})

        def do_GET(self) -> None:  # noqa: N802
            tracking_id = self.path.rsplit("/", 1)[-1]
            self._answer({"id": post.accepted.get(tracking_id)})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass(frozen=True)
class PigeonTransport:
    url: str

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome:
        body = {"tracking_id": email.tracking_id, "to": email.to, "subject": email.subject}
        if departing is not None:
            departing()
        try:
            return Accepted(requests.post(self.url, json=body, timeout=0.5).json()["id"])
        except requests.ReadTimeout:
            return Unknown("pigeon: no answer in time")
        except requests.ConnectionError as err:
            return NotSent(retryable=True, reason=f"pigeon: {type(err).__name__}")


@dataclass(frozen=True)
class PigeonReconciler:
    url: str

    def settle(self, parked: ParkedSend) -> Verdict:
        found = requests.get(f"{self.url}/{parked.tracking_id}", timeout=2).json()["id"]
        if found:
            return Verdict("accepted", "the pigeon post has it", provider_message_id=found)
        return Verdict("not_sent", "the pigeon post never saw it")

    def fill_missing_events(self, record: Callable[[NormalizedEvent], bool]) -> int:
        return 0


@pytest.fixture
def pigeon(base_env: pytest.MonkeyPatch) -> Iterator[PigeonPost]:
    post = PigeonPost()
    post.server = _serve(post)
    providers.register(ProviderKind(
        kind="pigeon",
        transport=lambda name, variant, conn, settings: PigeonTransport(post.url),
        reconciler=lambda name, variant, conn, settings, **options: PigeonReconciler(post.url)))
    yield post
    providers.unregister("pigeon")
    post.server.shutdown()


def _chain(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("MAIL_PROVIDERS", value)
    reset_settings()


def test_a_registered_provider_sends_and_its_attempt_is_on_record(db: str, base_env: pytest.MonkeyPatch,
                                                                   pigeon: PigeonPost) -> None:
    _chain(base_env, "pigeon")
    tid = enqueue_email("a@example.com", "by pigeon", text_body="x")
    assert deliver(tid, owner="w").kind == "sent"
    status = get_email_status(tid)
    assert status is not None and status["status"] == "sent" and status["provider"] == "pigeon"
    assert status["transport"] == "pigeon" and status["provider_message_id"] == pigeon.accepted[tid]
    assert [(a["provider"], a["outcome"]) for a in status["attempts"]] == [("pigeon", "accepted")]


def test_the_chain_falls_back_to_the_registered_provider(db: str, fake_api: Any, base_env: pytest.MonkeyPatch,
                                                         pigeon: PigeonPost) -> None:
    _chain(base_env, "smtp2go,pigeon")
    fake_api.script(Scripted.error_400_data())  # SMTP2Go refuses this message for good
    tid = enqueue_email("b@example.com", "fallback", text_body="x")
    assert deliver(tid, owner="w").kind == "sent"
    status = get_email_status(tid)
    assert status is not None and status["provider"] == "pigeon" and tid in pigeon.accepted
    assert [(a["provider"], a["outcome"]) for a in status["attempts"]] == [("smtp2go", "refused"),
                                                                          ("pigeon", "accepted")]
    assert "smtp2go permanent error" in status["fallback_reason"]


def test_an_unknown_send_is_reconciled_through_the_provider_that_took_it(db: str, fake_api: Any,
                                                                         base_env: pytest.MonkeyPatch,
                                                                         pigeon: PigeonPost) -> None:
    _chain(base_env, "pigeon,smtp2go")
    pigeon.slow = 1.5  # the post takes the message and answers after the transport gave up
    tid = enqueue_email("c@example.com", "late answer", text_body="x")
    assert deliver(tid, owner="w").kind == "ambiguous"
    parked = get_email_status(tid)
    assert parked is not None and parked["status"] == "parked"
    assert [(a["provider"], a["outcome"]) for a in parked["attempts"]] == [("pigeon", "unknown")]
    assert deliver(tid, owner="w2").kind == "skipped"  # never resent, by SMTP2Go or anyone, while parked

    report = reconcile(settle=0)

    assert report.resolved_sent == 1
    status = get_email_status(tid)
    assert status is not None and status["status"] == "sent" and status["provider"] == "pigeon"
    attempt = status["attempts"][0]
    assert attempt["outcome"] == "accepted" and attempt["provider_message_id"] == pigeon.accepted[tid]
    assert attempt["error"].startswith("settled by reconciliation: ")
    assert fake_api.count_for(tid) == 0  # nothing else was tried
