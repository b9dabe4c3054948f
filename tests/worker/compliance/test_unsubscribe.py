"""One-click unsubscribe (RFC 8058): the token, the receiver's endpoint (Flask test client), the headers on a
listed email sent through the fake SMTP2Go over HTTP, list-scoped suppressions in the send path, SMTP2Go's
own unsubscribe webhook, and the whole pipeline (receiver -> broker -> real Celery worker -> suppression)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, text

from tests.conftest import wait_until
from worker.compliance.tokens import BadToken, issue, unsubscribe_headers, verify

SECRET = "test-unsubscribe-secret-0123456789"
BASE = "https://hooks.example.com"


@pytest.fixture
def unsub_env(base_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    base_env.setenv("UNSUBSCRIBE_SECRET", SECRET)
    base_env.setenv("UNSUBSCRIBE_BASE_URL", BASE)
    return base_env


# ------------------------------------------------------------------------------------------------ the token


def test_token_round_trip_holds_no_address_in_clear(unsub_env: Any) -> None:
    token = issue("Alice@Example.com", "news")
    assert "alice" not in token.lower()
    got = verify(token)
    assert (got.address, got.list_id) == ("alice@example.com", "news")


def test_token_refused_when_altered_forged_or_expired(unsub_env: Any) -> None:
    token = issue("alice@example.com", "news")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(BadToken):
        verify(flipped)
    with pytest.raises(BadToken):  # made with another secret: cannot be forged without ours
        verify(issue("alice@example.com", "news", master="another-secret"))
    with pytest.raises(BadToken) as err:
        verify(issue("alice@example.com", "news", now=time.time() - 400 * 86400))
    assert err.value.expired
    for junk in ("", "!!!", "A" * 2000, "AQ"):
        with pytest.raises(BadToken):
            verify(junk)


def test_headers_only_for_listed_mail_with_mailto(unsub_env: pytest.MonkeyPatch) -> None:
    assert unsubscribe_headers("bob@example.com", None) == {}
    unsub_env.setenv("UNSUBSCRIBE_MAILTO", "leave@example.org")
    headers = unsubscribe_headers("bob@example.com", "news")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url, mailto = headers["List-Unsubscribe"].split(", ")
    assert url.startswith(f"<{BASE}/u/") and mailto == "<mailto:leave@example.org?subject=unsubscribe>"
    assert verify(url[len(f"<{BASE}/u/"):-1]).address == "bob@example.com"


# --------------------------------------------------------------------------------------------- the receiver


@pytest.fixture
def receiver(unsub_env: Any) -> tuple[Any, list[str]]:
    from webhook_app import create_app

    published: list[str] = []
    app = create_app({"secrets": ["s"], "publisher": lambda *a, **k: None,
                      "unsubscribe_publisher": published.append, "TESTING": True})
    return app.test_client(), published


ONE_CLICK = {"data": "List-Unsubscribe=One-Click", "content_type": "application/x-www-form-urlencoded"}


def test_get_shows_a_button_and_never_unsubscribes(receiver: Any) -> None:
    client, published = receiver
    token = issue("carol@example.com", "news")
    answer = client.get(f"/u/{token}")
    assert answer.status_code == 200
    assert b'name="List-Unsubscribe" value="One-Click"' in answer.data and b'method="post"' in answer.data
    assert published == []


def test_one_click_post_queues_the_token_and_answers_200(receiver: Any) -> None:
    client, published = receiver
    token = issue("carol@example.com", "news")
    answer = client.post(f"/u/{token}", **ONE_CLICK)
    assert answer.status_code == 200
    assert published == [token]


@pytest.mark.parametrize("case, status", [
    ("no body", 400), ("wrong body", 400), ("json body", 400), ("huge body", 413), ("forged token", 404),
    ("expired token", 410), ("garbage token", 404),
])
def test_bad_input_gets_a_4xx_and_changes_nothing(receiver: Any, case: str, status: int) -> None:
    client, published = receiver
    token = issue("carol@example.com", "news")
    kwargs: dict[str, Any] = dict(ONE_CLICK)
    if case == "no body":
        kwargs = {"content_type": "application/x-www-form-urlencoded"}
    elif case == "wrong body":
        kwargs["data"] = "List-Unsubscribe=Yes"
    elif case == "json body":
        kwargs = {"json": {"List-Unsubscribe": "One-Click"}}
    elif case == "huge body":
        kwargs["data"] = "List-Unsubscribe=One-Click&" + "x" * 100_000
    elif case == "forged token":
        token = issue("carol@example.com", "news", master="not-our-secret")
    elif case == "expired token":
        token = issue("carol@example.com", "news", now=time.time() - 400 * 86400)
    elif case == "garbage token":
        token = "not-a-token"
    answer = client.post(f"/u/{token}", **kwargs)
    assert answer.status_code == status, answer.data
    assert published == []


# ------------------------------------------------------------------------------------ headers and the send path


def _listed(list_id: str | None, to: list[str]) -> str:
    from worker.api.enqueue import enqueue_email
    from worker.infrastructure.db import get_engine

    tracking_id = enqueue_email(to, "Weekly digest", text_body="hello")
    if list_id:
        with get_engine().begin() as conn:
            conn.execute(text("UPDATE messages SET list_id = :l WHERE id = :i"), {"l": list_id, "i": tracking_id})
    return str(tracking_id)


def _job(tracking_id: str) -> Any:
    from worker.infrastructure.db import get_engine
    from worker.sending.jobs import load_job

    with get_engine().connect() as conn:
        return load_job(conn, tracking_id)


@pytest.mark.parametrize("database", ["db", "sqlite_db"])
def test_list_scoped_suppression_in_the_send_path(unsub_env: Any, database: str,
                                                  request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(database)
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import REASON_UNSUBSCRIBE, add_suppression

    with session_scope() as session:
        add_suppression(session, "left@example.com", REASON_UNSUBSCRIBE, list_id="news")
        add_suppression(session, "bounced@example.com", "hard_bounce")
    news = _job(_listed("news", ["left@example.com", "bounced@example.com", "stays@example.com"]))
    assert {r.address: r.suppressed for r in news.recipients} == {
        "left@example.com": True, "bounced@example.com": True, "stays@example.com": False}
    other = _job(_listed("offers", ["left@example.com", "bounced@example.com"]))
    assert {r.address: r.suppressed for r in other.recipients} == {
        "left@example.com": False, "bounced@example.com": True}
    reset = _job(_listed(None, ["left@example.com", "bounced@example.com"]))  # transactional: global only
    assert {r.address: r.suppressed for r in reset.recipients} == {
        "left@example.com": False, "bounced@example.com": True}


def test_listed_email_carries_the_headers_over_http(unsub_env: Any, db: str, fake_api: Any) -> None:
    from worker.sending.delivery import deliver

    tracking_id = _listed("news", ["dora@example.com", "eve@example.com"])
    assert deliver(tracking_id, owner="test").kind == "sent"
    payload = fake_api.sends[-1]["payload"]
    headers = {h["header"]: h["value"] for h in payload.get("custom_headers", [])}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = headers["List-Unsubscribe"].strip("<>")
    assert urlsplit(link).netloc == "hooks.example.com"
    assert verify(link.rsplit("/", 1)[1]).address == "dora@example.com"  # the first To recipient
    plain = _listed(None, ["dora@example.com"])
    deliver(plain, owner="test")
    sent = fake_api.sends[-1]["payload"].get("custom_headers", [])
    assert not any(h["header"].startswith("List-Unsubscribe") for h in sent)


def test_smtp2go_unsubscribe_webhook_scopes_to_the_list(unsub_env: Any, db: str) -> None:
    from worker.infrastructure.db import get_engine, session_scope
    from worker.infrastructure.models import Suppression
    from worker.tracking.events import process_event

    tracking_id = _listed("news", ["dave@example.com"])
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET smtp2go_message_id = 'E-1', status = 'sent' WHERE id = :i"),
                     {"i": tracking_id})
    process_event({"event": "unsubscribe", "id": "u-1", "email_id": "E-1", "time": "2026-11-21T15:40:00Z",
                   "rcpt": "dave@example.com"})
    with session_scope() as session:
        rows = session.execute(select(Suppression.address, Suppression.list_id)).all()
    assert [tuple(r) for r in rows] == [("dave@example.com", "news")]


def test_one_click_through_the_real_worker(unsub_env: Any, celery_worker: Any) -> None:
    """The receiver publishes on the broker; the worker verifies the token and suppresses for that list."""
    from webhook_app import create_app
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import is_suppressed

    client = create_app({"secrets": ["s"], "TESTING": True}).test_client()
    token = issue("frank@example.com", "news")
    assert client.post(f"/u/{token}", **ONE_CLICK).status_code == 200

    def done() -> bool:
        with session_scope() as session:
            return is_suppressed(session, "frank@example.com", "news")

    wait_until(done)
    with session_scope() as session:
        assert not is_suppressed(session, "frank@example.com")  # transactional mail still reaches frank
