"""The state every part of the fake shares, declared once.

:class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go` is assembled from one mixin per concern (the send endpoint, the
activity search, webhook delivery) so that each fits in a module of its own; they all read the same settings
and recordings under the same lock. Declaring those attributes here lets each mixin type-check on its own,
while ``FakeSMTP2Go.__init__`` stays the one place that sets them.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.devtools.fake_smtp2go.handler import _Server
    from worker.devtools.fake_smtp2go.scripted import Scripted


class _FakeState:
    """Attribute declarations only (set in ``FakeSMTP2Go.__init__``), plus the API-key check both endpoints use."""

    api_key: str
    host: str
    _port: int
    latency: float
    error_rate: float
    rate_limit_rate: float
    timeout_rate: float
    timeout_seconds: float
    webhook_url: str | None
    webhook_auth: tuple[str, str] | None
    webhook_format: str
    webhook_events: tuple[str, ...]
    webhook_delay: float
    activity_rate_per_minute: int
    webhook_workers: int
    webhook_retries: int
    webhook_backoff: float
    sends: list[dict]
    requests: list[dict]
    webhooks: list[dict]
    _lock: threading.Lock
    _rng: random.Random
    _script: deque[Scripted]
    _counts: dict[str, int]
    _activity_hits: deque[float]
    _activity_extra: list[dict]
    activity_events: tuple[str, ...]
    activity_queries: list[dict]
    _activity_script: deque[Scripted]
    _stopping: threading.Event
    _wq: deque[tuple[float, list[dict]] | None]
    _wcond: threading.Condition
    _pending: int
    _server: _Server | None
    _threads: list[threading.Thread]

    def _key_ok(self, headers: Any, payload: dict) -> bool:
        return (headers.get("X-Smtp2go-Api-Key") or payload.get("api_key")) == self.api_key
