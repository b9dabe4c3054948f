"""The supervised processes of ``mailworker dev``: start, pump output with a name prefix, stop.

Each child runs in its own process group (session) so that Ctrl-C in the terminal reaches only us and we stop
the children in order; that also means nothing else will stop them, so stopping must be thorough - SIGTERM to
the leader, then SIGKILL to whatever is left of the group. On Linux each child is also armed to die with us
(``PR_SET_PDEATHSIG``), so a supervisor killed with SIGKILL leaves nothing behind. The last lines of output are
kept to explain a death.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from worker.operations.lanes import guarded

STOP_TIMEOUT = 10.0
class Output:
    """Serialises lines from many threads onto one stream, children's as ``name | line``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        #: (old, new) replacements applied to children's lines, e.g. kombu's ``redis://:**@host`` for a broker
        #: URL that has no password at all (kombu masks one whether or not it exists).
        self.rewrites: list[tuple[str, str]] = []
        #: Children's lines not shown (housekeeping that would push the ready table off the screen); they are
        #: still kept in each child's tail, which explains a death.
        self.quiet: re.Pattern[str] | None = None

    def say(self, text: str = "", name: str | None = None) -> None:
        if name and self.quiet is not None and self.quiet.search(text):
            return
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
        self.proc = subprocess.Popen(guarded(self.argv), env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
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


def record_children(path: Path, children: list[Child]) -> None:
    """Write which process groups this stack started (``#pid=`` ours, then ``pgid program`` per child), so a
    later start can find what a killed stack left behind."""
    lines = [f"#pid={os.getpid()}"]
    lines += [f"{c.proc.pid} {Path(c.argv[0]).name}" for c in children if c.proc is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def clean_leftovers(path: Path) -> tuple[int, int]:
    """Stop what a dead stack recorded in ``path`` and remove the file: (the dead supervisor's pid, how many
    process groups were still alive). A live supervisor's file is left alone: ``(0, 0)``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0, 0
    owner = next((int(line[5:]) for line in lines if line.startswith("#pid=") and line[5:].isdigit()), 0)
    if owner and owner != os.getpid() and _alive(owner):
        return 0, 0
    stopped = 0
    for line in lines:
        pgid, _, program = line.partition(" ")
        if not pgid.isdigit() or not _is_our_leader(int(pgid), program):
            continue
        try:
            os.killpg(int(pgid), signal.SIGKILL)
            stopped += 1
        except (ProcessLookupError, PermissionError):
            pass
    path.unlink(missing_ok=True)
    return owner, stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_leader(pgid: int, program: str) -> bool:
    """Still the session leader we started (a reused pid would not lead its own session running ``program``)."""
    try:
        if os.getsid(pgid) != pgid:
            return False
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except (ProcessLookupError, PermissionError, OSError):
        return False
    return bool(program) and program in cmdline


#: Signals that mean "stop" when a ``make`` that started us is handling them (bits of /proc's SigBlk mask).
_STOP_SIGNAL_BITS = sum(1 << (sig - 1) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def make_parent_stopping(pid: int | None = None, depth: int = 3) -> bool:
    """Whether a ``make`` among our nearest ancestors is handling SIGINT/SIGTERM/SIGHUP right now (Linux).

    ``make run`` is what an IDE or a supervisor signals, and make forwards SIGINT to nobody: it blocks in its
    handler waiting for its children, so a stack that waited too would run for ever. While a handler runs, the
    kernel adds its signal to the process's blocked mask, which /proc shows: that is the one trace make leaves.
    """
    pid = os.getppid() if pid is None else pid
    for _ in range(depth):
        if pid <= 1:
            return False
        try:
            status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        except OSError:
            return False
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip() in ("make", "gmake"):
            return bool(int(fields.get("SigBlk", "0").strip() or "0", 16) & _STOP_SIGNAL_BITS)
        pid = int(fields.get("PPid", "0").strip() or "0")
    return False
