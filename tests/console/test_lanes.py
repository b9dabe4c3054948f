"""The console and the lanes, on MariaDB and SQLite: each email's lane (and list) on its page, the progress of a
bulk email's batch (its batch mates queued / sent / failed), the ``lane:`` and ``batch:`` search terms, and the bulk
queue's depth on the overview."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from console_app.query import QueryError, parse
from tests.console.conftest import Console, make_message
from worker import app, enqueue_many
from worker.infrastructure.models import Lane, MessageStatus


def _facts(page: str) -> dict[str, str]:
    return {dt: re.sub(r"<[^>]+>", "", dd).strip()
            for dt, dd in re.findall(r"<dt>([^<]+)</dt><dd[^>]*>(.*?)</dd>", page, re.S)}


def test_a_bulk_emails_page_shows_its_lane_list_and_batch_progress(console: Console) -> None:
    batch = str(uuid.uuid4())
    mine = make_message(MessageStatus.QUEUED, lane=Lane.BULK, list_id="weekly", batch_id=batch)
    make_message(MessageStatus.QUEUED, lane=Lane.BULK, batch_id=batch)
    make_message(MessageStatus.SENT, lane=Lane.BULK, batch_id=batch)
    make_message(MessageStatus.DELIVERED, lane=Lane.BULK, batch_id=batch)
    make_message(MessageStatus.FAILED, lane=Lane.BULK, batch_id=batch)
    make_message(MessageStatus.SENT, lane=Lane.BULK, batch_id=str(uuid.uuid4()))  # another batch: not counted
    facts = _facts(console.get(f"/messages/{mine}").text)
    assert facts["Lane"] == "bulk · list weekly"
    assert re.sub(r"\s+", " ", facts["Batch"]) == "5 email(s): 2 queued · 2 sent · 1 failed"

    one_off = make_message(MessageStatus.SENT)
    facts = _facts(console.get(f"/messages/{one_off}").text)
    assert facts["Lane"] == "transactional" and "Batch" not in facts


def test_lane_and_batch_search(console: Console, redis_client: Any) -> None:
    bulk_ids = enqueue_many([{"to": f"u{i}@example.com", "subject": f"News {i}", "text_body": "x"} for i in range(3)])
    single = make_message(MessageStatus.SENT, subject="Password reset")
    page = console.get("/messages?q=lane:bulk").text
    assert all(f"/messages/{t}" in page for t in bulk_ids) and f"/messages/{single}" not in page
    page = console.get("/messages?q=lane:transactional").text
    assert f"/messages/{single}" in page and not any(f"/messages/{t}" in page for t in bulk_ids)
    batch_link = re.search(r'href="(/messages\?q=batch[^"]+)"', console.get(f"/messages/{bulk_ids[0]}").text)
    assert batch_link is not None
    page = console.get(batch_link.group(1).replace("&amp;", "&")).text
    assert all(f"/messages/{t}" in page for t in bulk_ids) and f"/messages/{single}" not in page
    answer = console.get("/messages?q=lane:express")
    assert answer.status_code == 400 and "lane: &#39;express&#39; is not a lane" in answer.text
    with pytest.raises(QueryError, match="^lane: "):
        parse("lane:fast")


def test_the_overview_lists_the_bulk_queue_with_its_depth(console_factory: Callable[..., Console],
                                                          redis_client: Any) -> None:
    console = console_factory(health=None)  # the real probe: LLEN of every queue Celery knows
    for i in range(2):
        redis_client.lpush(app.conf.bulk_queue, f"placeholder-{i}")
    page = console.get("/").text
    queues = page[page.index('id="queues"'):]
    assert re.search(rf"<code>{re.escape(app.conf.bulk_queue)}</code></td>\s*<td>2</td>", queues), queues[:2000]
