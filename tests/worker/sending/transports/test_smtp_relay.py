"""The SMTP relay transport against real aiosmtpd servers: plain, STARTTLS and implicit TLS, verified.

Each relay answer maps to one honest outcome (accepted with per-recipient refusals and deferrals, not sent,
or unknown); the sink records what the relay really received, so "it arrived once" can be set against what
the transport reported.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import trustme

from tests.conftest import SmtpSink, free_port, smtp_controller
from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    CredentialsRejected,
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.providers.base import OutgoingAttachment, OutgoingEmail
from worker.providers.smtp import transport as relay

PASSWORD = "relay-pw-s3cret"


def email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="t-1", sender="Support <support@example.org>", to=["Alice <alice@example.com>"], cc=[],
        bcc=[], subject="Hi", text_body="text", html_body=None, reply_to=None, headers={}, attachments=[],
        template_id=None, template_data=None, message_id_header="<m1@example.org>",
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


THREE = ["alice@example.com", "Grey <grey@example.com>", "bob@example.com"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Any) -> tuple[ssl.SSLContext, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return server_ctx, str(ca_path)


@pytest.fixture
def plain() -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", free_port())
    controller = smtp_controller(sink)
    controller.start()
    yield sink
    controller.stop()


def send(sink: SmtpSink, **kwargs: Any) -> relay.SmtpSent:
    kwargs.setdefault("email", email())
    kwargs.setdefault("timeout", 5)
    return relay.send(host=sink.host, port=sink.port, security="none", **kwargs)


# ------------------------------------------------------------------------------------------------ accepted


def test_plain_send_returns_message_id(plain: SmtpSink) -> None:
    result = send(plain)
    assert result == relay.SmtpSent(message_id="<m1@example.org>", refused={}, deferred={})
    assert plain.messages[0][1] == ["alice@example.com"]
    assert plain.messages[0][2]["X-Mailworker-Id"] == "t-1"


def test_content_is_dot_stuffed_and_arrives_intact(plain: SmtpSink) -> None:
    body = ".leading dot\n..two dots\n.\nlast line"
    send(plain, email=email(text_body=body))
    received = plain.messages[0][2]
    assert isinstance(received, EmailMessage)  # parsed with policy.default
    assert received.get_content().replace("\r\n", "\n").rstrip("\n") == body


def test_an_address_in_to_and_cc_is_sent_once(plain: SmtpSink) -> None:
    send(plain, email=email(to=["alice@example.com"], cc=["Alice <Alice@example.com>"], bcc=["bob@example.com"]))
    assert plain.messages[0][1] == ["alice@example.com", "bob@example.com"]


def test_starttls_verifies_certificate(tls_files: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_path = tls_files
    sink = SmtpSink("127.0.0.1", free_port())
    controller = smtp_controller(sink, tls_context=server_ctx, require_starttls=True)
    controller.start()
    try:
        relay.send(email=email(), host=sink.host, port=sink.port, security="starttls", timeout=5, ca_file=ca_path)
        assert len(sink.messages) == 1
        # An untrusted certificate is the operator's to fix (hold the mail), not a delivery failure.
        with pytest.raises(ConfigurationError, match="SMTP_CA_FILE"):
            relay.send(email=email(), host=sink.host, port=sink.port, security="starttls", timeout=5)
        assert len(sink.messages) == 1
    finally:
        controller.stop()


def test_implicit_tls(tls_files: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_path = tls_files
    sink = SmtpSink("127.0.0.1", free_port())
    controller = smtp_controller(sink, ssl_context=server_ctx)
    controller.start()
    try:
        relay.send(email=email(), host=sink.host, port=sink.port, security="ssl", timeout=5, ca_file=ca_path)
        assert len(sink.messages) == 1
    finally:
        controller.stop()


def test_one_recipient_greylisted_is_deferred_the_others_sent(plain: SmtpSink) -> None:
    plain.refuse["grey@example.com"] = "451 4.7.1 greylisted"
    result = send(plain, email=email(to=THREE))
    assert result.deferred == {"grey@example.com": "451 4.7.1 greylisted"}
    assert result.refused == {}
    assert plain.messages[0][1] == ["alice@example.com", "bob@example.com"]


def test_one_recipient_refused_5xx_is_final_the_others_sent(plain: SmtpSink) -> None:
    plain.refuse["grey@example.com"] = "550 5.1.1 No such user"
    result = send(plain, email=email(to=THREE))
    assert result.refused == {"grey@example.com": "550 5.1.1 No such user"}
    assert result.deferred == {}
    assert plain.messages[0][1] == ["alice@example.com", "bob@example.com"]


def test_correct_credentials_are_accepted(plain: SmtpSink) -> None:
    plain.users = {"relay-user": PASSWORD}
    send(plain, username="relay-user", password=PASSWORD)
    assert len(plain.messages) == 1


# ------------------------------------------------------------------------------------------------ not sent


def test_every_recipient_refused_mixed_4xx_5xx(plain: SmtpSink) -> None:
    plain.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    plain.refuse["full@example.com"] = "452 4.2.2 Mailbox full"
    with pytest.raises(RecipientsRefused) as excinfo:
        send(plain, email=email(to=["nobody@example.com", "Full <full@example.com>"]))
    assert excinfo.value.refused == {"nobody@example.com": "550 5.1.1 No such user"}
    assert excinfo.value.deferred == {"full@example.com": "452 4.2.2 Mailbox full"}
    assert plain.messages == []


def test_554_after_data_is_permanent(plain: SmtpSink) -> None:
    plain.data_reply = "554 5.7.1 Spam"
    with pytest.raises(PermanentDeliveryError) as excinfo:
        send(plain)
    assert excinfo.value.status_code == 554
    assert plain.messages == []


def test_451_after_data_is_retryable(plain: SmtpSink) -> None:
    plain.data_reply = "451 4.3.0 Try again"
    with pytest.raises(RetryableDeliveryError) as excinfo:
        send(plain)
    assert excinfo.value.status_code == 451
    assert not isinstance(excinfo.value, AmbiguousDeliveryError)


def test_535_credentials_rejected_holds_and_never_shows_the_password(plain: SmtpSink) -> None:
    plain.users = {"relay-user": "another-password"}
    with pytest.raises(CredentialsRejected) as excinfo:
        send(plain, username="relay-user", password=PASSWORD)
    assert excinfo.value.status_code == 535
    assert excinfo.value.provider == "smtp"
    chain: BaseException | None = excinfo.value
    while chain is not None:
        assert PASSWORD not in str(chain) and PASSWORD not in repr(chain.args)
        chain = chain.__cause__
    assert plain.messages == []


def test_454_temporary_auth_failure_is_retryable(plain: SmtpSink) -> None:
    plain.auth_reply = "454 4.7.0 Temporary authentication failure"
    with pytest.raises(RetryableDeliveryError) as excinfo:
        send(plain, username="relay-user", password=PASSWORD)
    assert excinfo.value.status_code == 454


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError):
        relay.send(email=email(), host="127.0.0.1", port=free_port(), security="none", timeout=2)


def test_drop_before_the_final_dot_is_retryable() -> None:
    """A relay that hangs up while the content is still coming: the write fails, so the final dot never left
    and the relay cannot have queued it (an unknown here would park mail for nothing)."""
    server = socket.socket()
    # A small receive window: the client cannot have handed the whole (8 MB) content to the kernel yet.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 scripted ESMTP\r\n")
            reader = conn.makefile("rb")
            for line in reader:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250 scripted\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    reader.read(65536)  # the content is flowing
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return  # close with a reset: the client's next write fails
                else:
                    conn.sendall(b"250 OK\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    big = OutgoingAttachment("big.bin", b"x" * 8_000_000, "application/octet-stream")
    try:
        with pytest.raises(RetryableDeliveryError, match="before the end of the message") as excinfo:
            relay.send(email=email(attachments=[big]), host="127.0.0.1", port=server.getsockname()[1],
                       security="none", timeout=5)
        assert not isinstance(excinfo.value, AmbiguousDeliveryError)
    finally:
        thread.join(5)
        server.close()


def test_template_only_cannot_go_over_smtp() -> None:
    with pytest.raises(PermanentDeliveryError, match="template"):
        relay.build_mime(email(text_body=None, html_body=None, template_id="t"))


# ------------------------------------------------------------------------------------------------- unknown


def test_answer_to_data_later_than_the_timeout_is_ambiguous(plain: SmtpSink) -> None:
    plain.data_delay = 5.0
    started = time.monotonic()
    with pytest.raises(AmbiguousDeliveryError, match="may have queued"):
        send(plain, timeout=1)
    assert time.monotonic() - started < 4.5  # gave up at its own timeout, not at the relay's answer
    assert plain.count_for("t-1") == 1  # the relay has it: a blind resend would deliver it twice


def test_drop_after_data_is_ambiguous(plain: SmtpSink) -> None:
    plain.drop_after_data = True
    with pytest.raises(AmbiguousDeliveryError):
        send(plain)
    assert plain.count_for("t-1") == 1
