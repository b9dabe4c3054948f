"""Two workers get a 429 at the same moment with different resets (a per-second limit and a longer quota): the
longest pause must win across processes, whatever order their Redis commands interleave in.

Found by the 429 fault test under load: ``pause_for_rate_limit`` reads ``pause_until`` and writes it back in two
commands, so a short pause written last replaces a long one and every worker resumes early (and burns its retry
budget on more 429s, then falls back to SMTP). Here the interleaving is forced instead of left to the scheduler.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from worker.infrastructure.config import get_settings
from worker.providers import breaker as protection

pytestmark = pytest.mark.faults


class _Interleaved:
    """Wraps the protection module's Redis client: both callers read before either writes, and the short pause is
    written last (the unlucky order two worker processes on a busy host can produce)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._barrier = threading.Barrier(2, timeout=2)

    def get(self, key: str) -> Any:
        value = self._real.get(key)
        if key.endswith("pause_until"):
            try:
                self._barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return value

    def set(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key.endswith("pause_until") and float(value) - time.time() < 5:
            time.sleep(0.2)  # the short pause is written after the long one
        return self._real.set(key, value, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_concurrent_429s_longest_pause_wins(redis_client: Any, base_env: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    real = protection._redis(settings)
    assert real is not None
    protection.reset(settings)
    base_env.setitem(protection._clients, settings.broker_url, _Interleaved(real))
    threads = [threading.Thread(target=protection.pause_for_rate_limit, args=(seconds, settings))
               for seconds in (20.0, 1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    base_env.setitem(protection._clients, settings.broker_url, real)
    paused = protection.state(settings)["paused_for"]
    gate = protection.before_api_send(settings)
    protection.reset(settings)
    assert paused > 15, f"a 20 s rate-limit pause was cut to {paused:.1f}s by a concurrent 1 s one"
    assert gate.verdict == "paused"
