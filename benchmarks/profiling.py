"""Sampling profiles of a running worker with py-spy, summarised as "where the CPU goes".

py-spy samples from outside the process (no code change, negligible overhead with ``--nonblocking``) and
writes collapsed stacks (``frame;frame;frame count``). A flame graph is hard to paste into a report, so the
summary groups the stacks into a few named buckets (database driver, ORM, Celery, HTTP client, ...) and lists
the functions with the highest inclusive and self share of the samples.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from benchmarks.common import PYTHON

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: First match wins, tested against the file of each frame from the innermost outwards.
BUCKETS: list[tuple[str, str]] = [
    ("PyMySQL (driver, wire protocol)", "/pymysql/"),
    ("SQLAlchemy (ORM, SQL compile, pool)", "/sqlalchemy/"),
    ("kombu/redis-py (broker, events)", "/kombu/"),
    ("kombu/redis-py (broker, events)", "/redis/"),
    ("requests/urllib3/http.client (HTTP)", "/requests/"),
    ("requests/urllib3/http.client (HTTP)", "/urllib3/"),
    ("requests/urllib3/http.client (HTTP)", "/http/client.py"),
    ("json", "/json/"),
    ("logging", "/logging/"),
    ("Celery (task protocol, pool, events)", "/celery/"),
    ("Celery (task protocol, pool, events)", "/billiard/"),
    ("mailworker code", "/worker/"),
    ("benchmark baseline code", "/benchmarks/"),
]


def py_spy() -> str | None:
    exe = Path(PYTHON).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


class Recorder:
    """``py-spy record`` on ``pid`` until :meth:`stop`; collapsed stacks go to ``out``.

    ``--gil`` keeps only samples of the thread holding the GIL: in a thread-pool worker that is exactly the
    Python CPU time that caps throughput (threads waiting on a socket do not hold it, and are not CPU).
    """

    def __init__(self, pid: int, out: Path, *, gil: bool = True, subprocesses: bool = False,
                 rate: int = 250) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy into the venv)")
        argv = [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out), "--nonblocking"]
        if gil:
            argv.append("--gil")
        if subprocesses:
            argv.append("--subprocesses")
        self.out = out
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Path:
        """SIGINT makes py-spy write its file and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.out


def _parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            if raw.startswith("process "):  # py-spy's --subprocesses root frame: the command line
                continue
            m = _FRAME.match(raw.strip())
            frames.append((m.group("func"), m.group("file")) if m else (raw.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def _bucket(frames: list[tuple[str, str]]) -> str:
    for _, file in reversed(frames):
        for name, needle in BUCKETS:
            if needle in "/" + file:
                return name
    return "other (interpreter, stdlib)"


def summarize(path: Path, top: int = 15) -> str:
    """Markdown: samples by thread role and by library, product functions (inclusive), hottest leaves (self)."""
    stacks = _parse(path)
    total = sum(c for _, c in stacks)
    if not total:
        return "(no samples)"
    buckets: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    product: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        buckets[_bucket(frames)] += count
        roles[_role(frames)] += count
        for name in {f"{func} ({_short(file)})" for func, file in frames if _is_product(file)}:
            product[name] += count
        if frames:
            func, file = frames[-1]
            own[f"{func} ({_short(file)})"] += count

    def pct(c: int) -> str:
        return f"{100 * c / total:.1f}%"

    lines = [f"{total} samples of the thread holding the GIL (py-spy --gil, 250 Hz).", "",
             "| thread role | share |", "|---|---|"]
    lines += [f"| {name} | {pct(c)} |" for name, c in roles.most_common()]
    lines += ["", "| library of the innermost known frame | share |", "|---|---|"]
    lines += [f"| {name} | {pct(c)} |" for name, c in buckets.most_common()]
    lines += ["", "| product function (inclusive) | share |", "|---|---|"]
    lines += [f"| `{n}` | {pct(c)} |" for n, c in product.most_common(top)]
    lines += ["", "| hottest function (self) | share |", "|---|---|"]
    lines += [f"| `{n}` | {pct(c)} |" for n, c in own.most_common(top)]
    return "\n".join(lines)


def _is_product(file: str) -> bool:
    return file.startswith(("worker/", "webhook_app/")) and "celery/" not in file


def _role(frames: list[tuple[str, str]]) -> str:
    """Task bodies run under Celery's ``apply_target`` (thread pool) or ``trace_task`` (prefork child);
    the consumer loop (receiving, acking, heartbeats, events) under ``asynloop``; web requests under gunicorn."""
    names = [func for func, _ in frames]
    if any(n.endswith("apply_target") or "trace_task" in n for n in names):
        return "task execution"
    if any(n.endswith("asynloop") for n in names):
        return "Celery consumer loop (receive, ack, events)"
    if any("handle_request" in n for n in names):
        return "web request"
    return "other (start-up, timers, housekeeping)"


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file
