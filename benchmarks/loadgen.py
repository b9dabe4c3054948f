"""A small HTTP load generator for machines without ``wrk``: keep-alive POSTs from threads in 2 processes.

``http.client`` rather than ``requests`` because the client shares the 2 cores with the server under test:
the cheaper each request is for the client, the more of the machine the servers get. Two processes so the
client is not capped by one GIL.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import threading
import time
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

from benchmarks.common import percentile


def _client(url: str, body: bytes, headers: dict[str, str], seconds: float, threads: int,
            conn_out: Connection) -> None:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 300:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    conn_out.send((latencies, errors[0]))


def run_load(url: str, body: bytes, headers: dict[str, str], seconds: float, processes: int = 2,
             threads: int = 8) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and error count, like the fields parsed from wrk's output."""
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(processes):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_client, args=(url, body, headers, seconds, threads, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    latencies: list[float] = []
    errors = 0
    for parent in pipes:
        lat, bad = parent.recv()
        latencies.extend(lat)
        errors += bad
    for p in procs:
        p.join()
    return {"rps": len(latencies) / seconds, "requests": len(latencies) + errors, "errors": errors,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99)}
