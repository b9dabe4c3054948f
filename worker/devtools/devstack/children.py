"""The supervised processes of ``mailworker dev``: start, pump output with a name prefix, stop.

Each child runs in its own process group (session) so that Ctrl-C in the terminal reaches only us and we stop
the children in order; that also means nothing else will stop them, so stopping must be thorough - SIGTERM to
the leader, then SIGKILL to whatever is left of the group. The last lines of output are kept to explain a death.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 10.0


class Output:
    """Serialises lines from many threads onto one stream, children's as ``name | line``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        #: (old, new) replacements applied to children's lines, e.g. kombu's ``redis://:**@host`` for a broker
        #: URL that has no password at all (kombu masks one whether or not it exists).
        self.rewrites: list[tuple[str, str]] = []

    def say(self, text: str = "", name: str | None = None) -> None:
        for old, new in self.rewrites if name else ():
            text = text.replace(old, new)
        with self._lock:
            self.stream.write((f"{name:>9} | " if name else "") + text + "\n")
            self.stream.flush()


@dataclass
class Child:
    """One supervised process in its own process group; a thread pumps its output and keeps the tail."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    def start(self, out: Output | None = None) -> Child:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(out or Output(),), name=f"dev-{self.name}", daemon=True).start()
        return self

    def _pump(self, out: Output) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(text)
            out.say(text, self.name)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill_group(self) -> None:
        """SIGKILL what is left of our process group (its id cannot be reused while a member lives)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def last_output(self) -> str:
        return "\n".join(f"    {line}" for line in self.tail) or "    (no output)"


def stop_children(children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each leader (gunicorn and celery stop their own workers), then SIGKILL groups after ``timeout``."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill_group()
            child.proc.wait(5)
        child.kill_group()  # orphans (say, a gunicorn worker whose master died) must not outlive us
