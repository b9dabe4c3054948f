"""The fake SMTP2Go server speaks the real wire formats and injects failures on demand.

Every other test that talks to "SMTP2Go" relies on this double, so its shapes are checked against the
fixture files the real API documents, over real HTTP.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from tests.conftest import FIXTURES_DIR
from worker.devtools.fake_smtp2go import FakeSMTP2Go, Scripted, main

FIXTURES = FIXTURES_DIR
KEY = "api-test-key"
EMAIL_ID = re.compile(r"^[0-9A-Za-z]{6}-[0-9A-Za-z]{8}-[0-9A-Za-z]{4}$")
ROOT = Path(__file__).resolve().parents[1]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def shape(obj: Any) -> Any:
    """Keys and value types only, so a response can be compared with a fixture that has other ids."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj[:1]]
    return type(obj).__name__


def message(tracking_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "sender": "Support <support@example.org>",
        "to": ["Alice <alice@example.com>", "bob@example.net"],
        "subject": "Your ticket #1042",
        "text_body": "hello",
        "custom_headers": [{"header": "X-Mailworker-Id", "value": tracking_id or str(uuid.uuid4())}],
    }
    payload.update(overrides)
    return payload


class Receiver:
    """A tiny webhook endpoint that records what SMTP2Go would have posted."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    fail = outer.fail_next > 0
                    outer.fail_next -= fail
                    if not fail:
                        outer.bodies.append({"raw": raw, "headers": dict(self.headers.items())})
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/smtp2go/events"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def json_events(self) -> list[dict[str, Any]]:
        return [json.loads(b["raw"]) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeSMTP2Go]:
    with FakeSMTP2Go(api_key=KEY, timeout_seconds=0.5, seed=7) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def send(fake: FakeSMTP2Go, payload: Any, key: str | None = KEY, timeout: float = 5.0) -> requests.Response:
    headers = {"X-Smtp2go-Api-Key": key} if key else {}
    return requests.post(f"{fake.url}/email/send", json=payload, headers=headers, timeout=timeout)


def search(fake: FakeSMTP2Go, **query: Any) -> requests.Response:
    return requests.post(f"{fake.url}/activity/search", json=query, headers={"X-Smtp2go-Api-Key": KEY},
                         timeout=5)


# -- /email/send ---------------------------------------------------------------------------------------------


def test_success_has_the_documented_shape_and_is_recorded(fake: FakeSMTP2Go) -> None:
    tid = str(uuid.uuid4())
    resp = send(fake, message(tid, cc=["carol@example.com"]))
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert shape(body) == shape(fixture("send_success.json"))
    assert body["data"]["succeeded"] == 3 and body["data"]["failed"] == 0 and body["data"]["failures"] == []
    assert EMAIL_ID.match(body["data"]["email_id"])
    uuid.UUID(body["request_id"])
    assert len(fake.sends) == 1
    rec = fake.sends[0]
    assert rec["email_id"] == body["data"]["email_id"] and rec["tracking_id"] == tid
    assert rec["payload"]["subject"] == "Your ticket #1042"
    assert fake.requests[0]["status"] == 200 and fake.requests[0]["headers"]["X-Smtp2go-Api-Key"] == KEY


def test_fastaccept_returns_only_the_email_id(fake: FakeSMTP2Go) -> None:
    body = send(fake, message(fastaccept=True)).json()
    assert shape(body) == shape(fixture("send_success_fastaccept.json"))
    assert EMAIL_ID.match(body["data"]["email_id"])
    assert len(fake.sends) == 1


def test_every_send_gets_a_fresh_email_id(fake: FakeSMTP2Go) -> None:
    ids = {send(fake, message()).json()["data"]["email_id"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_api_key_is_401(fake: FakeSMTP2Go, key: str | None) -> None:
    resp = send(fake, message(), key=key)
    assert resp.status_code == 401
    data = resp.json()["data"]
    assert data == {"error": "Invalid API key", "error_code": "E_ApiResponseCodes.API_EXCEPTION"}
    assert fake.sends == [] and fake.requests[0]["status"] == 401


def test_api_key_in_the_body_is_accepted(fake: FakeSMTP2Go) -> None:
    assert send(fake, message(api_key=KEY), key=None).status_code == 200


def test_non_json_body_is_400_toplevel(fake: FakeSMTP2Go) -> None:
    resp = requests.post(f"{fake.url}/email/send", data=b"not json{", timeout=5,
                         headers={"X-Smtp2go-Api-Key": KEY, "Content-Type": "application/json"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["error_code"] == fixture("send_error_toplevel.json")["error_code"]
    assert fake.sends == []


@pytest.mark.parametrize(("overrides", "fieldname"), [
    ({"sender": None}, "sender"),
    ({"to": []}, "to"),
    ({"to": "alice@example.com"}, "to"),
    ({"to": ["ok@example.com", 5]}, "to"),
    ({"cc": "carol@example.com"}, "cc"),
    ({"text_body": None}, "text_body"),
])
def test_validation_errors_name_the_field(fake: FakeSMTP2Go, overrides: dict, fieldname: str) -> None:
    payload = {k: v for k, v in message(**overrides).items() if v is not None}
    resp = send(fake, payload)
    assert resp.status_code == 400
    body = resp.json()
    assert shape(body) == shape(fixture("send_error_toplevel.json"))
    assert body["field_validation_errors"]["fieldname"] == fieldname
    assert fake.sends == []


def test_html_body_or_template_is_enough(fake: FakeSMTP2Go) -> None:
    base = {k: v for k, v in message().items() if k != "text_body"}
    assert send(fake, {**base, "html_body": "<p>hi</p>"}).status_code == 200
    assert send(fake, {**base, "template_id": "1234567"}).status_code == 200


def test_scripted_responses_are_fifo_then_default(fake: FakeSMTP2Go) -> None:
    fake.script(Scripted.server_error(), Scripted.rate_limited(reset_seconds=3), Scripted.error_400_data(),
                Scripted.error_400_toplevel(), Scripted.failures_strings(), Scripted.fastaccept())
    r500, r429, r400d, r400t, rfail, rfast, rdefault = (send(fake, message()) for _ in range(7))
    assert r500.status_code == 500 and "error" in r500.json()["data"]
    assert r429.status_code == 429
    assert r429.headers["X-Ratelimit-Reset"] == "3" and r429.headers["Retry-After"] == "3"
    assert r400d.status_code == 400 and shape(r400d.json()) == shape(fixture("send_error_data.json"))
    assert r400t.status_code == 400 and r400t.json() == fixture("send_error_toplevel.json")
    assert rfail.status_code == 200 and shape(rfail.json()) == shape(fixture("send_failures_strings.json"))
    assert shape(rfast.json()) == shape(fixture("send_success_fastaccept.json"))
    assert rdefault.status_code == 200 and rdefault.json()["data"]["succeeded"] == 2
    assert [r["status"] for r in fake.requests] == [500, 429, 400, 400, 200, 200, 200]
    accepted = [rfast.json()["data"]["email_id"], rdefault.json()["data"]["email_id"]]
    assert [s["email_id"] for s in fake.sends] == accepted


def test_scripted_raw_body_and_explicit_accept(fake: FakeSMTP2Go) -> None:
    fake.script(Scripted(502, "<html>Bad gateway</html>"), Scripted(500, accept=True))
    r1 = send(fake, message("t-1"))
    assert r1.status_code == 502 and r1.text == "<html>Bad gateway</html>"
    assert r1.headers["Content-Type"].startswith("text/html")
    assert send(fake, message("t-2")).status_code == 500
    assert fake.count_for("t-1") == 0 and fake.count_for("t-2") == 1


def test_slow_response_triggers_client_read_timeout_but_counts_as_accepted(fake: FakeSMTP2Go) -> None:
    tid = str(uuid.uuid4())
    fake.script(Scripted.slow(2.0))
    start = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        send(fake, message(tid), timeout=0.2)
    assert time.monotonic() - start < 1.8  # well under the 2 s the server takes (slack for a loaded machine)
    assert fake.count_for(tid) == 1  # SMTP2Go took it even though the client never heard back
    assert send(fake, message()).status_code == 200  # the server is still answering others meanwhile


def test_injected_failures_and_runtime_changes(fake: FakeSMTP2Go) -> None:
    fake.set_failure(error_rate=1.0)
    r = send(fake, message())
    assert r.status_code == 500 and r.json()["data"]["error_code"].startswith("E_ApiResponseCodes.")
    fake.set_failure(error_rate=0.0, rate_limit_rate=1.0)
    r = send(fake, message())
    assert r.status_code == 429 and r.headers["X-Ratelimit-Reset"] == "1"
    fake.set_failure(rate_limit_rate=0.0, timeout_rate=1.0)
    tid = str(uuid.uuid4())
    with pytest.raises(requests.ReadTimeout):
        send(fake, message(tid), timeout=0.2)
    assert fake.count_for(tid) == 1
    fake.set_failure(timeout_rate=0.0, latency=0.05)
    start = time.monotonic()
    assert send(fake, message()).status_code == 200
    assert time.monotonic() - start >= 0.05
    assert len(fake.sends) == 2


def test_seeded_error_rate_is_reproducible() -> None:
    def run() -> list[int]:
        with FakeSMTP2Go(error_rate=0.5, seed=42) as f, requests.Session() as s:
            return [s.post(f"{f.url}/email/send", json=message(), headers={"X-Smtp2go-Api-Key": KEY},
                           timeout=5).status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert {200, 500} == set(first)


def test_counts_and_duplicates(fake: FakeSMTP2Go) -> None:
    send(fake, message("dup"))
    send(fake, message("dup"))
    send(fake, message("dup", custom_headers=[{"header": "x-mailworker-id", "value": "dup"}]))
    send(fake, message("once"))
    send(fake, message(custom_headers=[]))
    assert fake.count_for("dup") == 3 and fake.count_for("once") == 1 and fake.count_for("never") == 0
    assert fake.duplicates() == {"dup": 3}
    assert fake.sends[-1]["tracking_id"] is None
    fake.script(Scripted.server_error())
    fake.reset()
    assert fake.sends == [] and fake.requests == [] and fake.duplicates() == {}
    assert send(fake, message()).status_code == 200  # the script was cleared too


def test_unknown_paths_are_404_json_and_v3_prefix_is_optional(fake: FakeSMTP2Go) -> None:
    base = fake.url.removesuffix("/v3")
    assert requests.post(f"{base}/email/send", json=message(), headers={"X-Smtp2go-Api-Key": KEY},
                         timeout=5).status_code == 200
    r = requests.get(f"{fake.url}/email/send", timeout=5)
    assert r.status_code == 404 and "error" in r.json()["data"]
    assert requests.post(f"{fake.url}/nope", json={}, timeout=5).status_code == 404


def test_keep_alive_reuses_one_connection(fake: FakeSMTP2Go) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    body = json.dumps(message())
    socks = []
    for _ in range(50):
        conn.request("POST", "/v3/email/send", body=body,
                     headers={"X-Smtp2go-Api-Key": KEY, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["data"]["email_id"]
        socks.append(conn.sock)
    conn.close()
    assert len({id(s) for s in socks}) == 1 and socks[0] is not None
    assert len(fake.sends) == 50


def test_concurrent_senders_are_all_recorded(fake: FakeSMTP2Go) -> None:
    def worker(n: int) -> None:
        with requests.Session() as s:
            for i in range(25):
                s.post(f"{fake.url}/email/send", json=message(f"t-{n}-{i}"),
                       headers={"X-Smtp2go-Api-Key": KEY}, timeout=5).raise_for_status()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.sends) == 200 and fake.duplicates() == {}
    assert len({s["email_id"] for s in fake.sends}) == 200


# -- webhooks ------------------------------------------------------------------------------------------------


def test_json_webhooks_with_bearer_auth(receiver: Receiver) -> None:
    with FakeSMTP2Go(webhook_url=receiver.url, webhook_auth=("bearer", "s3cret"),
                     webhook_events=("processed", "delivered", "bounce")) as fake:
        tid = str(uuid.uuid4())
        email_id = send(fake, message(tid)).json()["data"]["email_id"]
        assert fake.wait_for_webhooks(5)
    assert all(b["headers"]["Authorization"] == "Bearer s3cret" for b in receiver.bodies)
    assert all(b["headers"]["Content-Type"] == "application/json" for b in receiver.bodies)
    events = receiver.json_events()
    assert [e["event"] for e in events] == ["processed", "delivered", "delivered", "bounce", "bounce"]
    processed, delivered, bounce = events[0], events[1], events[3]
    assert processed["recipients"] == ["alice@example.com", "bob@example.net"]
    assert processed["subject"] == "Your ticket #1042" and processed["sender"] == "support@example.org"
    assert set(fixture("webhook_delivered.json")) - {"srchost"} <= set(delivered)
    assert {e["rcpt"] for e in events[1:3]} == {"alice@example.com", "bob@example.net"}
    assert bounce["bounce"] == "hard" and bounce["message"].startswith("550")
    for e in events:
        assert e["email_id"] == email_id and e["X-Mailworker-Id"] == tid
        assert re.fullmatch(r"[0-9a-f]{32}", e["id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"])
        assert datetime.fromisoformat(e["sendtime"]).tzinfo is not None
    assert len({e["id"] for e in events}) == 5
    assert [w["status"] for w in fake.webhooks] == [200] * 5


def test_form_webhooks_with_basic_auth(receiver: Receiver) -> None:
    with FakeSMTP2Go(webhook_url=receiver.url, webhook_auth=("basic", "smtp2go:pa:ss"),
                     webhook_format="form", webhook_events=("delivered",)) as fake:
        tid = str(uuid.uuid4())
        email_id = send(fake, message(tid, to=["alice@example.com"])).json()["data"]["email_id"]
        assert fake.wait_for_webhooks(5)
    assert len(receiver.bodies) == 1
    hit = receiver.bodies[0]
    assert hit["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert hit["headers"]["Authorization"] == "Basic " + base64.b64encode(b"smtp2go:pa:ss").decode()
    form = {k: v[0] for k, v in parse_qs(hit["raw"].decode(), strict_parsing=True).items()}
    expected = parse_qs((FIXTURES / "webhook_delivered.form").read_text().strip())
    assert {"event", "id", "email_id", "rcpt", "sender", "time", "sendtime", "host", "message"} <= set(form)
    assert {"event", "rcpt", "email_id"} <= set(expected)
    assert form["event"] == "delivered" and form["rcpt"] == "alice@example.com"
    assert form["email_id"] == email_id and form["X-Mailworker-Id"] == tid


def test_webhook_delay_and_retry_on_failure(receiver: Receiver) -> None:
    receiver.fail_next = 2
    with FakeSMTP2Go(webhook_url=receiver.url, webhook_events=("delivered",), webhook_delay=0.2,
                     webhook_backoff=0.02) as fake:
        start = time.monotonic()
        send(fake, message(to=["alice@example.com"]))
        assert time.monotonic() - start < 0.2  # the API answer never waits for webhooks
        assert fake.wait_for_webhooks(5)
        assert time.monotonic() - start >= 0.2
    assert len(receiver.bodies) == 1
    assert fake.webhooks[0]["statuses"] == [500, 500, 200] and fake.webhooks[0]["status"] == 200


def test_webhook_to_a_dead_receiver_gives_up_without_blocking() -> None:
    with FakeSMTP2Go(webhook_url="http://127.0.0.1:9/hook", webhook_events=("delivered",),
                     webhook_retries=1, webhook_backoff=0.01) as fake:
        assert send(fake, message(to=["a@example.com"])).status_code == 200
        assert fake.wait_for_webhooks(5)
        assert fake.webhooks[0]["status"] is None and fake.webhooks[0]["attempts"] == 2
        assert fake.webhooks[0]["error"]


def test_post_event_posts_now_and_returns_status(receiver: Receiver) -> None:
    with FakeSMTP2Go(webhook_url=receiver.url, webhook_events=()) as fake:
        email_id = send(fake, message("tid-1")).json()["data"]["email_id"]
        assert fake.post_event("open", email_id, "alice@example.com", **{"user-agent": "UA/1"}) == 200
        receiver.fail_next = 1
        assert fake.post_event("spam", "unknown-id", "bob@example.net") == 500
    [ev] = receiver.json_events()
    assert ev["event"] == "open" and ev["email_id"] == email_id and ev["rcpt"] == "alice@example.com"
    assert ev["user-agent"] == "UA/1" and ev["X-Mailworker-Id"] == "tid-1"
    assert [w["status"] for w in fake.webhooks] == [200, 500]


# -- /activity/search ----------------------------------------------------------------------------------------


def _window(**extra: Any) -> dict[str, Any]:
    """An explicit window around now (the documented defaults start at today's midnight UTC)."""
    return {"start_date": (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_date": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), **extra}


def test_activity_search_matches_the_documented_fixture_key_by_key(fake: FakeSMTP2Go) -> None:
    """The simulator must never drift back to a shape SMTP2Go does not send (custom_headers as a list, webhook
    event names, ``count``): every event kind in activity_search.json is compared key by key, type by type."""
    doc = fixture("activity_search.json")
    email_id = send(fake, message("6d9e2a09", to=["alice@example.com"])).json()["data"]["email_id"]
    for event in ("hard-bounced", "soft-bounced", "rejected"):
        fake.add_activity(email_id, event, "alice@example.com")
    answer = search(fake, **_window(custom_headers=["X-Mailworker-Id"])).json()

    assert set(answer) == set(doc) and set(answer["data"]) == set(doc["data"])
    assert {k: shape(v) for k, v in answer["data"].items() if k != "events"} == \
        {k: shape(v) for k, v in doc["data"].items() if k != "events"}
    assert type(answer["request_id"]) is type(doc["request_id"])
    ours = {e["event"]: e for e in answer["data"]["events"]}
    theirs = {e["event"]: e for e in doc["data"]["events"]}
    assert set(ours) == set(theirs)  # the documented names, not the webhook ones
    for name, documented in theirs.items():
        assert shape(ours[name]) == shape(documented), name  # same keys, same value types
        assert isinstance(ours[name]["custom_headers"], dict)
        datetime.strptime(ours[name]["date"], "%Y-%m-%dT%H:%M:%SZ")
    assert ours["delivered"]["custom_headers"] == {"X-Mailworker-Id": "6d9e2a09"}
    assert answer["data"]["total_events"] == 5 and answer["data"]["continue_token"] is None


def test_activity_search_returns_only_the_requested_custom_headers(fake: FakeSMTP2Go) -> None:
    send(fake, message("tid-1", to=["a@example.com"],
                       custom_headers=[{"header": "X-Mailworker-Id", "value": "tid-1"},
                                       {"header": "X-Other", "value": "o"}]))
    events = search(fake, **_window()).json()["data"]["events"]
    assert [e["custom_headers"] for e in events] == [{}, {}]
    events = search(fake, **_window(custom_headers=["x-mailworker-id", "X-Missing"])).json()["data"]["events"]
    assert events[0]["custom_headers"] == {"x-mailworker-id": "tid-1"}


def test_activity_search_filters(fake: FakeSMTP2Go) -> None:
    ids = {}
    recipients = {"aaa-111": ["alice@example.com"], "bbb-222": ["bob@example.net", "carol@example.com"]}
    for tid, to in recipients.items():
        ids[tid] = send(fake, message(tid, to=to, subject=f"About {tid[:3]}")).json()["data"]["email_id"]
    fake.add_activity(ids["bbb-222"], "hard-bounced", "bob@example.net")

    def found(**q: Any) -> set[tuple[str, str, str]]:
        data = search(fake, **_window(**q)).json()["data"]
        assert data["total_events"] == len(data["events"])
        return {(e["email_id"], e["event"], e["recipient"]) for e in data["events"]}

    assert len(found()) == 7
    assert found(search_email_id=ids["aaa-111"]) == {(ids["aaa-111"], "processed", "alice@example.com"),
                                                     (ids["aaa-111"], "delivered", "alice@example.com")}
    assert {r for _, _, r in found(search_recipient="CAROL@")} == {"carol@example.com"}
    assert found(event_types=["hard-bounced"]) == {(ids["bbb-222"], "hard-bounced", "bob@example.net")}
    assert {i for i, _, _ in found(search="About aaa | nobody")} == {ids["aaa-111"]}
    assert {i for i, _, _ in found(search=ids["bbb-222"])} == {ids["bbb-222"]}
    assert found(search="aaa-111") == set()  # a custom header is not a search field
    assert len(found(search_sender="support@example.org")) == 7 and found(search_subject="nothing") == set()

    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert search(fake, start_date=past, end_date=past).json()["data"]["total_events"] == 0  # end exclusive
    assert search(fake, start_date=future, end_date=future).json()["data"]["total_events"] == 0
    assert search(fake, start_date=past).json()["data"]["total_events"] == 7  # end defaults to now
    assert search(fake, start_date="yesterday").status_code == 400


@pytest.mark.parametrize(("query", "field"), [
    ({"search_email_id": ["a", "b"]}, "search_email_id"),  # documented as one id (a string)
    ({"email_id": ["a"]}, "email_id"),  # not a field of this endpoint
    ({"event_types": ["bounce"]}, "event_types"),  # a webhook name, not an activity name
    ({"custom_headers": "X-Mailworker-Id"}, "custom_headers"),
    ({"limit": 1001}, "limit"),
    ({"continue_token": "bm9wZQ=="}, "continue_token"),
])
def test_activity_search_refuses_what_smtp2go_does_not_document(fake: FakeSMTP2Go, query: dict, field: str) -> None:
    r = search(fake, **query)
    assert r.status_code == 400
    assert r.json()["field_validation_errors"]["fieldname"] == field


def test_activity_search_pages_with_continue_token(fake: FakeSMTP2Go) -> None:
    for n in range(3):
        send(fake, message(f"tid-{n}", to=["x@example.com"]))
    q = _window(custom_headers=["X-Mailworker-Id"], limit=4)
    first = search(fake, **q).json()["data"]
    assert len(first["events"]) == 4 and first["total_events"] == 6 and isinstance(first["continue_token"], str)
    second = search(fake, **q, continue_token=first["continue_token"]).json()["data"]
    assert len(second["events"]) == 2 and second["continue_token"] is None
    keys = [(e["email_id"], e["event"]) for e in first["events"] + second["events"]]
    assert len(set(keys)) == 6
    other = search(fake, **_window(search_recipient="y@"), continue_token=first["continue_token"])
    assert other.status_code == 400  # a token continues the same search only
    assert len(search(fake, **_window()).json()["data"]["events"]) == 6  # default limit 100


def test_activity_search_auth_rate_limit_and_scripted_errors() -> None:
    with FakeSMTP2Go(activity_rate_per_minute=3) as fake:
        r = requests.post(f"{fake.url}/activity/search", json={"api_key": "wrong"}, timeout=5)
        assert r.status_code == 401
        fake.script_activity(Scripted.server_error(500))
        failed = search(fake)
        assert failed.status_code == 500 and failed.json()["data"]["error_code"].endswith("API_EXCEPTION")
        assert [search(fake).status_code for _ in range(3)] == [200, 200, 200]
        limited = search(fake)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["X-Ratelimit-Reset"]) <= 60 and limited.headers["Retry-After"]
        assert "error" in limited.json()["data"]
        assert send(fake, message()).status_code == 200  # sending has its own budget
    with pytest.raises(ValueError, match="documented"):
        fake.add_activity("x", "bounce", "a@example.com")


# -- lifecycle and CLI ---------------------------------------------------------------------------------------


def test_stop_releases_port_and_wakes_sleeping_handlers() -> None:
    fake = FakeSMTP2Go(timeout_seconds=30).start()
    fake.script(Scripted.slow(30))
    t = threading.Thread(target=lambda: pytest.raises(requests.RequestException, send, fake, message(),
                                                      timeout=0.1))
    t.start()
    t.join()
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2
    with pytest.raises(requests.ConnectionError):
        send(fake, message(), timeout=1)


def test_main_runs_in_foreground_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "worker.devtools.fake_smtp2go", "--port", "0", "--api-key", "k1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+/v3)", line)
        assert url, line
        r = requests.post(f"{url.group(1)}/email/send", json=message(), headers={"X-Smtp2go-Api-Key": "k1"},
                          timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["--webhook-format", "xml"])


def test_garbage_requests_do_not_break_the_server(fake: FakeSMTP2Go) -> None:
    cases = {
        b"NONSENSE\r\n\r\n": b"400",  # the stdlib answers HTTP/0.9-style, without a status line
        b"\xff\xfe\x00garbage": b"400",
        b"POST /v3/email/send HTTP/1.1\r\nContent-Length: zz\r\n\r\n": b"HTTP/1.1 413",
        b"POST /v3/email/send HTTP/1.1\r\nContent-Length: -5\r\n\r\n": b"HTTP/1.1 413",
        b"POST /v3/email/send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n":
            b"HTTP/1.1 413",
    }
    for raw, expected in cases.items():
        with socket.create_connection(("127.0.0.1", fake.port), timeout=2) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert expected in reply[:200], (raw, reply[:200])
    chunked = requests.post(f"{fake.url}/email/send", data=iter([b"{}"]), timeout=5,
                            headers={"X-Smtp2go-Api-Key": KEY})
    assert chunked.status_code == 413
    r = send(fake, [1, 2, 3])
    assert r.status_code == 400
    assert requests.post(f"{fake.url}/activity/search", data=b"[", timeout=5,
                         headers={"X-Smtp2go-Api-Key": KEY}).status_code == 400
    assert send(fake, message()).status_code == 200
