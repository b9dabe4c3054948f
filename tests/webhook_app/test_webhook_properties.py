"""Properties over random requests: never a 5xx, and never a published task without valid credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES_DIR

EVENTS_PATH = "/api/webhooks/smtp2go/events"
SECRETS = ["whsec-prop-one-0123", "whsec-prop-two-4567"]
MAX_BODY = 512
FIXTURE_BODIES = [p.read_bytes() for p in sorted(FIXTURES_DIR.glob("webhook_*"))]

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Header text: printable, no CR/LF (those cannot be sent as one header), well beyond ASCII.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")),
                      max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"event": st.sampled_from(["delivered", "bounce", "open", "x"])},
    optional={"email_id": st.text(max_size=12), "rcpt": st.emails()},
)
bodies = st.one_of(
    st.binary(max_size=MAX_BODY + 64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=6).map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: urlencode(v).encode()),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5).map(lambda v: urlencode(v).encode()),
    st.sampled_from(FIXTURE_BODIES),
    header_text.map(lambda s: s.encode("utf-8")),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded",
                     "text/plain", "application/json; charset=latin-1", "multipart/form-data; boundary=x",
                     "APPLICATION/JSON", "application/x-www-form-urlencoded; charset=\"utf-8\"", ""]),
    header_text,
)
JSON_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
FORM_TYPES = st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8"])
#: (body, content type): mostly well-formed pairs, so accepted requests are common, plus anything at all.
requests_ = st.one_of(
    st.tuples(st.one_of(st.lists(event_like, max_size=6), event_like, json_values)
              .map(lambda v: json.dumps(v).encode()), JSON_TYPES),
    st.tuples(event_like.map(lambda v: urlencode(v).encode()), FORM_TYPES),
    st.tuples(bodies, content_types),
)


def _wrong_secrets() -> st.SearchStrategy[str]:
    near = st.sampled_from(SECRETS).flatmap(lambda s: st.sampled_from([s[:-1], s + "x", s.upper(), " " + s[1:]]))
    return near | header_text.filter(lambda s: s.strip() not in SECRETS)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


bad_authorization = st.one_of(
    st.none(),
    header_text,
    _wrong_secrets().map(lambda s: f"Bearer {s}"),
    st.tuples(header_text.filter(lambda u: ":" not in u), _wrong_secrets()).map(lambda t: _basic(*t)),
    st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    header_text.map(lambda s: "Basic " + s),
    st.sampled_from(SECRETS),  # a right secret with no scheme is still no credential
)


@st.composite
def bad_signatures(draw: st.DrawFn, body: bytes) -> str | None:
    kind = draw(st.sampled_from(["none", "garbage", "random_hex", "wrong_secret", "stale", "future"]))
    now = int(time.time())
    if kind == "none":
        return None
    if kind == "garbage":
        return draw(header_text)
    if kind == "random_hex":
        digest = draw(st.binary(min_size=32, max_size=32)).hex()
        return f"t={draw(st.integers(0, 10**11))},v1={digest}"
    secret = draw(_wrong_secrets()) if kind == "wrong_secret" else draw(st.sampled_from(SECRETS))
    t = {"wrong_secret": now, "stale": now - draw(st.integers(301, 10**6)),
         "future": now + draw(st.integers(301, 10**6))}[kind]
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _headers(content_type: str | None, authorization: str | None, signature: str | None) -> dict[str, str]:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    if signature is not None:
        headers["X-Mailworker-Signature"] = signature
    return headers


def test_without_valid_credentials_nothing_is_published(make_app: Callable[..., Flask], creds: Any) -> None:
    recorder = creds.Recorder()
    client = make_app(secrets=SECRETS, publisher=recorder, max_body_bytes=MAX_BODY).test_client()

    @SETTINGS
    @given(request=requests_, authorization=bad_authorization, data=st.data())
    def check(request: tuple[bytes, str | None], authorization: str | None, data: st.DataObject) -> None:
        body, content_type = request
        recorder.events.clear()
        signature = data.draw(bad_signatures(body))
        response = client.post(EVENTS_PATH, data=body, headers=_headers(content_type, authorization, signature))
        event(f"status {response.status_code}")
        assert response.status_code in {401, 413}, (response.status_code, response.get_data())
        assert response.is_json
        assert recorder.events == []

    check()


def test_with_valid_credentials_never_a_server_error(make_app: Callable[..., Flask], creds: Any) -> None:
    recorder = creds.Recorder()
    client = make_app(secrets=SECRETS, publisher=recorder, max_body_bytes=MAX_BODY).test_client()

    @SETTINGS
    @given(request=requests_, method=st.sampled_from(["bearer", "basic", "signature"]),
           secret=st.sampled_from(SECRETS), garbage=st.one_of(st.none(), header_text))
    def check(request: tuple[bytes, str | None], method: str, secret: str, garbage: str | None) -> None:
        body, content_type = request
        recorder.events.clear()
        headers = creds.credentials(method, secret, body)
        if garbage is not None:  # a junk value in the *other* auth header must not spoil a valid one
            other = "Authorization" if method == "signature" else "X-Mailworker-Signature"
            headers[other] = garbage
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = client.post(EVENTS_PATH, data=body, headers=headers)
        event(f"status {response.status_code}")
        assert response.status_code in {200, 400, 413, 415}, (response.status_code, response.get_data())
        answer = response.get_json()
        if response.status_code == 200:
            assert answer["queued"] == len(recorder.events)
            assert answer["received"] == answer["queued"] + answer["ignored"]
        else:
            assert set(answer) == {"error"}
            assert recorder.events == []

    check()
