"""What one task publish costs the caller: the direct LPUSH of :mod:`worker.sending.publish` against Celery's own
``send_task`` (default producer, and a producer held from ``app.producer_pool``), on the benchmark's Redis DB.

``enqueue_email`` publishes once per email and the webhook receiver once per event, so this figure decides
whether the hand-built path pays for itself (the issue allows one only where a figure written beside it says
so). Run as ``python -m benchmarks.publish_bench [N]``; single thread, CPU and wall per publish, two rounds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from benchmarks.common import clean_redis, configure_env, say, table


def measure(n: int = 2000, rounds: int = 2) -> str:
    from worker.celery_app import app
    from worker.sending.publish import EVENT_TASK, SEND_TASK, _event_summary, publish_event, publish_send

    event = {"event": "delivered", "email_id": "bench-email-id", "id": "bench-event-id",
             "rcpt": "customer1@example.net", "sendtime": "2026-12-01T10:00:00Z"}

    def lpush_send() -> None:
        publish_send(str(uuid.uuid4()))

    def send_task_send() -> None:
        tid = str(uuid.uuid4())
        app.send_task(SEND_TASK, args=[tid], task_id=tid)

    def send_task_pooled() -> None:
        tid = str(uuid.uuid4())
        with app.producer_pool.acquire(block=True) as producer:
            app.send_task(SEND_TASK, args=[tid], task_id=tid, producer=producer)

    def lpush_event() -> None:
        publish_event(event)

    def send_task_event() -> None:
        app.send_task(EVENT_TASK, args=[event], argsrepr=_event_summary(event))

    cases: list[tuple[str, Callable[[], None]]] = [
        ("send: direct LPUSH (publish_send)", lpush_send), ("send: app.send_task", send_task_send),
        ("send: app.send_task, pooled producer", send_task_pooled),
        ("event: direct LPUSH (publish_event)", lpush_event), ("event: app.send_task", send_task_event)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    try:
        for _ in range(rounds):
            for name, fn in cases:
                for _ in range(200):  # warm: connections, compiled routes
                    fn()
                c0, w0 = time.thread_time(), time.perf_counter()
                for _ in range(n):
                    fn()
                results[name].append((1000 * (time.thread_time() - c0) / n, 1000 * (time.perf_counter() - w0) / n))
                clean_redis()
    finally:
        clean_redis()
    return table(["publish", "CPU ms per publish (rounds)", "wall ms per publish (rounds)"], [
        [name, " / ".join(f"{c:.3f}" for c, _ in r), " / ".join(f"{w:.3f}" for _, w in r)]
        for name, r in results.items()])


if __name__ == "__main__":
    import sys

    configure_env()
    say(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
