"""Worker and web-server subprocesses, and what they cost: CPU seconds and RSS of the whole process tree.

The workers run as real ``python -m celery ... worker`` processes (as in production), so CPU and memory are
read from outside with psutil over the process and all its children (prefork children included; threads are
inside the one process). Several workers on one queue (:func:`celery_workers`, one process per core) are
measured as the sum over all their trees (:func:`trees_cpu`, :class:`Sampler` with several pids). Each process
gets its own log file so a failed run can be diagnosed afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.common import PREFIX, PYTHON, ROOT

LOG_DIR = Path(tempfile.gettempdir()) / PREFIX


def tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of the process and its live children (children's time is counted live)."""
    total = 0.0
    for proc in tree(pid):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def tree_rss(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def trees_cpu(pids: Sequence[int]) -> float:
    """:func:`tree_cpu` summed over several process trees (several worker processes on one queue)."""
    return sum(tree_cpu(pid) for pid in pids)


def trees_rss(pids: Sequence[int]) -> int:
    """:func:`tree_rss` summed over several process trees, read one right after the other."""
    return sum(tree_rss(pid) for pid in pids)


def proc_cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Sampler:
    """Samples the tree's RSS every ``interval`` seconds in a thread: peak, and the whole series.

    ``pid`` may be a sequence of pids (several worker processes): each sample is then the sum of their trees'
    RSS, so ``peak`` is the peak of the total, not a sum of per-process peaks.
    """

    pid: int | Sequence[int]
    interval: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [self.pid] if isinstance(self.pid, int) else list(self.pid)

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - t0, trees_rss(self.pids)))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.samples.append((self.samples[-1][0] + self.interval if self.samples else 0.0,
                             trees_rss(self.pids)))
        return self.samples

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


class Service:
    """A subprocess with its own log file; ``wait_for`` polls the log for a readiness line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env or dict(os.environ), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = "\n".join(self.log_text().splitlines()[-30:])
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready ({marker!r}); log tail:\n{tail}")

    def terminate(self) -> None:
        """SIGTERM (warm shutdown) without waiting; sent at most once (a second one could mean a cold stop)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL of our own process group if it hangs."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _celery_argv(name: str, app: str, queue: str, pool: str, concurrency: int, loglevel: str,
                 extra: list[str] | None) -> list[str]:
    return [PYTHON, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency), "-Q", queue,
            "-n", f"{PREFIX}-{name}@%h", "--loglevel", loglevel, "--without-mingle", "--without-gossip",
            *(extra or [])]


def celery_worker(name: str, app: str, queue: str, pool: str, concurrency: int,
                  env: dict[str, str] | None = None, loglevel: str = "INFO",
                  extra: list[str] | None = None) -> Service:
    """``python -m celery -A <app> worker`` on one queue, started and ready to consume.

    Mingle and gossip are off for every worker (baseline and product alike): they only slow start-up and
    would let workers of other rows see each other.
    """
    service = Service(name, _celery_argv(name, app, queue, pool, concurrency, loglevel, extra), env)
    service.wait_for(" ready.")
    return service


def celery_workers(name: str, app: str, queue: str, pool: str, concurrency: int, processes: int = 1,
                   env: dict[str, str] | None = None, loglevel: str = "INFO",
                   extra: list[str] | None = None) -> list[Service]:
    """``processes`` separate :func:`celery_worker` processes on the same queue, each ``-P pool -c concurrency``.

    One process keeps ``name`` as is (the same node name and log file as :func:`celery_worker`); with more,
    process ``i`` is ``<name>-<i>`` (node ``<prefix>-<name>-<i>@host``). All are started first and then
    waited for, so they start up in parallel; if any fails to become ready, all are stopped.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, not {processes}")
    if processes == 1:
        return [celery_worker(name, app, queue, pool, concurrency, env, loglevel, extra)]
    services: list[Service] = []
    try:
        for i in range(processes):
            node = f"{name}-{i}"
            services.append(Service(node, _celery_argv(node, app, queue, pool, concurrency, loglevel, extra),
                                    env))
        for service in services:
            service.wait_for(" ready.")
    except BaseException:
        stop_all(services)
        raise
    return services


def stop_all(services: Sequence[Service], timeout: float = 30.0) -> None:
    """Stop several services: SIGTERM to all of them first (so they shut down in parallel), then wait."""
    for service in services:
        service.terminate()
    for service in services:
        service.stop(timeout)
