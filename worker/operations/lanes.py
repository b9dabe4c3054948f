"""``mailworker worker``: one process type that serves every lane, each in a pool of its own.

A lane is a set of queues with its own Celery worker process and thread pool:

- ``transactional``: the send queue (``enqueue_email``'s mail), plus webhook events and maintenance;
- ``bulk``: the bulk queue (``enqueue_many``'s mail), so 20,000 newsletters never take a password reset's thread;
- ``callbacks``: status callbacks and the Python hook, which talk to other people's servers.

Capacity is reserved by construction: a lane's threads serve only its queues. The supervisor starts one
``celery worker`` per lane (node name ``<lane>@<host>``), forwards SIGTERM/SIGINT to all of them (Celery's warm
shutdown: tasks in flight finish), and exits as soon as any of them exits, so the platform restarts the whole
set. Children are armed to die with the supervisor (Linux ``PR_SET_PDEATHSIG``), so a supervisor killed with
SIGKILL leaves no worker behind. An operator who wants a lane apart runs ``mailworker worker --lanes bulk`` in a
process of its own and ``--lanes transactional,callbacks`` in the other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from types import FrameType

#: Runs before a child's program (then execs it): arm SIGKILL on the parent's death, and give up if the parent
#: is already gone. Inline, so nothing is imported on the way.
_DIE_WITH_PARENT = ("import ctypes,os,sys\n"
                    "ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
                    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
                    "os.execvp(sys.argv[2], sys.argv[2:])")


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run so that it dies with this process (Linux); elsewhere ``argv`` as it is."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


@dataclass(frozen=True)
class Lane:
    name: str
    queues: tuple[str, ...]
    concurrency: int


LANES = ("transactional", "bulk", "callbacks")


def lanes(selected: tuple[str, ...] = LANES) -> list[Lane]:
    """The lanes to run, with their queues (from the Celery configuration) and thread counts (settings)."""
    from worker.celery_app import app
    from worker.infrastructure.settings_spec import read

    conf = app.conf
    every = {
        "transactional": Lane("transactional", (conf.send_queue, conf.events_queue, conf.maintenance_queue),
                              read("WORKER_CONCURRENCY")),
        "bulk": Lane("bulk", (conf.bulk_queue,), read("BULK_CONCURRENCY")),
        "callbacks": Lane("callbacks", (conf.callbacks_queue,), read("CALLBACK_CONCURRENCY")),
    }
    unknown = [name for name in selected if name not in every]
    if unknown:
        raise ValueError(f"--lanes: unknown lane {', '.join(unknown)} (lanes: {', '.join(LANES)})")
    return [every[name] for name in dict.fromkeys(selected)]


def command(lane: Lane, loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "threads",
            "--concurrency", str(lane.concurrency), "--queues", ",".join(lane.queues),
            "--hostname", f"{lane.name}@%h", "--loglevel", loglevel]


def supervise(selected: list[Lane], loglevel: str = "INFO") -> int:
    """Run one Celery worker per lane until one exits or we are told to stop; returns the exit code."""
    children = [subprocess.Popen(guarded(command(lane, loglevel))) for lane in selected]
    stopping = threading.Event()
    exited = threading.Event()

    def terminate(signum: int) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        terminate(signal.SIGQUIT if signum == signal.SIGQUIT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}

    def watch(child: subprocess.Popen[bytes]) -> None:
        child.wait()
        exited.set()

    for child in children:
        threading.Thread(target=watch, args=(child,), daemon=True).start()
    try:
        while not exited.wait(0.5):
            pass
        first = next(c for c in children if c.poll() is not None)
        if not stopping.is_set():  # a lane died on its own: stop the others, so the platform restarts us all
            terminate(signal.SIGTERM)
        for child in children:
            child.wait()
        return 0 if stopping.is_set() else (first.returncode or 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
