"""The Celery worker refuses to start on settings it cannot keep its promise with (one line, exit code 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _start_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    celery = Path(sys.executable).with_name("celery")
    return subprocess.run([str(celery), "-A", "worker", "worker", "--pool", "threads", "-c", "1", "-Q", "nothing"],
                          cwd=ROOT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
                                         "MAILWORKER_DEV_ENV_FILE": "/nonexistent/dev.env", **env},
                          capture_output=True, text=True, timeout=60)


def test_worker_without_database_url_stops_at_start_naming_it() -> None:
    result = _start_worker({})
    assert result.returncode == 1
    assert "mailworker: cannot start: DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_a_lease_shorter_than_an_attempt_stops_at_start() -> None:
    result = _start_worker({"DATABASE_URL": "sqlite:////tmp/mw-never-created.db", "SEND_LEASE_SECONDS": "10"})
    assert result.returncode == 1
    assert "SEND_LEASE_SECONDS=10" in result.stderr
