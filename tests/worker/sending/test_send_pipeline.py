"""The send path end to end: enqueue_email -> real Celery worker on Redis -> fake SMTP2Go / loopback SMTP."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import wait_until
from worker import enqueue_email, get_email_status
from worker.devtools.fake_smtp2go import Scripted

FINAL = {"sent", "failed", "suppressed"}


def _final(tracking_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = get_email_status(tracking_id)
        return status if status and status["status"] in FINAL else None

    return wait_until(done, timeout=timeout, message=f"{tracking_id} to reach a final state")


def test_happy_path_records_email_id_and_sends_once(fake_api: Any, celery_worker: Any) -> None:
    tid = enqueue_email("Alice <alice@example.com>", "Your ticket #1042", text_body="hello",
                        cc=["carol@example.com"], reference="ticket_reply:42")
    status = _final(tid)
    assert status["status"] == "sent"
    assert status["transport"] == "smtp2go"
    assert fake_api.count_for(tid) == 1
    send = fake_api.sends[0]
    assert status["smtp2go_message_id"] == send["email_id"]
    assert status["smtp2go_message_id"] != fake_api.requests[0].get("request_id")
    assert send["payload"]["to"] == ["Alice <alice@example.com>"]
    assert send["payload"]["cc"] == ["carol@example.com"]
    assert {"header": "X-Mailworker-Id", "value": tid} in send["payload"]["custom_headers"]
    assert status["reference"] == "ticket_reply:42"
    assert [(a["provider"], a["outcome"]) for a in status["attempts"]] == [("smtp2go", "accepted")]
    assert status["attempts"][0]["provider_message_id"] == status["provider_message_id"] == status["smtp2go_message_id"]
    assert status["provider"] == "smtp2go" and status["attempts"][0]["latency_ms"] is not None
    assert [r["status"] for r in status["recipients"]] == ["sent", "sent"]
    assert status["sent_at"] is not None


def test_server_errors_then_success(fake_api: Any, celery_worker: Any) -> None:
    fake_api.script(Scripted.server_error(500), Scripted.server_error(503))
    tid = enqueue_email("bob@example.net", "retry me", text_body="hi")
    status = _final(tid)
    assert status["status"] == "sent"
    assert status["transport"] == "smtp2go"
    assert [a["outcome"] for a in status["attempts"]] == ["not_sent", "not_sent", "accepted"]
    assert fake_api.count_for(tid) == 1
    assert len(fake_api.requests) == 3


def test_rate_limit_honours_reset_header(fake_api: Any, celery_worker: Any) -> None:
    fake_api.script(Scripted.rate_limited(reset_seconds=1))
    tid = enqueue_email("bob@example.net", "slow down", text_body="hi")
    status = _final(tid)
    assert status["status"] == "sent"
    times = [r["time"] for r in fake_api.requests]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9, "the retry must wait for X-Ratelimit-Reset"
    assert fake_api.count_for(tid) == 1


def test_permanent_api_error_falls_back_to_smtp(fake_api: Any, smtp_sink: Any, celery_worker: Any) -> None:
    fake_api.script(Scripted.error_400_data())
    tid = enqueue_email("dave@example.com", "fallback", text_body="via relay")
    status = _final(tid)
    assert status["status"] == "sent"
    assert status["transport"] == "smtp"
    assert "ENDPOINT_PERMISSION_DENIED" in status["fallback_reason"]
    assert smtp_sink.count_for(tid) == 1
    assert fake_api.count_for(tid) == 0
    _, rcpts, mime = smtp_sink.messages[0]
    assert rcpts == ["dave@example.com"]
    assert mime["Message-ID"] == status["message_id_header"]
    assert mime.get_content().strip() == "via relay"


def test_api_down_retries_then_falls_back(base_env: Any, smtp_sink: Any, celery_worker: Any) -> None:
    from tests.conftest import free_port
    from worker.infrastructure.config import reset_settings

    base_env.setenv("SMTP2GO_API_KEY", "api-key-for-a-dead-endpoint")
    base_env.setenv("SMTP2GO_API_URL", f"http://127.0.0.1:{free_port()}/v3")
    base_env.setenv("SEND_MAX_RETRIES", "2")
    reset_settings()
    tid = enqueue_email("erin@example.com", "api down", text_body="x")
    status = _final(tid)
    assert status["status"] == "sent"
    assert status["transport"] == "smtp"
    assert [a["provider"] for a in status["attempts"]] == ["smtp2go"] * 3 + ["smtp"]  # first try + SEND_MAX_RETRIES
    assert "retries used up" in status["fallback_reason"]
    assert smtp_sink.count_for(tid) == 1


def test_smtp_5xx_after_api_failure_is_failed(fake_api: Any, smtp_sink: Any, celery_worker: Any) -> None:
    fake_api.script(Scripted.error_400_toplevel())
    smtp_sink.data_reply = "554 5.7.1 Message rejected as spam"
    tid = enqueue_email("frank@example.com", "doomed", text_body="x")
    status = _final(tid)
    assert status["status"] == "failed"
    assert "554" in status["last_error"]
    assert status["failed_at"] is not None
    assert [r["status"] for r in status["recipients"]] == ["failed"]


def test_smtp_only_when_no_api_configured(smtp_sink: Any, celery_worker: Any) -> None:
    tid = enqueue_email(["a@example.com", "b@example.com"], "relay only", html_body="<p>hi</p>",
                        bcc="hidden@example.com", attachments=[("a.txt", b"abc", "text/plain")])
    status = _final(tid)
    assert status["status"] == "sent"
    assert status["transport"] == "smtp"
    _, rcpts, mime = smtp_sink.messages[0]
    assert sorted(rcpts) == ["a@example.com", "b@example.com", "hidden@example.com"]
    assert "hidden@example.com" not in str(mime)
    assert [p.get_filename() for p in mime.iter_attachments()] == ["a.txt"]


def test_relay_refusing_some_recipients_records_them(smtp_sink: Any, celery_worker: Any) -> None:
    smtp_sink.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    tid = enqueue_email(["ok@example.com", "nobody@example.com"], "partial", text_body="x")
    status = _final(tid)
    assert status["status"] == "sent"
    by_addr = {r["address"]: r for r in status["recipients"]}
    assert by_addr["ok@example.com"]["status"] == "sent"
    assert by_addr["nobody@example.com"]["status"] == "rejected"
    assert "550" in by_addr["nobody@example.com"]["error"]


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Any:
    return request.getfixturevalue(request.param)


def test_relay_deferring_one_recipient_retries_only_that_recipient(smtp_sink: Any, database: str) -> None:
    """A 451 for one recipient (greylisting, mailbox full) while the others are accepted: the others are sent
    once, the deferred one stays queued and is sent alone on the next attempt."""
    from worker.sending.delivery import OutcomeKind, deliver

    smtp_sink.refuse["grey@example.com"] = "451 4.7.1 greylisted, try again later"
    tid = enqueue_email(["ok@example.com", "grey@example.com"], "greylisted", text_body="x")
    assert deliver(tid, owner="w").kind == OutcomeKind.RETRY
    status = get_email_status(tid)
    assert status is not None and status["status"] == "retrying" and "451" in status["last_error"]
    by_addr = {r["address"]: r["status"] for r in status["recipients"]}
    assert by_addr == {"ok@example.com": "sent", "grey@example.com": "queued"}
    assert [rcpts for _, rcpts, _ in smtp_sink.messages] == [["ok@example.com"]]

    del smtp_sink.refuse["grey@example.com"]  # the greylisting period is over
    wait_until(lambda: deliver(tid, owner="w").kind != OutcomeKind.SKIPPED, timeout=10, interval=0.1,
               message="the retry to be due")
    status = get_email_status(tid)
    assert status is not None and status["status"] == "sent" and status["transport"] == "smtp"
    assert {r["status"] for r in status["recipients"]} == {"sent"}
    assert [rcpts for _, rcpts, _ in smtp_sink.messages] == [["ok@example.com"], ["grey@example.com"]]


def test_relay_that_took_the_data_but_never_answered_is_parked_not_resent(smtp_sink: Any, database: str,
                                                                          base_env: Any) -> None:
    """The relay received the DATA but its 250 never arrived: parked, never resent at once (item 5); after
    SMTP_UNKNOWN_RESEND_AFTER reconciliation releases it (at least once, documented)."""
    from worker.infrastructure.config import reset_settings
    from worker.operations.reconcile import reconcile
    from worker.sending.delivery import OutcomeKind, deliver

    base_env.setenv("SMTP_TIMEOUT", "1")
    base_env.setenv("SMTP_UNKNOWN_RESEND_AFTER", "2")
    reset_settings()
    smtp_sink.data_delay = 3.0
    tid = enqueue_email("slow@example.com", "no answer", text_body="x")
    assert deliver(tid, owner="w").kind == OutcomeKind.PARKED
    assert deliver(tid, owner="w").kind == OutcomeKind.SKIPPED  # parked: not due for the send path
    wait_until(lambda: smtp_sink.count_for(tid) == 1, timeout=10, message="the relay to keep the message")
    status = get_email_status(tid)
    assert status is not None and status["status"] == "parked" and status["ambiguous"] is True
    assert status["attempts"][-1]["outcome"] == "unknown" and status["attempts"][-1]["provider"] == "smtp"
    assert reconcile(settle=0).released == 0  # too early to resend
    assert smtp_sink.count_for(tid) == 1

    smtp_sink.data_delay = 0.0
    time.sleep(2.1)
    assert reconcile(settle=0).released == 1
    assert deliver(tid, owner="w").kind == OutcomeKind.SENT
    assert smtp_sink.count_for(tid) == 2  # at least once: SMTP cannot be asked whether it had it


def test_suppressed_recipient_is_dropped(fake_api: Any, celery_worker: Any) -> None:
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import add_suppression

    with session_scope() as session:
        add_suppression(session, "gone@example.com", "hard_bounce")
    only = enqueue_email("gone@example.com", "nobody home", text_body="x")
    mixed = enqueue_email(["gone@example.com", "here@example.com"], "one left", text_body="x")
    assert _final(only)["status"] == "suppressed"
    status = _final(mixed)
    assert status["status"] == "sent"
    assert fake_api.count_for(only) == 0
    assert fake_api.sends[0]["payload"]["to"] == ["here@example.com"]
    assert {r["address"]: r["status"] for r in status["recipients"]} == {
        "gone@example.com": "suppressed", "here@example.com": "sent"}


def test_read_timeout_is_parked_as_ambiguous_not_resent(fake_api: Any, celery_worker: Any) -> None:
    fake_api.script(Scripted.slow(4))  # SMTP2GO_TIMEOUT is 2 s in tests
    tid = enqueue_email("gina@example.com", "slow api", text_body="x")

    def parked() -> dict[str, Any] | None:
        s = get_email_status(tid)
        return s if s and s["ambiguous"] else None

    status = wait_until(parked, timeout=15)
    assert status["status"] == "parked"
    assert "ambiguous" in status["last_error"]
    wait_until(lambda: fake_api.count_for(tid) == 1, timeout=10)  # the slow request did land
    from worker.operations.sweeper import sweep

    sweep(grace=0)  # the sweeper must not resend an ambiguous message
    import time

    time.sleep(1.0)
    assert len(fake_api.requests) == 1


def test_two_workers_racing_one_message_send_it_once(fake_api: Any, celery_worker: Any) -> None:
    """Duplicate task messages for one id, consumed concurrently by 4 worker threads: one send."""
    from worker.sending.publish import publish_send

    fake_api.set_failure(latency=0.3)
    ids = [enqueue_email(f"r{i}@example.com", "race", text_body="x") for i in range(5)]
    for tid in ids:
        for _ in range(3):
            publish_send(tid)
    for tid in ids:
        assert _final(tid)["status"] == "sent"
    assert fake_api.duplicates() == {}
    assert all(fake_api.count_for(tid) == 1 for tid in ids)


def test_concurrent_deliver_calls_claim_once(fake_api: Any, db: str) -> None:
    """deliver() from 8 threads at once (two 'hosts' each): the atomic claim lets exactly one through."""
    from worker.sending.delivery import deliver
    from worker.sending.publish import publish_send  # noqa: F401 - enqueue publishes; no worker runs here

    fake_api.set_failure(latency=0.2)
    tid = enqueue_email("race@example.com", "threads", text_body="x")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def run(n: int) -> None:
        barrier.wait()
        outcomes.append(deliver(tid, owner=f"host{n % 2}:{n}").kind)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["sent"] + ["skipped"] * 7
    assert fake_api.count_for(tid) == 1


@pytest.mark.parametrize("crashes", [1, 3])
def test_crashed_worker_is_taken_over_or_failed(fake_api: Any, db: str, base_env: Any, crashes: int) -> None:
    """A lease left by a dead worker expires; with no send in flight it is resent, after N crashes failed."""
    from datetime import timedelta

    from sqlalchemy import update

    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Message, MessageStatus, utcnow
    from worker.sending.delivery import deliver

    tid = enqueue_email("crash@example.com", "crash", text_body="x")
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(
            status=MessageStatus.SENDING, lease_owner="dead", crashes=crashes - 1,
            lease_expires_at=utcnow() - timedelta(seconds=1)))
    outcome = deliver(tid, owner="alive")
    status = get_email_status(tid)
    assert status is not None
    if crashes < 3:
        assert outcome.kind == "sent" and status["status"] == "sent"
    else:
        assert outcome.kind == "failed" and status["status"] == "failed"
        assert "died 3 times" in status["last_error"]
        assert fake_api.count_for(tid) == 0


def test_takeover_of_inflight_send_is_ambiguous(fake_api: Any, db: str) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Message, MessageStatus, utcnow
    from worker.sending.delivery import deliver

    tid = enqueue_email("inflight@example.com", "crash mid-send", text_body="x")
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(
            status=MessageStatus.SENDING, lease_owner="dead", inflight_since=utcnow(),
            lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert deliver(tid, owner="alive").kind == "ambiguous"
    assert fake_api.count_for(tid) == 0
    assert (get_email_status(tid) or {})["ambiguous"] is True


def test_database_lost_before_the_send_leaves_no_lease_and_no_crash(fake_api: Any, db: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is committed only with the in-flight mark: a connection killed in between (a MariaDB restart,
    a network cut) rolls the claim back, so the retry finds the message due -- not leased, not a 'crash'."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from worker.infrastructure.db import get_engine
    from worker.sending import delivery
    from worker.sending.delivery import deliver

    tid = enqueue_email("cut@example.com", "db cut", text_body="x")
    load_job = delivery.load_job

    def killed_first(conn: Any, tracking_id: str) -> Any:
        own_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        with get_engine().connect() as other:  # the server drops our connection, as a restart would
            other.execute(text(f"KILL CONNECTION {int(own_id)}"))
        return load_job(conn, tracking_id)

    with monkeypatch.context() as patch:
        patch.setattr(delivery, "load_job", killed_first)
        with pytest.raises(OperationalError):
            deliver(tid, owner="host:cut")
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued" and status["attempts"] == []
    assert fake_api.count_for(tid) == 0
    assert deliver(tid, owner="host:retry").kind == "sent"  # no lease to wait out, no take-over counted
    assert fake_api.count_for(tid) == 1
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT crashes FROM messages WHERE id = :id"), {"id": tid}).scalar() == 0


def test_attempt_counts_say_what_was_sent(fake_api: Any, smtp_sink: Any, db: str) -> None:
    """Attempts are counted when a transport is called (the in-flight mark), per transport; paths that call
    none (suppressed) count nothing."""
    from worker.infrastructure.db import session_scope
    from worker.sending.delivery import deliver
    from worker.tracking.suppressions import add_suppression

    def counts(tid: str) -> tuple[int, int, int, str | None]:
        s = get_email_status(tid)
        assert s is not None
        made = [a["provider"] for a in s["attempts"]]
        return len(made), made.count("smtp2go"), made.count("smtp"), s["transport"]

    ok = enqueue_email("ok@example.com", "api", text_body="x")
    assert deliver(ok, owner="w").kind == "sent"
    assert counts(ok) == (1, 1, 0, "smtp2go")

    with session_scope() as session:
        add_suppression(session, "gone@example.com", "hard_bounce")
    gone = enqueue_email("gone@example.com", "suppressed", text_body="x")
    assert deliver(gone, owner="w").kind == "suppressed"
    assert counts(gone) == (0, 0, 0, None)

    fake_api.script(Scripted.error_400_data())  # permanent: falls back to the relay in the same attempt
    relayed = enqueue_email("relay@example.com", "fallback", text_body="x")
    assert deliver(relayed, owner="w").kind == "sent"
    assert counts(relayed) == (2, 1, 1, "smtp")

    fake_api.script(Scripted.server_error(500))  # retryable: one API attempt counted, then a retry
    retried = enqueue_email("retry@example.com", "again", text_body="x")
    assert deliver(retried, owner="w").kind == "retry"
    assert counts(retried) == (1, 1, 0, None)
    with session_scope() as session:  # due now, and the in-flight mark was released with the lease
        from worker.infrastructure.models import Message

        message = session.get(Message, retried)
        assert message is not None and message.inflight_since is None and message.lease_owner is None
        message.next_attempt_at = None
    assert deliver(retried, owner="w").kind == "sent"
    assert counts(retried) == (2, 2, 0, "smtp2go")
    assert fake_api.count_for(retried) == 1 and smtp_sink.count_for(relayed) == 1
