"""The Python hook, ``MAILWORKER_STATUS_HOOK=package.module:function``: loaded once, called with a time limit.

The hook runs in a daemon thread of its own and is waited for at most ``CALLBACK_HOOK_TIMEOUT`` seconds; one that
overruns is recorded as a retryable failure and left to finish (or not) on its own thread: Python cannot stop a
thread from outside. It is the application's code, so the application must keep it short and idempotent (a
timed-out call may still complete, and the retry then delivers the same event again).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from worker.infrastructure.settings_spec import raw

_hooks: dict[str, Callable[[dict[str, Any]], Any]] = {}


def hook_spec() -> str | None:
    return raw("MAILWORKER_STATUS_HOOK")


def load_hook(spec: str) -> Callable[[dict[str, Any]], Any]:
    """``package.module:function`` -> the function (imported once per process)."""
    if spec not in _hooks:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ValueError(f"MAILWORKER_STATUS_HOOK={spec!r} is not package.module:function")
        _hooks[spec] = getattr(importlib.import_module(module), name)
    return _hooks[spec]


def call_hook(body: dict[str, Any], timeout: float) -> str | None:
    """Call the configured hook with ``body``; None when it returned, else the error to record (its exception,
    or that it did not return within ``timeout`` seconds). Never raises what the hook raised."""
    spec = hook_spec()
    if spec is None:
        return "RuntimeError: MAILWORKER_STATUS_HOOK is not set"
    try:
        hook = load_hook(spec)
    except Exception as err:  # noqa: BLE001 - an import error is recorded and retried like any hook failure
        return f"{type(err).__name__}: {err}"[:2000]
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            hook(body)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread, which records it
            failure.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name="mailworker-status-hook", daemon=True).start()
    if not done.wait(timeout):
        return f"TimeoutError: the hook did not return within its time limit (timed out after {timeout:g} s)"
    if failure:
        return f"{type(failure[0]).__name__}: {failure[0]}"[:2000]
    return None
