"""The SMTP relay transport against real aiosmtpd servers: plain, STARTTLS and implicit TLS, verified."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from tests.conftest import SmtpSink, _Handler, free_port
from worker.errors import PermanentDeliveryError, RecipientsRefused, RetryableDeliveryError
from worker.providers import OutgoingEmail
from worker.providers import smtp as relay


def email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="t-1", sender="Support <support@example.org>", to=["Alice <alice@example.com>"], cc=[],
        bcc=[], subject="Hi", text_body="text", html_body=None, reply_to=None, headers={}, attachments=[],
        template_id=None, template_data=None, message_id_header="<m1@example.org>",
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


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
    port = free_port()
    sink = SmtpSink("127.0.0.1", port)
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=port)
    controller.start()
    yield sink
    controller.stop()


def test_plain_send_returns_message_id(plain: SmtpSink) -> None:
    result = relay.send(email=email(), host=plain.host, port=plain.port, security="none", timeout=5)
    assert result.message_id == "<m1@example.org>"
    assert result.refused == {}
    assert plain.messages[0][1] == ["alice@example.com"]
    assert plain.messages[0][2]["X-Mailworker-Id"] == "t-1"


def test_starttls_verifies_certificate(tls_files: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_path = tls_files
    port = free_port()
    sink = SmtpSink("127.0.0.1", port)
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=port, tls_context=server_ctx,
                            require_starttls=True)
    controller.start()
    try:
        relay.send(email=email(), host="127.0.0.1", port=port, security="starttls", timeout=5, ca_file=ca_path)
        assert len(sink.messages) == 1
        with pytest.raises(RetryableDeliveryError, match="certificate"):
            relay.send(email=email(), host="127.0.0.1", port=port, security="starttls", timeout=5)
    finally:
        controller.stop()


def test_implicit_tls(tls_files: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_path = tls_files
    port = free_port()
    sink = SmtpSink("127.0.0.1", port)
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=port, ssl_context=server_ctx)
    controller.start()
    try:
        relay.send(email=email(), host="127.0.0.1", port=port, security="ssl", timeout=5, ca_file=ca_path)
        assert len(sink.messages) == 1
    finally:
        controller.stop()


def test_partial_refusal_is_reported(plain: SmtpSink) -> None:
    plain.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    result = relay.send(email=email(to=["alice@example.com", "nobody@example.com"]), host=plain.host,
                        port=plain.port, security="none", timeout=5)
    assert list(result.refused) == ["nobody@example.com"]
    assert result.refused["nobody@example.com"].startswith("550")


def test_all_refused_permanent_and_4xx_retryable(plain: SmtpSink) -> None:
    plain.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    with pytest.raises(RecipientsRefused) as excinfo:
        relay.send(email=email(to=["nobody@example.com"]), host=plain.host, port=plain.port, security="none")
    assert "nobody@example.com" in excinfo.value.refused
    plain.refuse["busy@example.com"] = "450 4.2.1 Try later"
    with pytest.raises(RetryableDeliveryError):
        relay.send(email=email(to=["busy@example.com"]), host=plain.host, port=plain.port, security="none")


def test_data_5xx_permanent_4xx_retryable(plain: SmtpSink) -> None:
    plain.data_reply = "554 5.7.1 Spam"
    with pytest.raises(PermanentDeliveryError) as excinfo:
        relay.send(email=email(), host=plain.host, port=plain.port, security="none")
    assert excinfo.value.status_code == 554
    plain.data_reply = "451 4.3.0 Try again"
    with pytest.raises(RetryableDeliveryError):
        relay.send(email=email(), host=plain.host, port=plain.port, security="none")


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError):
        relay.send(email=email(), host="127.0.0.1", port=free_port(), security="none", timeout=2)


def test_template_only_cannot_go_over_smtp() -> None:
    with pytest.raises(PermanentDeliveryError, match="template"):
        relay.build_mime(email(text_body=None, html_body=None, template_id="t"))
