"""The SMTP2Go client reads SMTP2Go's real response shapes (fixtures) and classifies every failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.conftest import FIXTURES_DIR, free_port
from worker.errors import AmbiguousDeliveryError, PermanentDeliveryError, RetryableDeliveryError
from worker.fake_smtp2go import FakeSMTP2Go, Scripted
from worker.providers import OutgoingAttachment, OutgoingEmail, smtp2go
from worker.providers.smtp2go import interpret_response

FIXTURES = FIXTURES_DIR


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="6a1f0f5e-0000-4000-8000-000000000001", sender="Support <support@example.org>",
        to=["Alice <alice@example.com>"], cc=["c@example.com"], bcc=["b@example.com"], subject="Hi",
        text_body="text", html_body="<p>html</p>", reply_to="help@example.org", headers={"X-Tag": "t"},
        attachments=[OutgoingAttachment("a.txt", b"hello", "text/plain")], template_id=None,
        template_data=None, message_id_header="<x@example.org>",
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


def test_success_reads_data_email_id_not_request_id() -> None:
    body = fixture("send_success.json")
    assert interpret_response(200, body) == body["data"]["email_id"] != body["request_id"]


def test_fastaccept_success_without_counts() -> None:
    body = fixture("send_success_fastaccept.json")
    assert interpret_response(200, body) == "1t9QlB-7Hc3Nx2QvL-R4dM"


def test_error_inside_data_is_permanent_with_code() -> None:
    with pytest.raises(PermanentDeliveryError) as excinfo:
        interpret_response(400, fixture("send_error_data.json"))
    assert excinfo.value.error_code == "E_ApiResponseCodes.ENDPOINT_PERMISSION_DENIED"
    assert excinfo.value.status_code == 400 and excinfo.value.provider == "smtp2go"


def test_top_level_error_names_the_field() -> None:
    with pytest.raises(PermanentDeliveryError, match="sender") as excinfo:
        interpret_response(400, fixture("send_error_toplevel.json"))
    assert excinfo.value.error_code == "E_ApiResponseCodes.NON_VALIDATING_IN_PAYLOAD"


@pytest.mark.parametrize("status", [200, 400])
def test_failures_as_strings_are_permanent_even_with_200(status: int) -> None:
    with pytest.raises(PermanentDeliveryError, match="API Key passed was not in the correct format"):
        interpret_response(status, fixture("send_failures_strings.json"))


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_retryable(status: int) -> None:
    with pytest.raises(RetryableDeliveryError):
        interpret_response(status, {"data": {"error": "busy"}}, retry_after=3)


def test_200_without_email_id_is_ambiguous_not_success_or_resend() -> None:
    with pytest.raises(AmbiguousDeliveryError):
        interpret_response(200, {"request_id": "r", "data": {"succeeded": 1}})
    with pytest.raises(AmbiguousDeliveryError):
        interpret_response(200, None)


def test_payload_shape() -> None:
    payload = smtp2go.build_payload(email(), options={"fastaccept": True})
    assert payload["to"] == ["Alice <alice@example.com>"]
    assert payload["cc"] == ["c@example.com"] and payload["bcc"] == ["b@example.com"]
    headers = {h["header"]: h["value"] for h in payload["custom_headers"]}
    assert headers == {"X-Mailworker-Id": "6a1f0f5e-0000-4000-8000-000000000001", "Reply-To": "help@example.org",
                       "X-Tag": "t"}
    assert payload["attachments"] == [{"filename": "a.txt", "fileblob": "aGVsbG8=", "mimetype": "text/plain"}]
    assert payload["fastaccept"] is True
    tpl = smtp2go.build_payload(email(text_body=None, html_body=None, template_id="t-1",
                                      template_data={"name": "Al"}))
    assert tpl["template_id"] == "t-1" and tpl["template_data"] == {"name": "Al"}
    assert "text_body" not in tpl


def test_real_http_success_sends_key_in_header_only() -> None:
    with FakeSMTP2Go(api_key="k-123") as api:
        email_id = smtp2go.send(email=email(), api_key="k-123", api_url=api.url)
        assert email_id == api.sends[0]["email_id"]
        req = api.requests[0]
        assert req["headers"].get("X-Smtp2go-Api-Key") == "k-123"
        assert "api_key" not in req["payload"]


def test_wrong_key_is_permanent() -> None:
    with FakeSMTP2Go(api_key="right") as api, pytest.raises(PermanentDeliveryError) as excinfo:
        smtp2go.send(email=email(), api_key="wrong", api_url=api.url)
    assert "wrong" not in str(excinfo.value)


def test_rate_limit_header_becomes_retry_after() -> None:
    with FakeSMTP2Go(api_key="k") as api:
        api.script(Scripted.rate_limited(reset_seconds=7))
        with pytest.raises(RetryableDeliveryError) as excinfo:
            smtp2go.send(email=email(), api_key="k", api_url=api.url)
    assert excinfo.value.status_code == 429
    assert excinfo.value.retry_after is not None and 6 <= excinfo.value.retry_after <= 7


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError):
        smtp2go.send(email=email(), api_key="k", api_url=f"http://127.0.0.1:{free_port()}/v3")


def test_read_timeout_is_ambiguous() -> None:
    with FakeSMTP2Go(api_key="k") as api:
        api.script(Scripted.slow(2))
        with pytest.raises(AmbiguousDeliveryError) as excinfo:
            smtp2go.send(email=email(), api_key="k", api_url=api.url, timeout=0.5)
        assert isinstance(excinfo.value.__cause__, requests.exceptions.ReadTimeout)


class _Proxy:
    """A forward HTTP proxy on loopback that answers every request itself with SMTP2Go's success body."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str] = []
        body = json.dumps(fixture("send_success.json")).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                seen.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_proxy_and_no_proxy_from_the_environment_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """trust_env is off for speed; the environment is read once per URL with the same meaning."""
    proxy = _Proxy()
    api = "http://api.example.invalid/v3"
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        smtp2go._environment.cache_clear()
        email_id = smtp2go.send(email=email(), api_key="api-test", api_url=api, timeout=5, connect_timeout=2)
        assert email_id == fixture("send_success.json")["data"]["email_id"]
        assert proxy.seen == [f"{api}/email/send"]  # the absolute URI a forward proxy receives

        monkeypatch.setenv("NO_PROXY", "api.example.invalid")
        smtp2go._environment.cache_clear()
        with pytest.raises(RetryableDeliveryError):  # straight to a host that does not resolve
            smtp2go.send(email=email(), api_key="api-test", api_url=api, timeout=5, connect_timeout=2)
        assert len(proxy.seen) == 1
    finally:
        proxy.server.shutdown()
        smtp2go._environment.cache_clear()
