"""The SMTP2Go client reads SMTP2Go's real response shapes (fixtures) and classifies every failure."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import trustme

from tests.conftest import FIXTURES_DIR, free_port
from worker.devtools.fake_smtp2go import FakeSMTP2Go, Scripted
from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    CredentialsRejected,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from worker.providers.base import OutgoingAttachment, OutgoingEmail
from worker.providers.smtp2go import transport as smtp2go
from worker.providers.smtp2go.transport import ActivitySearchError, custom_header, interpret_response, search_activity

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


def test_wrong_key_is_a_credentials_problem_not_a_message_outcome() -> None:
    """A refused key would fail every email sent while it is revoked if it were a message outcome.
    A refused key is an operator problem; the message says what to do and never contains the key."""
    with FakeSMTP2Go(api_key="right") as api, pytest.raises(CredentialsRejected) as excinfo:
        smtp2go.send(email=email(), api_key="wrong-key-123", api_url=api.url)
    assert excinfo.value.status_code == 401 and excinfo.value.provider == "smtp2go"
    assert "wrong-key-123" not in str(excinfo.value) and "wrong-key-123" not in repr(excinfo.value)
    assert "mailworker module set smtp2go api_key=" in str(excinfo.value)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_credentials_rejected(status: int) -> None:
    with pytest.raises(CredentialsRejected, match=f"SMTP2Go refused the API key \\({status}\\)"):
        interpret_response(status, {"data": {"error": "Invalid API key", "error_code": "E_ApiResponseCodes.X"}})


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


# -- transport failures: did the request leave? -------------------------------------------------------------


@contextmanager
def raw_server(handle: Callable[[socket.socket], object], *, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A loopback TCP server that runs ``handle`` on each connection: for answers no HTTP server would give."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)  # accept() wakes up to notice stop (closing the listener does not wake it)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                handle(tls.wrap_socket(conn, server_side=True) if tls else conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def read_request(conn: socket.socket) -> bytes:
    """Read one whole HTTP request (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_truncated_answer_after_the_request_is_ambiguous() -> None:
    """SMTP2Go read the request (it may have sent the mail); the answer broke off: never a blind resend."""
    seen: list[bytes] = []

    def truncated(conn: socket.socket) -> None:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                     b'{"request_id": "r", "data": {"email_')

    with raw_server(truncated) as port, pytest.raises(AmbiguousDeliveryError) as excinfo:
        smtp2go.send(email=email(), api_key="k", api_url=f"http://127.0.0.1:{port}/v3", timeout=5)
    assert isinstance(excinfo.value.__cause__, requests.exceptions.ChunkedEncodingError)
    assert len(seen) == 1 and b"X-Mailworker-Id" in seen[0]


def test_bad_chunked_encoding_is_ambiguous() -> None:
    def bad_chunks(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n")

    with raw_server(bad_chunks) as port, pytest.raises(AmbiguousDeliveryError):
        smtp2go.send(email=email(), api_key="k", api_url=f"http://127.0.0.1:{port}/v3", timeout=5)


def test_connection_closed_after_the_request_is_ambiguous() -> None:
    with raw_server(read_request) as port, pytest.raises(AmbiguousDeliveryError, match="connection lost"):
        smtp2go.send(email=email(), api_key="k", api_url=f"http://127.0.0.1:{port}/v3", timeout=5)


def test_refused_connection_is_retryable_and_proven_by_type() -> None:
    with pytest.raises(RetryableDeliveryError, match="cannot connect") as excinfo:
        smtp2go.send(email=email(), api_key="k", api_url=f"http://127.0.0.1:{free_port()}/v3")
    assert not smtp2go.request_left(excinfo.value.__cause__)  # type: ignore[arg-type]


def test_tls_handshake_failure_is_retryable() -> None:
    """A TLS error inside the handshake: nothing was written yet."""
    def plain_http(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with raw_server(plain_http) as port, pytest.raises(RetryableDeliveryError, match="TLS handshake"):
        smtp2go.send(email=email(), api_key="k", api_url=f"https://127.0.0.1:{port}/v3", timeout=5, verify=False)


def test_tls_eof_after_the_request_is_ambiguous(tmp_path: Any) -> None:
    """The TLS connection ends without an answer after SMTP2Go read the request: it may have acted on it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def eof_after_request(conn: socket.socket) -> None:
        read_request(conn)
        assert isinstance(conn, ssl.SSLSocket)
        socket.socket(fileno=conn.detach()).close()  # no close_notify: the TCP socket ends under TLS

    with raw_server(eof_after_request, tls=server_ctx) as port, pytest.raises(AmbiguousDeliveryError):
        smtp2go.send(email=email(), api_key="k", api_url=f"https://127.0.0.1:{port}/v3", timeout=5,
                     verify=str(ca_file))


# -- /activity/search ----------------------------------------------------------------------------------------


def _serve_json(status: int, body: Any) -> Callable[[socket.socket], None]:
    raw = json.dumps(body).encode()

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
                     "Connection: close\r\n\r\n".encode() + raw)

    return handle


def test_search_activity_reads_the_documented_fixture() -> None:
    doc = fixture("activity_search.json")
    with raw_server(_serve_json(200, doc)) as port:
        page = search_activity({"search_recipient": "alice@example.com"}, api_key="k",
                               api_url=f"http://127.0.0.1:{port}/v3")
    assert page.continue_token is None and page.total_events == 5 and len(page.events) == 5
    assert [e["event"] for e in page.events] == ["processed", "delivered", "hard-bounced", "soft-bounced", "rejected"]
    assert custom_header(page.events[0], "x-mailworker-id") == "6d9e2a09-d7f3-4c57-87ad-4f4f1fd42635"
    assert custom_header({"custom_headers": [{"header": "X-Mailworker-Id", "value": "v"}]}, "X-Mailworker-Id") is None


def test_search_activity_errors_say_what_they_are() -> None:
    with FakeSMTP2Go(api_key="right") as api:
        with pytest.raises(CredentialsRejected, match="activity search") as cred:
            search_activity({}, api_key="wrong-key-77", api_url=api.url)
        assert cred.value.status_code == 401 and "wrong-key-77" not in str(cred.value)
        api.script_activity(Scripted.server_error(500), Scripted.rate_limited(reset_seconds=9))
        with pytest.raises(ActivitySearchError, match="^SMTP2Go activity search failed with 500$") as err500:
            search_activity({}, api_key="right", api_url=api.url)
        assert err500.value.kind == "server_error" and err500.value.status_code == 500
        with pytest.raises(ActivitySearchError, match="rate limited") as err429:
            search_activity({}, api_key="right", api_url=api.url)
        assert err429.value.kind == "rate_limited" and err429.value.retry_after == pytest.approx(9, abs=1)
        with pytest.raises(ActivitySearchError, match="search_email_id") as refused:
            search_activity({"search_email_id": ["a", "b"]}, api_key="right", api_url=api.url)
        assert refused.value.kind == "refused" and refused.value.status_code == 400
    with pytest.raises(ActivitySearchError) as down:
        search_activity({}, api_key="k", api_url=f"http://127.0.0.1:{free_port()}/v3")
    assert down.value.kind == "unreachable"


def test_search_activity_without_permission_is_a_credentials_problem() -> None:
    with raw_server(_serve_json(400, fixture("send_error_data.json"))) as port, \
            pytest.raises(CredentialsRejected, match="no permission"):
        search_activity({}, api_key="k", api_url=f"http://127.0.0.1:{port}/v3")


@pytest.mark.parametrize("url", ["api.smtp2go.com/v3", "ftp://api.smtp2go.com/v3", "http:///v3",
                                 "http://" + "a" * 64 + ".example/v3"])
def test_unusable_api_url_is_a_configuration_error_naming_the_setting(url: str) -> None:
    """Nothing can leave, and nothing will until an operator fixes the URL: an operator problem (the send path
    holds the mail), not a retryable error whose retries would run out into a fallback or a failure."""
    with pytest.raises(ConfigurationError, match="SMTP2GO_API_URL"):
        smtp2go.send(email=email(), api_key="k", api_url=url, timeout=2, connect_timeout=1)
