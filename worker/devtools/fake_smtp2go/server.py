"""``FakeSMTP2Go``: the fake's configuration, its lifecycle, and what tests read back from it.

The endpoints live in their own modules (:mod:`.send`, :mod:`.activity`, :mod:`.webhooks`) as mixins; this
class assembles them, starts and stops the HTTP server and the webhook workers, and offers the controls a test
or benchmark uses while traffic flows: scripted answers, a changing failure mix, and duplicate counts.
"""

from __future__ import annotations

import random
import threading
from collections import deque

from worker.devtools.fake_smtp2go.activity import _ActivityAPI
from worker.devtools.fake_smtp2go.batch import _BatchAPI
from worker.devtools.fake_smtp2go.handler import _Handler, _Server
from worker.devtools.fake_smtp2go.scripted import Scripted
from worker.devtools.fake_smtp2go.suppression import _SuppressionAPI


class FakeSMTP2Go(_BatchAPI, _ActivityAPI, _SuppressionAPI):
    """SMTP2Go's v3 API on localhost, with failure injection, scripted answers and webhook delivery."""

    def __init__(self, *, api_key: str = "api-test-key", host: str = "127.0.0.1", port: int = 0,
                 latency: float = 0.0, error_rate: float = 0.0, rate_limit_rate: float = 0.0,
                 timeout_rate: float = 0.0, timeout_seconds: float = 60.0,
                 webhook_url: str | None = None, webhook_auth: tuple[str, str] | None = None,
                 webhook_format: str = "json", webhook_events: tuple[str, ...] = ("processed", "delivered"),
                 webhook_delay: float = 0.0, seed: int | None = None, activity_rate_per_minute: int = 60,
                 webhook_workers: int = 4, webhook_retries: int = 3, webhook_backoff: float = 0.1) -> None:
        if webhook_format not in ("json", "form"):
            raise ValueError("webhook_format must be 'json' or 'form'")
        self.api_key, self.host, self._port = api_key, host, port
        self.latency, self.error_rate, self.rate_limit_rate = latency, error_rate, rate_limit_rate
        self.timeout_rate, self.timeout_seconds = timeout_rate, timeout_seconds
        self.webhook_url, self.webhook_auth, self.webhook_format = webhook_url, webhook_auth, webhook_format
        self.webhook_events, self.webhook_delay = tuple(webhook_events), webhook_delay
        self.activity_rate_per_minute = activity_rate_per_minute
        self.webhook_workers, self.webhook_retries, self.webhook_backoff = (
            webhook_workers, webhook_retries, webhook_backoff)
        self.sends: list[dict] = []
        self.requests: list[dict] = []
        self.webhooks: list[dict] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._script: deque[Scripted] = deque()
        self._batch_script: deque[Scripted] = deque()
        self._counts: dict[str, int] = {}
        self._activity_hits: deque[float] = deque()
        self._activity_extra: list[dict] = []
        self.activity_events: tuple[str, ...] = ("processed", "delivered")
        self.activity_queries: list[dict] = []
        self._activity_script: deque[Scripted] = deque()
        self._stopping = threading.Event()
        self._wq: deque[tuple[float, list[dict]] | None] = deque()
        self._wcond = threading.Condition()
        self._pending = 0
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self.suppressions: dict[str, dict] = {}
        self.suppression_requests: list[tuple[str, dict]] = []
        self.suppression_denied = False
        self.suppression_page_size = 100

    def start(self) -> FakeSMTP2Go:
        """Bind (port 0 picks a free one) and serve from background threads."""
        self._stopping.clear()
        self._wq.clear()
        self._server = _Server((self.host, self._port), _Handler)
        self._server.fake = self
        self._port = self._server.server_address[1]
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                          name="fake-smtp2go", daemon=True)]
        self._threads += [threading.Thread(target=self._webhook_worker, name=f"fake-smtp2go-webhook-{i}",
                                           daemon=True) for i in range(max(1, self.webhook_workers))]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes handlers sleeping on delays and drops webhooks not posted yet."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._wcond:
            self._wq.clear()
            self._wq.extend([None] * len(self._threads))
            self._pending = 0
            self._wcond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> FakeSMTP2Go:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self._port}/v3"

    def script(self, *responses: Scripted) -> None:
        """Queue answers for the next valid ``/email/send`` calls; they win over random injection."""
        with self._lock:
            self._script.extend(responses)

    def set_failure(self, *, error_rate: float | None = None, rate_limit_rate: float | None = None,
                    timeout_rate: float | None = None, latency: float | None = None) -> None:
        """Change the injected failure mix while traffic flows (e.g. an outage in the middle of a run)."""
        changes = {"error_rate": error_rate, "rate_limit_rate": rate_limit_rate, "timeout_rate": timeout_rate,
                   "latency": latency}
        with self._lock:
            for name, value in changes.items():
                if value is not None:
                    setattr(self, name, value)

    def reset(self) -> None:
        with self._lock:
            for c in (self.sends, self.requests, self.webhooks, self._script, self._batch_script, self._counts,
                      self._activity_extra, self._activity_script, self.activity_queries):
                c.clear()
            self._activity_hits.clear()

    def count_for(self, tracking_id: str) -> int:
        with self._lock:
            return self._counts.get(tracking_id, 0)

    def duplicates(self) -> dict[str, int]:
        """Tracking ids accepted more than once: each is a recipient who got the same mail twice."""
        with self._lock:
            return {k: v for k, v in self._counts.items() if v > 1}
