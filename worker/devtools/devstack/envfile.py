"""Writing ``var/dev.env`` for a running ``mailworker dev`` (read by :mod:`worker.infrastructure.devenv`)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from worker.devtools.devstack.errors import DevError
from worker.infrastructure.devenv import DEV_ENV_VAR, _owner_pid, dev_env_path, load_dev_env

__all__ = ["DEV_ENV_VAR", "_clear_stale_dev_env", "_owner_pid", "_write_dev_env", "dev_env_path", "load_dev_env"]


def _write_dev_env(path: Path, values: dict[str, str]) -> None:
    """Atomically and owner-only, with our pid so readers can tell a live file from a stale one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    lines = [f"# written by `mailworker dev`; removed when it stops\n#pid={os.getpid()}"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _clear_stale_dev_env(path: Path) -> None:
    """Refuse to run beside a live ``dev``; delete a file left by one that was killed."""
    try:
        pid = _owner_pid(path.read_text(encoding="utf-8"))
    except OSError:
        return
    if pid > 0 and pid != os.getpid():
        raise DevError(f"another `mailworker dev` (pid {pid}) is running and owns {path}; stop it first")
    path.unlink(missing_ok=True)
