"""Bodies, sizes, content types and the broker: real SMTP2Go fixtures through to the real events queue."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import FIXTURES_DIR

EVENTS_PATH = "/api/webhooks/smtp2go/events"
SECRET = "whsec-test-4f1c9a2b7d3e8f60"  # the conftest's SECRET
FIXTURES = FIXTURES_DIR
JSON_FIXTURES = sorted(FIXTURES.glob("webhook_*.json"))
FORM_BODY = (FIXTURES / "webhook_delivered.form").read_bytes()
EVENT = {"event": "delivered", "email_id": "1t9QkX-4Rb2Wm8YzK-Q7aP", "rcpt": "alice@example.com"}
AUTH = {"Authorization": f"Bearer {SECRET}"}


class _ChunkedStream:
    """A WSGI input without a length, like a chunked request a server has already de-chunked."""

    def __init__(self, data: bytes, chunk: int = 4096) -> None:
        self._chunks: Iterator[bytes] = (data[i:i + chunk] for i in range(0, len(data), chunk))
        self._buffer = b""
        self.read_total = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buffer += nxt
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.read_total += len(out)
        return out


def post_chunked(client: FlaskClient, stream: _ChunkedStream) -> Any:
    """Transfer-Encoding: chunked, so there is no Content-Length and the server marks the input terminated."""
    return client.post(EVENTS_PATH,
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", **AUTH},
                       environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True})


def post_json(client: FlaskClient, payload: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(EVENTS_PATH, data=json.dumps(payload).encode(),
                       headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


def post_raw(client: FlaskClient, body: bytes, content_type: str | None, **headers: str) -> Any:
    all_headers = {**AUTH, **headers}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return client.post(EVENTS_PATH, data=body, headers=all_headers)


@pytest.fixture
def broker_client(make_app: Callable[..., Flask], redis_client: Any) -> FlaskClient:
    """The default (real) publisher: Celery on the test Redis."""
    return make_app(secrets=[SECRET]).test_client()


# ------------------------------------------------------------------ real fixtures to the real queue


@pytest.mark.parametrize("path", JSON_FIXTURES, ids=lambda p: p.stem)
def test_every_json_fixture_becomes_one_task(broker_client: FlaskClient, events_queue: Any, path: Path) -> None:
    body = path.read_bytes()
    response = broker_client.post(EVENTS_PATH, data=body, headers={"Content-Type": "application/json", **AUTH})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "queued": 1, "ignored": 0}
    assert events_queue() == [("mailworker.process_event", [json.loads(body)], {})]


def test_form_fixture_becomes_one_task_with_real_field_names(broker_client: FlaskClient,
                                                             events_queue: Any) -> None:
    response = post_raw(broker_client, FORM_BODY, "application/x-www-form-urlencoded")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "queued": 1, "ignored": 0}
    [(name, args, kwargs)] = events_queue()
    assert (name, kwargs) == ("mailworker.process_event", {})
    [event] = args
    assert event == dict(parse_qsl(FORM_BODY.decode(), keep_blank_values=True))
    assert event["event"] == "delivered"
    assert event["email_id"] == "1t9QkX-4Rb2Wm8YzK-Q7aP"
    assert event["rcpt"] == "alice@example.com"
    assert event["sendtime"] == "2026-11-20T09:14:02.118204+00:00"
    assert event["Message-Id"] == event["message-id"] == "<E1t9QkX-4Rb2Wm8YzK-Q7aP@message-id.smtpcorp.com>"
    assert event["Subject"] == "Your ticket #1042"


def test_json_batch_of_five(broker_client: FlaskClient, events_queue: Any) -> None:
    batch = [json.loads(p.read_bytes()) for p in JSON_FIXTURES[:5]]
    response = post_json(broker_client, batch)
    assert response.get_json() == {"received": 5, "queued": 5, "ignored": 0}
    assert [args[0] for _, args, _ in events_queue()] == batch


def test_broker_down_answers_503_fast(make_app: Callable[..., Flask], closed_port: int) -> None:
    client = make_app(secrets=[SECRET], broker_url=f"redis://127.0.0.1:{closed_port}/0").test_client()
    started = time.monotonic()
    response = post_json(client, EVENT)
    assert response.status_code == 503
    assert response.get_json() == {"error": "broker unavailable"}
    assert time.monotonic() - started < 4


def test_broker_hung_answers_503_within_seconds(make_app: Callable[..., Flask], hung_port: int) -> None:
    client = make_app(secrets=[SECRET], broker_url=f"redis://127.0.0.1:{hung_port}/0").test_client()
    started = time.monotonic()
    response = post_json(client, [EVENT, EVENT])
    assert response.status_code == 503
    assert response.get_json() == {"error": "broker unavailable"}
    assert time.monotonic() - started < 8


# ------------------------------------------------------------------ shapes (recording publisher)


def test_ignored_items_are_counted_not_published(client: FlaskClient, recorder: Any) -> None:
    items = [EVENT, 1, "x", None, [], {}, {"foo": "bar"}, {"email_id": "only-id"}, {"event": "open"}]
    response = post_json(client, items)
    assert response.status_code == 200
    assert response.get_json() == {"received": 9, "queued": 3, "ignored": 6}
    assert recorder.events == [EVENT, {"email_id": "only-id"}, {"event": "open"}]


def test_single_object_without_identity_is_ignored(client: FlaskClient, recorder: Any) -> None:
    assert post_json(client, {"hello": "world"}).get_json() == {"received": 1, "queued": 0, "ignored": 1}
    assert post_json(client, []).get_json() == {"received": 0, "queued": 0, "ignored": 0}
    assert recorder.events == []


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8",
    "application/json;charset=\"utf-8\"",
])
def test_json_content_type_variants(client: FlaskClient, content_type: str) -> None:
    assert post_raw(client, json.dumps(EVENT).encode(), content_type).status_code == 200


def test_form_repeated_keys_and_lists(client: FlaskClient, recorder: Any) -> None:
    body = (b"event=processed&email_id=abc&recipients=a%40x.org&recipients=b%40x.org"
            b"&tag%5B%5D=one&X-Custom=1&X-Custom=2&empty=&note=caf%C3%A9+ok")
    assert post_raw(client, body, "application/x-www-form-urlencoded").status_code == 200
    assert recorder.events == [{"event": "processed", "email_id": "abc", "recipients": ["a@x.org", "b@x.org"],
                                "tag": ["one"], "X-Custom": ["1", "2"], "empty": "", "note": "café ok"}]


def test_form_single_recipient_is_still_a_list(client: FlaskClient, recorder: Any) -> None:
    body = b"event=processed&email_id=abc&recipients=a%40x.org\r\n"
    assert post_raw(client, body, "application/x-www-form-urlencoded; charset=UTF-8").status_code == 200
    assert recorder.events == [{"event": "processed", "email_id": "abc", "recipients": ["a@x.org"]}]


def test_partial_batch_failure_answers_503(make_app: Callable[..., Flask], creds: SimpleNamespace) -> None:
    recorder = creds.Recorder(fail_after=2)
    client = make_app(secrets=[SECRET], publisher=recorder).test_client()
    response = post_json(client, [EVENT] * 5)
    assert response.status_code == 503
    assert response.get_json() == {"error": "broker unavailable"}


def test_too_many_events_in_one_batch(make_app: Callable[..., Flask], recorder: Any) -> None:
    client = make_app(secrets=[SECRET], publisher=recorder, max_batch_events=3).test_client()
    assert post_json(client, [EVENT] * 4).status_code == 413
    assert recorder.events == []


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize("body", [
    b"{", b"", b"{\"event\": }", b"\xff\xfe{}", b"{\"a\": NaN}", b"[Infinity]", b"{\"event\": \"\\ud800\"}",
    b"42", b"\"delivered\"", b"null", b"true", b"[" * 100000 + b"]" * 100000, b"1" * 5000,
    # lone surrogates in any case, in a key, after a valid pair, deep in a batch
    b"{\"event\": \"\\uDC00\"}", b"{\"\\udbff\": 1, \"event\": \"open\"}",
    b"{\"event\": \"\\ud83d\\ude00\\ud83d\"}", b"[{\"event\": \"open\"}, {\"event\": [\"\\uDfFf\"]}]",
    b"\xef\xbb\xbf\xef\xbb\xbf{}",  # a second BOM after the one utf-8-sig strips
])
def test_malformed_json_is_400(client: FlaskClient, recorder: Any, body: bytes) -> None:
    response = post_raw(client, body, "application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "malformed body"}
    assert recorder.events == []


@pytest.mark.parametrize(("escaped", "text"), [
    ("\\ud83d\\ude00", "\U0001F600"),  # a valid surrogate pair is one character
    ("\\uD83D\\uDE00", "\U0001F600"),
    ("\\\\ud800", "\\ud800"),  # an escaped backslash, then plain text
    ("\\u00e9\\u2603", "\u00e9\u2603"),
])
def test_json_escapes_that_are_valid_text_are_kept(client: FlaskClient, recorder: Any, escaped: str,
                                                   text: str) -> None:
    body = b'{"event": "open", "tag": "' + escaped.encode() + b'"}'
    assert post_raw(client, body, "application/json").status_code == 200
    assert recorder.events == [{"event": "open", "tag": text}]


@pytest.mark.parametrize("body", [b"event", b"event=delivered&rcpt", b"event=%FF", b"%C3=x", b"=x", b"\xff=1"])
def test_malformed_form_is_400(client: FlaskClient, body: bytes) -> None:
    assert post_raw(client, body, "application/x-www-form-urlencoded").status_code == 400


NOT_JSON_TYPES = [None, "text/plain", "application/octet-stream", "text/plain; charset=utf-8", "application/xml",
                  "application/jsonx", "json"]


@pytest.mark.parametrize("body", [
    b"nope", b"", b"<event>delivered</event>", b"event=delivered&rcpt=a%40x.org", b"{", b"42", b"\"delivered\"",
    b"null", b"{\"a\": NaN}", b"\xff\xfe{}",
])
@pytest.mark.parametrize("content_type", NOT_JSON_TYPES)
def test_body_that_is_not_a_json_event_without_a_json_type_is_415(client: FlaskClient, recorder: Any, body: bytes,
                                                                  content_type: str | None) -> None:
    """Without a declared JSON or form type only a JSON object or list is read; anything else stays a 415."""
    response = post_raw(client, body, content_type)
    assert response.status_code == 415
    assert response.get_json() == {"error": "unsupported content type"}
    assert recorder.events == []


@pytest.mark.parametrize("content_type", [
    "application/json; charset=latin-1", "text/plain; charset=iso-8859-1",
    "application/x-www-form-urlencoded; charset=cp1252",
])
def test_declared_non_utf8_charset_is_415(client: FlaskClient, recorder: Any, content_type: str) -> None:
    response = post_raw(client, json.dumps(EVENT).encode(), content_type)
    assert response.status_code == 415
    assert recorder.events == []


# ------------------------------------------------------------------ JSON without a JSON content type


@pytest.mark.parametrize("content_type", NOT_JSON_TYPES)
def test_json_object_without_a_json_content_type_is_accepted(broker_client: FlaskClient, events_queue: Any,
                                                             content_type: str | None) -> None:
    """SMTP2Go sometimes sends its JSON output with no or a generic content type: the event must not be lost."""
    body = (FIXTURES / "webhook_delivered.json").read_bytes()
    response = post_raw(broker_client, body, content_type)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "queued": 1, "ignored": 0}
    assert events_queue() == [("mailworker.process_event", [json.loads(body)], {})]


def test_json_list_as_text_plain_is_accepted(client: FlaskClient, recorder: Any) -> None:
    batch = [json.loads(p.read_bytes()) for p in JSON_FIXTURES[:3]] + [{"no": "identity"}]
    response = post_raw(client, json.dumps(batch).encode(), "text/plain")
    assert response.get_json() == {"received": 4, "queued": 3, "ignored": 1}
    assert recorder.events == batch[:3]


def test_json_without_content_type_is_authenticated_first(client: FlaskClient, recorder: Any,
                                                          auth: Callable[[str, bytes], dict[str, str]]) -> None:
    body = json.dumps(EVENT).encode()
    assert client.post(EVENTS_PATH, data=body, headers=auth("wrong-secret", body)).status_code == 401
    assert recorder.events == []
    assert client.post(EVENTS_PATH, data=body, headers=auth(SECRET, body)).status_code == 200
    assert recorder.events == [EVENT]


# ------------------------------------------------------------------ multipart/form-data


def multipart(fields: list[tuple[str, str]] | None = None, files: Any = None) -> tuple[bytes, str]:
    """A body and content type exactly as ``requests`` encodes ``data=`` with ``files=`` (nothing is sent).

    ``requests`` only builds multipart when there are files, so fields alone go in as ``(None, value)`` parts,
    which is how it encodes a plain field without a filename.
    """
    if not files:
        files, fields = [(key, (None, value)) for key, value in fields or []], None
    prepared = requests.Request("POST", "http://receiver.invalid/", data=fields, files=files).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.body, prepared.headers["Content-Type"]


def test_multipart_fixture_becomes_the_same_task_as_urlencoded(broker_client: FlaskClient,
                                                               events_queue: Any) -> None:
    fields = parse_qsl(FORM_BODY.decode(), keep_blank_values=True)
    body, content_type = multipart(files=[(key, (None, value)) for key, value in fields])
    assert content_type.startswith("multipart/form-data; boundary=")
    assert post_raw(broker_client, body, content_type).get_json() == {"received": 1, "queued": 1, "ignored": 0}
    assert post_raw(broker_client, FORM_BODY, "application/x-www-form-urlencoded").status_code == 200
    [(_, [from_multipart], _), (_, [from_urlencoded], _)] = events_queue()
    assert from_multipart == from_urlencoded == dict(fields)
    assert from_multipart["Message-Id"] == from_multipart["message-id"]


def test_multipart_repeated_keys_and_lists_match_urlencoded(client: FlaskClient, recorder: Any) -> None:
    body, content_type = multipart(
        fields=[("event", "processed"), ("email_id", "abc"), ("recipients", "a@x.org"), ("recipients", "b@x.org"),
                ("tag[]", "one"), ("X-Custom", "1"), ("empty", ""), ("note", "café ok")],
        files=[("X-Custom", ("custom.txt", b"2", "text/plain; charset=utf-8"))])
    assert post_raw(client, body, content_type).status_code == 200
    urlencoded = (b"event=processed&email_id=abc&recipients=a%40x.org&recipients=b%40x.org"
                  b"&tag%5B%5D=one&X-Custom=1&X-Custom=2&empty=&note=caf%C3%A9+ok")
    assert post_raw(client, urlencoded, "application/x-www-form-urlencoded").status_code == 200
    expected = {"event": "processed", "email_id": "abc", "recipients": ["a@x.org", "b@x.org"], "tag": ["one"],
                "X-Custom": ["1", "2"], "empty": "", "note": "café ok"}
    assert recorder.events == [expected, expected]


def test_multipart_by_hand_single_recipient_is_still_a_list(client: FlaskClient, recorder: Any) -> None:
    body = (b"--b0und\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\nprocessed\r\n"
            b"--b0und\r\nContent-Disposition: form-data; name=\"email_id\"\r\n\r\nabc\r\n"
            b"--b0und\r\nContent-Disposition: form-data; name=\"recipients\"\r\n"
            b"Content-Type: text/plain; charset=UTF-8\r\n\r\na@x.org\r\n--b0und--\r\n")
    response = post_raw(client, body, "multipart/form-data; boundary=b0und")
    assert response.get_json() == {"received": 1, "queued": 1, "ignored": 0}
    assert recorder.events == [{"event": "processed", "email_id": "abc", "recipients": ["a@x.org"]}]


def test_multipart_is_authenticated_before_it_is_parsed(client: FlaskClient, recorder: Any,
                                                        auth: Callable[[str, bytes], dict[str, str]]) -> None:
    body, content_type = VALID_MULTIPART, VALID_MULTIPART_TYPE
    for headers, status in ((auth("wrong-secret", body), 401), (auth(SECRET, body), 200)):
        response = client.post(EVENTS_PATH, data=body, headers={"Content-Type": content_type, **headers})
        assert response.status_code == status
    # Garbage under a bad secret is a 401 too: the body is not looked at.
    assert post_raw(client, b"--x\r\nbroken", "multipart/form-data; boundary=x",
                    Authorization="Bearer nope").status_code == 401
    assert recorder.events == [{"event": "delivered", "email_id": "abc"}]


VALID_MULTIPART, VALID_MULTIPART_TYPE = multipart(fields=[("event", "delivered"), ("email_id", "abc")])


@pytest.mark.parametrize(("body", "content_type"), [
    (b"{\"event\": \"delivered\"}", "multipart/form-data; boundary=x"),  # JSON declared as multipart
    (VALID_MULTIPART, "multipart/form-data"),  # no boundary
    (VALID_MULTIPART, "multipart/form-data; boundary=other"),  # the wrong boundary
    (VALID_MULTIPART[:-10], VALID_MULTIPART_TYPE),  # cut before the closing boundary
    (b"no boundary anywhere", "multipart/form-data; boundary=x"),
    (b"--x\r\n", "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n", "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Type: text/plain\r\n\r\nv\r\n--x--\r\n", "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\n\xff\r\n--x--\r\n",
     "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Disposition: form-data; name=\"\xff\"\r\n\r\nv\r\n--x--\r\n",
     "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nv\r\n--x--\r\n", "multipart/form-data; boundary=x"),
])
def test_malformed_multipart_is_400(client: FlaskClient, recorder: Any, body: bytes, content_type: str) -> None:
    response = post_raw(client, body, content_type)
    assert response.status_code == 400
    assert response.get_json() == {"error": "malformed body"}
    assert recorder.events == []


def test_multipart_part_in_another_charset_is_415(client: FlaskClient, recorder: Any) -> None:
    body = (b"--x\r\nContent-Disposition: form-data; name=\"event\"\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ndelivered\r\n--x--\r\n")
    assert post_raw(client, body, "multipart/form-data; boundary=x").status_code == 415
    assert recorder.events == []


def test_multipart_over_the_cap_is_413_before_auth_and_parsing(make_app: Callable[..., Flask],
                                                               recorder: Any) -> None:
    client = make_app(secrets=[SECRET], publisher=recorder, max_body_bytes=1000).test_client()
    body, content_type = multipart(fields=[("event", "delivered"), ("email_id", "abc"), ("pad", "x" * 1000)])
    for authorization in (f"Bearer {SECRET}", "Bearer nope"):
        response = post_raw(client, body, content_type, Authorization=authorization)
        assert (response.status_code, response.get_json()) == (413, {"error": "payload too large"})
    chunked = client.post(EVENTS_PATH, headers={"Content-Type": content_type, "Transfer-Encoding": "chunked", **AUTH},
                          environ_overrides={"wsgi.input": _ChunkedStream(body, chunk=100),
                                             "wsgi.input_terminated": True})
    assert chunked.status_code == 413
    assert recorder.events == []


def test_multipart_with_too_many_parts_is_413(client: FlaskClient, recorder: Any) -> None:
    body, content_type = multipart(files=[("event", (None, "delivered"))] + [("k", (None, ""))] * 1000)
    assert len(body) < 1024 * 1024  # under the body cap: the part limit is what refuses it
    response = post_raw(client, body, content_type)
    assert (response.status_code, response.get_json()) == (413, {"error": "payload too large"})
    assert recorder.events == []


def test_auth_is_checked_before_content(client: FlaskClient) -> None:
    bad = {"Authorization": "Bearer nope"}
    assert post_raw(client, b"{", "application/json", **bad).status_code == 401
    assert post_raw(client, b"x", "text/plain", **bad).status_code == 401


def test_oversize_content_length_is_413_before_auth(make_app: Callable[..., Flask], recorder: Any) -> None:
    client = make_app(secrets=[SECRET], publisher=recorder, max_body_bytes=1000).test_client()
    big = json.dumps([EVENT] * 30).encode()
    assert len(big) > 1000
    assert post_raw(client, big, "application/json").status_code == 413
    response = post_raw(client, big, "application/json", Authorization="Bearer nope")
    assert response.status_code == 413
    assert response.get_json() == {"error": "payload too large"}
    assert recorder.events == []


def test_oversize_chunked_body_is_413_and_read_no_further(make_app: Callable[..., Flask],
                                                         recorder: Any) -> None:
    client = make_app(secrets=[SECRET], publisher=recorder, max_body_bytes=10_000).test_client()
    stream = _ChunkedStream(json.dumps([EVENT] * 5000).encode())
    response = post_chunked(client, stream)
    assert response.status_code == 413
    assert stream.read_total <= 10_001
    assert recorder.events == []


@pytest.mark.parametrize("chunked", [False, True])
def test_body_at_the_cap_is_read_whole_and_one_more_byte_is_413(make_app: Callable[..., Flask],
                                                                recorder: Any, chunked: bool) -> None:
    body = json.dumps([EVENT] * 20).encode()
    # With a Content-Length the body may be exactly the cap. A chunked body only shows its end with one more
    # read, which werkzeug's MAX_CONTENT_LENGTH guard refuses once the cap is reached: it must stay under it.
    fits = len(body) + 1 if chunked else len(body)
    for cap, status in ((fits, 200), (fits - 1, 413)):
        client = make_app(secrets=[SECRET], publisher=recorder, max_body_bytes=cap).test_client()
        if chunked:
            response = post_chunked(client, _ChunkedStream(body, chunk=7))
        else:
            response = post_raw(client, body, "application/json")
        assert response.status_code == status
    assert recorder.events == [EVENT] * 20


def test_chunked_body_within_the_cap_is_accepted(client: FlaskClient, recorder: Any) -> None:
    stream = _ChunkedStream(json.dumps([EVENT] * 50).encode(), chunk=100)
    response = post_chunked(client, stream)
    assert response.get_json() == {"received": 50, "queued": 50, "ignored": 0}


# ------------------------------------------------------------------ the rest of the surface


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_other_methods_and_paths_answer_json(client: FlaskClient) -> None:
    response = client.get(EVENTS_PATH)
    assert response.status_code == 405
    assert response.get_json() == {"error": "method not allowed"}
    response = client.post("/nope")
    assert (response.status_code, response.get_json()) == (404, {"error": "not found"})


def test_unexpected_errors_are_a_bare_json_500(make_app: Callable[..., Flask]) -> None:
    app = make_app(secrets=[SECRET])

    def boom() -> str:
        raise RuntimeError("internal detail /srv/secret/path")

    app.add_url_rule("/boom", view_func=boom)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    assert b"internal detail" not in response.data and b"Traceback" not in response.data
