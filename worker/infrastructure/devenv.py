"""``var/dev.env``: how ``mailworker`` in other shells finds a running ``mailworker dev`` (the reading side;
the dev stack writes it, in ``worker.devtools.devstack.envfile``).

The stack publishes its URLs and generated keys here once it is ready and removes the file when it stops;
``worker.infrastructure.config`` reads it when settings are loaded, so the file must never point a later command
at a stack that is gone.
Hence the writer's pid in the file, and stale files being ignored and replaced.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from worker.infrastructure.paths import PROJECT_ROOT
from worker.infrastructure.settings_spec import raw

DEV_ENV_VAR = "MAILWORKER_DEV_ENV_FILE"


def dev_env_path() -> Path:
    """Where a running ``mailworker dev`` publishes its settings (``MAILWORKER_DEV_ENV_FILE`` overrides)."""
    return Path(raw(DEV_ENV_VAR) or PROJECT_ROOT / "var" / "dev.env")


def load_dev_env(path: Path | None = None) -> dict[str, str]:
    """The running dev stack's ``KEY=VALUE`` settings, or ``{}`` when none runs.

    A file whose writer (``#pid=``) is dead is stale and ignored: a killed ``dev`` must not steer later
    commands to a broker that is gone. Values are shell-quoted where needed (``set -a; . var/dev.env`` works).
    """
    try:
        text = (path or dev_env_path()).read_text(encoding="utf-8")
    except OSError:
        return {}
    if _owner_pid(text) == -1:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() and not key.startswith("#"):
            value = value.strip()
            try:
                values[key.strip()] = "".join(shlex.split(value)) if value[:1] in "'\"" else value
            except ValueError:  # unbalanced quote: take it as written
                values[key.strip()] = value
    return values


def _owner_pid(text: str) -> int:
    """The live writer's pid from ``#pid=N``; 0 when none is recorded, -1 when that process is gone."""
    pids = [line[5:].strip() for line in text.splitlines() if line.startswith("#pid=")]
    pid = int(pids[0]) if pids and pids[0].isdigit() else 0
    if pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            pass  # alive, someone else's
    return pid
