"""A MAILWORKER_STATUS_HOOK for the tests: fails the first call of each event, then records (the application's
own row in real life: see the README's "Telling your application")."""

from __future__ import annotations

import threading
from typing import Any

calls: list[dict[str, Any]] = []
failed_once: set[str] = set()
lock = threading.Lock()


def record(body: dict[str, Any]) -> None:
    with lock:
        event_id = body["data"]["event_id"]
        if event_id not in failed_once:
            failed_once.add(event_id)
            raise RuntimeError("the application's database is away (first call of each event)")
        calls.append(body)


#: ``stall``: set when it is called; it returns when ``release`` is set (or after 10 s).
stalled = threading.Event()
release = threading.Event()


def stall(body: dict[str, Any]) -> None:
    """A hook that hangs (its database is locked, say) until the test releases it."""
    stalled.set()
    release.wait(10)
