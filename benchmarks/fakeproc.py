"""The SMTP2Go simulator in its own process, driven over a pipe.

Why a separate process: the fake is a Python ``ThreadingHTTPServer``; run inside the orchestrator it would
share one GIL with the enqueue loop and distort both. In its own process its CPU is measured separately (it is
part of the fixed cost every row pays, baseline and product alike), and the orchestrator still reads its
counts (how many sends arrived, and when) to time the baseline, which writes nothing anywhere else.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from multiprocessing.connection import Connection
from typing import Any


def _serve(conn: Connection, latency: float, api_key: str, per_email: float) -> None:
    from worker.devtools.fake_smtp2go import FakeSMTP2Go

    fake = FakeSMTP2Go(api_key=api_key, latency=latency)
    fake.batch_latency_per_email = per_email
    fake.start()
    conn.send(fake.url)
    while True:
        cmd, arg = conn.recv()
        if cmd == "count":
            conn.send(len(fake.sends))
        elif cmd == "times":  # (tracking id, arrival time) of every accepted send from index ``arg`` on
            conn.send([(s["tracking_id"], s["time"]) for s in fake.sends[arg:]])
        elif cmd == "accepts":  # (tracking id, time its answer left) of every accepted send from ``arg`` on
            conn.send(_accepts(fake, arg))
        elif cmd == "requests":  # HTTP send requests so far: (/email/send, /email/batch)
            batches = sum(r.get("path") == "/email/batch" for r in fake.requests)
            conn.send((len(fake.requests) - batches, batches))
        elif cmd == "cpu":
            t = os.times()
            conn.send(t.user + t.system)
        elif cmd == "reset":
            fake.reset()
            conn.send(True)
        elif cmd == "stop":
            fake.stop()
            conn.send(True)
            return


def _accepts(fake: Any, start: int) -> list[tuple[str | None, float]]:
    """Each send's acceptance: its arrival plus the answer's delay (``latency``, plus ``batch_latency_per_email``
    per email of its batch for an ``/email/batch`` item). The fake records a send on arrival, before the delay."""
    size: dict[str, int] = {}
    for r in list(fake.requests):
        if r.get("path") == "/email/batch" and isinstance(r.get("payload"), dict):
            n = len(r["payload"].get("emails") or [])
            size.update({eid: n for eid in r.get("email_ids") or [] if eid})
    per = fake.batch_latency_per_email
    return [(s["tracking_id"], s["time"] + fake.latency + per * size.get(s["email_id"], 0))
            for s in fake.sends[start:]]


class FakeProcess:
    """Start/stop the fake in a child process; every call is a synchronous request over the pipe."""

    def __init__(self, latency: float, api_key: str, batch_latency_per_email: float = 0.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, latency, api_key, batch_latency_per_email),
                                 name="fake-smtp2go",
                                 daemon=True)
        self._proc.start()
        self.url: str = self._conn.recv()
        self._lock = threading.Lock()
        self.latency = latency

    def _call(self, cmd: str, arg: Any = None) -> Any:
        with self._lock:
            self._conn.send((cmd, arg))
            return self._conn.recv()

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def count(self) -> int:
        return int(self._call("count"))

    def times(self, start: int = 0) -> list[tuple[str | None, float]]:
        return list(self._call("times", start))

    def accepts(self, start: int = 0) -> list[tuple[str | None, float]]:
        """(tracking id, acceptance time) of every send from ``start`` on: arrival + the answer's delay."""
        return list(self._call("accepts", start))

    def requests(self) -> tuple[int, int]:
        """How many ``/email/send`` and ``/email/batch`` requests arrived since the last reset."""
        single, batches = self._call("requests")
        return int(single), int(batches)

    def cpu(self) -> float:
        return float(self._call("cpu"))

    def reset(self) -> None:
        self._call("reset")

    def stop(self) -> None:
        try:
            self._call("stop")
        except (EOFError, OSError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
