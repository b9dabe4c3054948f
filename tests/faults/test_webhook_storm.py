"""A webhook storm: 10,000 events (30% duplicates, shuffled) through the real receiver and real event workers.

Two copies of the same ~1,000 sent messages are stored (copy A and copy B: same recipients' local parts, other
ids and domains). Copy A gets the storm: every event POSTed to the ``web`` process as the Procfile starts it (Bearer
secret), by several client threads at once, in shuffled order with 30% re-deliveries, processed by two real
worker processes. Copy B gets the same events in event-time order, each once, applied directly with
``worker.tracking.events.process_event`` (one message at a time; per message strictly in order). The final state of the
two copies must be identical: message status and timestamps, every recipient's status, timestamps, counts and
bounce type, and the suppression list.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from tests.conftest import gunicorn_server
from tests.faults.harness import WorkerProcess, report
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Message,
    MessageStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Suppression,
    TrackingEvent,
    Transport,
)
from worker.tracking.events import process_event

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

SECRET = "whsec-storm-0123456789abcdef"
MESSAGES = 1000
TOTAL_POSTS = 10_000
DUPLICATE_SHARE = 0.30
CLIENT_THREADS = 4
EVENT_POOL, EVENT_CONCURRENCY = "threads", 4
SEED = 20261123
BASE = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)
DOMAIN = {"A": "a.example.com", "B": "b.example.org"}
_MX = "mx1.example.com [203.0.113.25]"
_UA = "Mozilla/5.0 (X11; Linux x86_64)"


# --------------------------------------------------------------------------------------------- the stream


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _scenario(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """What happens to one recipient, in order: (event, extra fields)."""
    soft = {"bounce": "soft", "context": "RCPT TO", "host": _MX, "message": "452 4.2.2 Mailbox full"}
    hard = {"bounce": "hard", "context": "RCPT TO", "host": _MX,
            "message": "550 5.1.1 Recipient address rejected: User unknown"}
    delivered = {"host": _MX, "context": "Unavailable", "message": "250 2.0.0 Ok: queued"}
    opened = {"user-agent": _UA, "srchost": "203.0.113.90"}
    clicked = {"url": "https://example.org/x", "user-agent": _UA, "srchost": "203.0.113.90"}
    kind = rng.choices(["delivered", "engaged", "soft_then_delivered", "soft_only", "hard", "spam", "reject",
                        "unsubscribe"], weights=[20, 35, 10, 7, 8, 7, 5, 8])[0]
    if kind == "delivered":
        return [("delivered", delivered)]
    if kind == "engaged":
        steps = [("delivered", delivered)] + [("open", opened)] * rng.randint(1, 4)
        return steps + [("click", clicked)] * rng.randint(0, 3)
    if kind == "soft_then_delivered":
        steps = [("bounce", soft)] * rng.randint(1, 2) + [("delivered", delivered)]
        return steps + [("open", opened)] * rng.randint(0, 2)
    if kind == "soft_only":
        return [("bounce", soft)] * rng.randint(1, 3)
    if kind == "hard":
        return [("bounce", soft)] * rng.randint(0, 1) + [("bounce", hard)]
    if kind == "spam":
        return [("delivered", delivered), ("open", opened), ("spam", {})]
    if kind == "reject":
        return [("reject", {"context": "submission", "message": "Recipient address is on the suppression list"})]
    steps = [("delivered", delivered), ("open", opened), ("unsubscribe", {})]
    return steps + [("resubscribe", {})] * rng.randint(0, 1)


def build_world(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Messages (as plain dicts) and the unique event stream for copy A, in event-time order."""
    messages: list[dict[str, Any]] = []
    events: list[tuple[datetime, int, dict[str, Any]]] = []
    seq = 0
    for m in range(MESSAGES):
        n_rcpt = rng.choices([1, 2, 3, 4], weights=[40, 30, 20, 10])[0]
        locals_ = [f"r{m}-{k}" for k in range(n_rcpt)]
        t0 = BASE + timedelta(minutes=m % 600, seconds=m // 600)
        email_id = f"storm{m:05d}-{rng.getrandbits(40):010x}"
        messages.append({"n": m, "email_id": email_id, "locals": locals_, "t0": t0})
        events.append((t0, seq, {"event": "processed", "recipients": locals_, "email_id": email_id}))
        seq += 1
        for local in locals_:
            when = t0
            for name, extra in _scenario(rng):
                when += timedelta(seconds=rng.randint(1, 900))  # strictly increasing per recipient
                events.append((when, seq, {"event": name, "rcpt": local, "email_id": email_id, **extra}))
                seq += 1
    events.sort(key=lambda e: (e[0], e[1]))
    stream = []
    for when, _, ev in events:
        ev = dict(ev)
        ev["id"] = uuid.UUID(int=rng.getrandbits(128)).hex
        ev["time"] = _iso(when)
        ev["sendtime"] = _iso(when - timedelta(seconds=1))
        ev["sender"] = "support@example.org"
        stream.append(ev)
    return messages, stream


def for_copy(ev: dict[str, Any], copy: str) -> dict[str, Any]:
    """The event as SMTP2Go would send it for one copy: addresses, email_id and event id made distinct."""
    out = dict(ev)
    out["email_id"] = f"{copy}-{ev['email_id']}"
    out["id"] = f"{copy}-{ev['id']}"
    if "rcpt" in ev:
        out["rcpt"] = f"{ev['rcpt']}@{DOMAIN[copy]}"
    if "recipients" in ev:
        out["recipients"] = [f"{r}@{DOMAIN[copy]}" for r in ev["recipients"]]
    return out


def store_messages(messages: list[dict[str, Any]], copy: str) -> dict[str, int]:
    """Insert the messages as the send path leaves them (sent through SMTP2Go); returns email_id -> n."""
    sent_at = BASE - timedelta(minutes=5)
    with session_scope() as session:
        for msg in messages:
            row = Message(
                id=str(uuid.uuid4()), status=MessageStatus.SENT, transport=Transport.SMTP2GO,
                sender="Support <support@example.org>", subject=f"storm {msg['n']}", text_body="x",
                smtp2go_message_id=f"{copy}-{msg['email_id']}",
                message_id_header=f"<storm{copy}{msg['n']}@example.org>", queued_at=sent_at, sent_at=sent_at,
                attempts=1, crashes=0, size_bytes=1,
            )
            for local in msg["locals"]:
                row.recipients.append(Recipient(address=f"{local}@{DOMAIN[copy]}", kind=RecipientKind.TO,
                                                status=RecipientStatus.SENT, sent_at=sent_at, open_count=0,
                                                click_count=0))
            session.add(row)
    return {f"{copy}-{m['email_id']}": m["n"] for m in messages}


_RCPT_FIELDS = ("status", "delivered_at", "bounced_at", "bounce_type", "opened_at", "open_count", "clicked_at",
                "click_count", "complained_at", "rejected_at", "unsubscribed_at")
_MSG_FIELDS = ("status", "email_delivered_at", "email_bounced_at", "email_opened_at", "email_clicked_at",
               "email_complained_at")


def snapshot(copy: str) -> dict[int, dict[str, Any]]:
    """Final state of one copy, keyed by message number, addresses reduced to their local part."""
    out: dict[int, dict[str, Any]] = {}
    with session_scope() as session:
        msgs = session.scalars(
            select(Message).where(Message.smtp2go_message_id.like(f"{copy}-%"))
            .options(selectinload(Message.recipients))
        ).all()
        for m in msgs:
            n = int(m.smtp2go_message_id.split("-", 2)[1][5:10])  # type: ignore[union-attr]
            out[n] = {
                **{f: _plain(getattr(m, f)) for f in _MSG_FIELDS},
                "recipients": {r.address.split("@")[0]: {f: _plain(getattr(r, f)) for f in _RCPT_FIELDS}
                               for r in m.recipients},
            }
    return out


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def suppressed_locals(copy: str) -> set[str]:
    with session_scope() as session:
        addrs = session.scalars(select(Suppression.address).where(Suppression.address.like(f"%@{DOMAIN[copy]}")))
        return {a.split("@")[0] for a in addrs}


def differences(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> list[str]:
    diffs: list[str] = []
    for n in sorted(set(a) | set(b)):
        ma, mb = a.get(n), b.get(n)
        if ma is None or mb is None:
            diffs.append(f"message {n}: present only in {'B' if ma is None else 'A'}")
            continue
        for f in _MSG_FIELDS:
            if ma[f] != mb[f]:
                diffs.append(f"message {n} {f}: storm={ma[f]} ordered={mb[f]}")
        for local in sorted(set(ma["recipients"]) | set(mb["recipients"])):
            ra, rb = ma["recipients"].get(local, {}), mb["recipients"].get(local, {})
            for f in _RCPT_FIELDS:
                if ra.get(f) != rb.get(f):
                    diffs.append(f"message {n} {local} {f}: storm={ra.get(f)} ordered={rb.get(f)}")
    return diffs


# --------------------------------------------------------------------------------------------- processes


@pytest.fixture
def receiver(db: str, tmp_path: Path) -> Iterator[str]:
    """The receiver as deployed (the Procfile's ``web`` line, two workers), secret from the environment, publishing
    to Redis."""
    env = {**os.environ, "SMTP2GO_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    with gunicorn_server(env, tmp_path / "gunicorn.log", graceful=False) as base:
        yield f"{base}/api/webhooks/smtp2go/events"


def post_all(url: str, bodies: list[bytes], threads: int) -> Counter[int]:
    """POST every body (one event each) from ``threads`` clients; returns HTTP status counts."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    chunks = [bodies[i::threads] for i in range(threads)]

    def client(chunk: list[bytes]) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
        local: Counter[int] = Counter()
        for body in chunk:
            for attempt in range(5):  # like SMTP2Go: anything but 2xx is retried
                try:
                    status = session.post(url, data=body, headers=headers, timeout=10).status_code
                except requests.RequestException:
                    status = 0
                if 200 <= status < 300:
                    break
                time.sleep(0.1 * (attempt + 1))
            local[status] += 1
        session.close()
        with lock:
            statuses.update(local)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, chunks))
    return statuses


def apply_in_order(stream: list[dict[str, Any]]) -> None:
    """Copy B: the ordered, de-duplicated stream, straight into process_event. Messages are independent (every
    address belongs to one message), so several messages are applied at once; each message's events in order."""
    by_message: dict[str, list[dict[str, Any]]] = {}
    for ev in stream:
        by_message.setdefault(ev["email_id"], []).append(ev)

    def run(events: list[dict[str, Any]]) -> None:
        for ev in events:
            result = process_event(ev)
            assert result["status"] == "applied", result

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, by_message.values()))


# --------------------------------------------------------------------------------------------- the test


def test_webhook_storm_matches_ordered_stream(receiver: str, workers: Callable[..., WorkerProcess]) -> None:
    rng = random.Random(SEED)
    messages, stream = build_world(rng)
    unique = int(round(TOTAL_POSTS * (1 - DUPLICATE_SHARE)))
    assert len(stream) >= unique, f"the generator made only {len(stream)} events"
    keep = set(rng.sample(range(len(stream)), unique))
    stream = [ev for i, ev in enumerate(stream) if i in keep]  # still in event-time order
    posts = [for_copy(ev, "A") for ev in stream]
    posts += [for_copy(ev, "A") for ev in rng.choices(stream, k=TOTAL_POSTS - unique)]
    rng.shuffle(posts)
    bodies = [json.dumps(p).encode() for p in posts]
    store_messages(messages, "A")
    store_messages(messages, "B")

    # Two event worker processes (row locks and the event-id unique key are what keep them apart).
    event_workers = [workers(name, pool=EVENT_POOL, concurrency=EVENT_CONCURRENCY, wait=False)
                     for name in ("faultsEvA", "faultsEvB")]
    for proc in event_workers:
        proc.wait_ready()
    # Copy B's ordered application runs meanwhile (it only needs the same CPU, not the same rows).
    ordered_seconds = 0.0
    ordered_error: list[BaseException] = []

    def ordered() -> None:
        nonlocal ordered_seconds
        t = time.monotonic()
        try:
            apply_in_order([for_copy(ev, "B") for ev in stream])
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            ordered_error.append(err)
        ordered_seconds = time.monotonic() - t

    ordered_thread = threading.Thread(target=ordered, name="ordered-copy-b", daemon=True)
    started = time.monotonic()
    ordered_thread.start()
    statuses = post_all(receiver, bodies, CLIENT_THREADS)
    post_seconds = time.monotonic() - started

    def stored() -> tuple[int, int]:
        with session_scope() as session:
            total = session.scalar(select(func.count()).select_from(TrackingEvent)
                                   .where(TrackingEvent.provider_event_id.like("A-%"))) or 0
            pending = session.scalar(select(func.count()).select_from(TrackingEvent)
                                     .where(TrackingEvent.provider_event_id.like("A-%"),
                                            TrackingEvent.applied_at.is_(None))) or 0
        return int(total), int(pending)

    deadline = time.monotonic() + 180
    while (counts := stored()) != (unique, 0):
        assert time.monotonic() < deadline, f"events stored/pending {counts}, expected ({unique}, 0)"
        time.sleep(0.5)
    storm_seconds = time.monotonic() - started

    ordered_thread.join(240)
    assert not ordered_thread.is_alive(), "the ordered application did not finish"
    if ordered_error:
        raise ordered_error[0]

    a, b = snapshot("A"), snapshot("B")
    diffs = differences(a, b)
    sup_a, sup_b = suppressed_locals("A"), suppressed_locals("B")
    sup_diff = sorted(sup_a ^ sup_b)
    by_field = Counter(d.split(":")[0].split()[-1] for d in diffs)
    handled = [len(re.findall(r"mailworker\.process_event\[[^\]]+\] succeeded", p.log_text())) for p in event_workers]
    report("webhook_storm", posted=len(bodies), unique=unique, duplicates_posted=len(bodies) - unique,
           http=dict(statuses), messages=len(a), recipients=sum(len(m["recipients"]) for m in a.values()),
           post_seconds=post_seconds, posts_per_second=len(bodies) / post_seconds, storm_seconds=storm_seconds,
           events_per_second=unique / storm_seconds, ordered_seconds=ordered_seconds,
           events_handled_per_worker=handled, suppressed=len(sup_a), mismatches=len(diffs),
           suppression_mismatches=len(sup_diff),
           mismatched_fields=dict(by_field))
    assert statuses == Counter({200: len(bodies)}), statuses
    assert all(handled), f"both event workers should take part: {handled}"
    assert len(a) == len(b) == MESSAGES
    assert not diffs, "\n".join(diffs[:40])
    assert not sup_diff, sup_diff[:20]
