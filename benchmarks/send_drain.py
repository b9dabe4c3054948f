"""The send benchmark's second figure: N emails enqueued first, then drained (``--mode drain|both``).

The concurrent figure of :mod:`benchmarks.send_bench` has one caller enqueueing while the worker consumes, so
a row can be bound by the caller rather than by the worker. Here, for every kind of row (bare baseline,
django-post_office, mailworker) and with the same fake:

1. the row's tables and Redis keys are emptied and the fake reset, as for the concurrent phase;
2. the row's worker processes start and take the same warm-up as today (max(20, 2 x in flight) emails);
3. they are stopped (warm shutdown: nothing is in flight, the warm-up is all sent), so nothing consumes;
4. the N emails are enqueued (the tasks wait in the Redis queue; post_office's rows wait in its table and its
   ``send_queued_mail`` tasks in the queue) -- "enqueue/s" here is the caller with no worker running;
   nothing may reach the fake meanwhile;
5. fresh worker processes start with the same arguments and drain the queue; the phase ends as the
   concurrent one does (mailworker: every row ``sent``; post_office: every email ``sent`` in its table; the
   baseline: the fake's count), then the fake must hold N distinct tracking ids (lost or duplicated sends are
   printed and kept in the figures).

Figures, all from the fake's own arrival times (one clock for every kind; start-up excluded):

- drain emails/s: (count - 1) / (last acceptance - first acceptance), acceptance = arrival + latency, over
  each email's first acceptance (a duplicate send drains nothing; all sends are in ``drain_sends_per_s``);
- worker CPU ms/email: CPU of the new worker trees from the first send to the end of the phase, / N; the
  "incl. start-up" figure counts from the moment they reported ready (their first tasks' connection set-up);
- "from restart": the seconds from launching the new processes to the last acceptance (imports included).

The restarted processes are warm as far as Redis, MariaDB and the fake go, but their own connection pools
and per-thread HTTP sessions start empty, for every kind alike. (Checked once against the other way to stop
consuming, ``control.cancel_consumer`` / ``add_consumer`` on the same warm processes: the same rates within
the run-to-run noise, threads 16, N = 300.) The three phases of a row (concurrent, drain warm-up, drain) run
as separate processes with their own node names and log files (``<name>``, ``<name>-drainwarm``,
``<name>-drain`` under :data:`benchmarks.procs.LOG_DIR`).

With many threads in one process, post_office's lock file (``post_office.lockfile.FileLock``: one pid file
per process, and a reader that finds it half-written deletes it) can be taken by several ``send_queued_mail``
tasks at once, and ``get_queued()`` does not lock rows, so the same email can be sent twice; a drain, which
starts 16 such tasks at the same moment, shows it most. Those duplicates are counted, never hidden.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.common import say
from benchmarks.fakeproc import FakeProcess
from benchmarks.procs import Service, stop_all, trees_cpu

if TYPE_CHECKING:
    from benchmarks.send_bench import SendResult

MODES = ("concurrent", "drain", "both")


@dataclass
class Side:
    """What the drain phase needs from one kind of row."""

    kind: str  # baseline | post_office | mailworker
    reset: Callable[[], None]  # empty its tables and Redis keys (the fake is reset here)
    start: Callable[[str], list[Service]]  # its worker processes, started and ready; start(suffix of their names)
    enqueue: Callable[[int, int], object]  # enqueue(n, offset): n emails from this process
    done: Callable[[], int]  # emails finished since reset, as the concurrent phase counts them


def warm_count(concurrency: int, processes: int) -> int:
    """The warm-up every row takes (the concurrent phase's too)."""
    return max(20, 2 * concurrency * processes)


def _first_send(fake: FakeProcess, start: int, timeout: float) -> None:
    """Return as soon as the fake holds more than ``start`` sends (polled tightly: a drain lasts ~1 s)."""
    deadline = time.monotonic() + timeout
    while fake.count() <= start:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for the first drained send ({timeout:.0f} s)")
        time.sleep(0.002)


def _arrivals(fake: FakeProcess, start: int, n: int, timeout: float = 10.0) -> list[tuple[str | None, float]]:
    """The fake's sends from ``start`` on, once N distinct ids are there (or after ``timeout``: then short)."""
    deadline = time.monotonic() + timeout
    while True:
        arrivals = fake.times(start)
        if len({tid for tid, _ in arrivals if tid is not None}) >= n or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.1)


def drain(side: Side, n: int, fake: FakeProcess, warm: int) -> dict[str, float]:
    """One drain phase (steps 1-5 of the module docstring); its figures, keyed for ``SendResult.extra``."""
    from benchmarks.send_bench import _Run, _wait

    side.reset()
    workers = side.start("-drainwarm")  # own node names and log files: each phase's log is kept
    try:
        side.enqueue(warm, 10_000_000)
        _wait(side.done, warm, 120, f"{side.kind} warm-up sends")
    finally:
        stop_all(workers)
    start = fake.count()
    t0, c0 = time.time(), os.times()
    side.enqueue(n, 0)
    t1, c1 = time.time(), os.times()
    if fake.count() != start:
        raise RuntimeError(f"{side.kind}: {fake.count() - start} sends while no worker was running")
    restart = time.time()
    workers = side.start("-drain")
    ready = time.time()
    try:
        run = _Run(workers, fake)  # its CPU baseline is the moment the processes reported ready
        _first_send(fake, start, 60)
        first_seen = time.time()
        cpu_first = trees_cpu(run.pids)
        _wait(side.done, warm + n, 60 + n / 5, f"{side.kind} drained sends")
        cpu_done = trees_cpu(run.pids)
        _, peak, fake_cpu, servers = run.finish(n)
        _arrivals(fake, start, n)
    finally:
        stop_all(workers)
    arrivals = fake.times(start)  # read again once the workers are gone: late duplicates included
    first: dict[str, float] = {}  # each email's first acceptance: a duplicate send drains nothing
    for tid, t in arrivals:
        if tid is not None:
            first[tid] = min(t, first.get(tid, t))
    distinct, anonymous = len(first), sum(tid is None for tid, _ in arrivals)
    duplicates = len(arrivals) - anonymous - distinct
    if distinct != n or duplicates or anonymous:
        say(f"  {side.kind}: drain: {distinct} distinct ids of {n} at the stand-in, {duplicates} duplicate "
            f"sends, {anonymous} without an id")
    times = sorted(t + fake.latency for t in first.values())
    sends = sorted(t + fake.latency for _, t in arrivals)
    span = times[-1] - times[0]
    return {
        "drain_per_s": (len(times) - 1) / span if span > 0 else math.nan,
        "drain_sends_per_s": (len(sends) - 1) / (sends[-1] - sends[0]) if sends[-1] > sends[0] else math.nan,
        "drain_s": span,
        "drain_from_restart_s": times[-1] - restart,
        "drain_ready_s": ready - restart,  # launching the new processes until they all reported ready
        "drain_first_after_ready_s": first_seen - ready,  # ready until the first send was seen (2 ms polls)
        "drain_enqueue_per_s": n / (t1 - t0),
        "drain_enqueue_cpu_ms": 1000 * (c1.user + c1.system - c0.user - c0.system) / n,
        "drain_worker_cpu_ms": 1000 * (cpu_done - cpu_first) / n,
        "drain_worker_cpu_startup_ms": 1000 * (cpu_done - run.cpu0) / n,
        "drain_peak_rss_mb": peak,
        "drain_fake_cpu_ms": fake_cpu,
        **{f"drain_{k}_cpu_ms": v for k, v in servers.items()},
        "drain_distinct": distinct,
        "drain_duplicates": duplicates,
        "drain_lost": n - distinct,
    }


def with_drain(result: SendResult | None, side: Side, pool: str, concurrency: int, processes: int, n: int,
               fake: FakeProcess) -> SendResult:
    """Run the drain phase and put its figures in ``result.extra``; with no concurrent result (``--mode
    drain``) a :class:`~benchmarks.send_bench.SendResult` whose concurrent figures are NaN."""
    from benchmarks.send_bench import SendResult

    figures = drain(side, n, fake, warm_count(concurrency, processes))
    if result is None:
        nan = math.nan
        result = SendResult(side.kind, pool, concurrency, processes, n, nan, nan, nan, nan, nan, nan, nan, nan)
    result.extra.update(figures)
    return result
