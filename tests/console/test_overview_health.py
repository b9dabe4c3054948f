"""The overview: tiles for every status that add up to the total, the rate-limit card's wording, worker / beat /
queue health from the real broker and workers, and the 7-day trend and latency charts."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from kombu import Queue

from tests.conftest import SEND_QUEUE, free_port, wait_until
from tests.console.conftest import Console, make_message
from worker.infrastructure.models import MessageStatus, RecipientStatus, utcnow


def _tiles(page: str) -> list[tuple[str, int]]:
    return [(label, int(n)) for n, label in
            re.findall(r'<span class="n">(\d+)</span><span class="l">([^<]+)</span>', page)]


def test_the_tiles_cover_every_status_and_add_up_to_the_total(console: Console) -> None:
    for status in MessageStatus:
        make_message(status)
    make_message(MessageStatus.CANCELLED, recipient_status=RecipientStatus.CANCELLED)
    page = console.get("/").text
    tiles = _tiles(page)
    day, week = tiles[:len(tiles) // 2], tiles[len(tiles) // 2:]
    assert day == week
    counts = dict(day)
    assert counts["Cancelled"] == 2 and counts["Expired"] == 1
    assert counts["Parked (waiting for reconciliation)"] == 1 and counts["Held (operator problem)"] == 1
    assert counts["Retrying"] == 1
    total = len(MessageStatus) + 1
    assert sum(counts.values()) == total
    assert re.findall(r"<h2>Last (?:24 hours|7 days) <small>(\d+) emails</small>", page) == [str(total)] * 2
    assert 'class="tile s-cancelled" href="/messages?q=status:cancelled+after:24h"' in page


def test_no_rate_limit_pause_does_not_read_as_a_pause(console: Console) -> None:
    page = console.get("/").text
    card = page[page.index('id="pause"'):]
    card = card[:card.index("</div>")]
    assert "No rate-limit pause" in card and "every worker waits" not in card and ">none<" not in card
    console.app.extensions["test_protection"].update(paused_for=12.0)
    card = console.get("/").text.split('id="pause"')[1].split("</div>")[0]
    assert "Paused: 12.0 s left" in card and "every worker waits until" in card


def test_the_trend_and_latency_charts(console: Console) -> None:
    now = utcnow()
    yesterday = now - timedelta(days=1)
    for latency in (1, 2, 3, 4, 40):  # with the scheduled one's 1 s: p50 2 s, p95 40 s (nearest rank)
        queued = now - timedelta(minutes=10)
        make_message(MessageStatus.DELIVERED, queued_at=queued, sent_at=queued + timedelta(seconds=latency))
    make_message(MessageStatus.BOUNCED, queued_at=yesterday, sent_at=yesterday + timedelta(seconds=1))
    make_message(MessageStatus.DELIVERED, queued_at=yesterday, sent_at=yesterday + timedelta(seconds=1))
    make_message(MessageStatus.SENT, queued_at=yesterday, sent_at=yesterday + timedelta(seconds=1))
    # scheduled mail counts from its send time, not from when it was enqueued
    make_message(MessageStatus.SENT, queued_at=now - timedelta(days=3), send_at=now - timedelta(minutes=9, seconds=58),
                 sent_at=now - timedelta(minutes=9, seconds=57))
    page = console.get("/").text
    trend = page[page.index('id="trend"'):]
    trend = trend[:trend.index("</svg>")]
    assert f"{yesterday.strftime('%Y-%m-%d')} (UTC day): 3 sent, 1 delivered, 1 bounced" in trend
    assert f"{now.strftime('%Y-%m-%d')} (UTC day): 6 sent, 5 delivered, 0 bounced" in trend
    assert trend.count("<g><title>") == 7
    chart = page[page.index('id="latency"'):]
    chart = chart[:chart.index("</svg>")]
    hour = (now - timedelta(minutes=10)).replace(minute=0, second=0, microsecond=0)
    label = hour.strftime("%Y-%m-%d %H:%M:%S UTC")
    if (now - timedelta(minutes=10)).hour == (now - timedelta(minutes=9, seconds=57)).hour:
        assert f"{label} + 1 h: p50 2.0 s over 6 email(s)" in chart
        assert f"{label} + 1 h: p95 40 s over 6 email(s)" in chart
    assert "<script" not in page and 'class="l-p50"' in chart


def test_percentile_is_nearest_rank() -> None:
    from console_app.charts import percentile

    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile([7.0], 0.95)) == (50.0, 95.0, 7.0)


# --------------------------------------------------------------------------------------------- health


@pytest.fixture
def real_health_console(console_factory: Callable[..., Console]) -> Console:
    return console_factory(health=None)


def _card(page: str, card_id: str) -> str:
    part = page[page.index(f'id="{card_id}"'):]
    return part[:part.index("</div>")]


def test_queues_without_a_consumer_and_a_missing_beat_are_red(real_health_console: Console, redis_client: Any) -> None:
    from worker.operations.sweeper import sweep

    for i in range(3):
        redis_client.lpush(SEND_QUEUE, f"placeholder-{i}")
    page = real_health_console.get("/").text
    queues = _card(page, "queues")
    assert re.search(rf"<tr class=\"bad\"><td><code>{re.escape(SEND_QUEUE)}</code></td>\s*<td>3</td>\s*"
                     r"<td>none: nothing consumes it</td>", queues), queues
    assert 'class="card wide bad" id="queues"' in page
    assert "No worker running" in _card(page, "workers") and 'class="card bad" id="workers"' in page
    assert "beat: no sweep recorded" in _card(page, "beat") and 'class="card bad" id="beat"' in page

    redis_client.delete(SEND_QUEUE)  # the placeholders are not task messages: keep them from the sweep's queue
    sweep()
    beat = _card(real_health_console.get("/").text, "beat")
    assert re.search(r"beat: last sweep \d+s ago", beat) and "a sweep runs every 15.0 s" in beat


def test_an_old_heartbeat_is_red(real_health_console: Console, redis_client: Any) -> None:
    from worker.operations.sweeper import heartbeat_key

    redis_client.set(heartbeat_key(SEND_QUEUE), (utcnow() - timedelta(seconds=200)).isoformat())
    page = real_health_console.get("/").text
    assert re.search(r"beat: last sweep 2\d\ds ago", _card(page, "beat"))
    assert 'class="card bad" id="beat"' in page  # 200 s > 4 x 15 s


def test_the_sweep_writes_its_heartbeat_with_an_expiry(db: str, redis_client: Any) -> None:
    from worker.operations.sweeper import heartbeat_key, sweep

    before = utcnow()
    sweep()
    raw = redis_client.get(heartbeat_key(SEND_QUEUE))
    assert raw is not None
    from datetime import datetime

    assert datetime.fromisoformat(raw.decode()) >= before - timedelta(seconds=1)
    assert 0 < redis_client.ttl(heartbeat_key(SEND_QUEUE)) <= 3600


def test_a_running_worker_is_seen_consuming_every_queue(celery_worker: Any,
                                                        console_factory: Callable[..., Console]) -> None:
    from console_app import health
    from worker import app

    wait_until(lambda: health.snapshot(app).workers, timeout=20)
    console = console_factory(health=None)
    page = console.get("/").text
    assert "1 running" in _card(page, "workers") and 'class="card " id="workers"' in page
    queues = _card(page, "queues")
    assert "nothing consumes it" not in queues
    for q in app.conf.task_queues:
        assert re.search(rf"<code>{re.escape(q.name)}</code></td>\s*<td>0</td>\s*<td>1</td>", queues), q.name


def test_a_broker_that_is_down_shows_unknown(console_factory: Callable[..., Console],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from console_app import health

    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery prefers it to the constructor's broker
    down = Celery("down", broker=url)
    down.conf.task_queues = (Queue("mail.send"), Queue("mail.events"))
    assert down.conf.broker_url == url
    console = console_factory(health=lambda: health.snapshot(down, sweep_interval=15.0))
    answer = console.get("/")
    assert answer.status_code == 200
    page = answer.text
    assert "the broker is not reachable" in _card(page, "workers")
    assert re.search(r"<code>mail.send</code></td>\s*<td>unknown</td>\s*<td>unknown</td>", _card(page, "queues"))
    assert "unknown" in _card(page, "beat") and "Overview" in page
