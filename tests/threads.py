"""Running test work on several threads released at one barrier (races are what these tests are about)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(n: int, work: Callable[[int], None], *, timeout: float = 120) -> None:
    """Start ``n`` threads at one barrier, each calling ``work(i)``; re-raise what any of them hit."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def runner(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread is still running after {timeout} s"
    assert not errors, errors
