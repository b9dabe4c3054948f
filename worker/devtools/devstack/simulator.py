"""The SMTP2Go simulator as a ``mailworker dev`` child, with its secrets from the environment.

``python -m worker.devtools.fake_smtp2go`` takes the API key and the webhook bearer as flags, and a process's
arguments are readable by every user of the machine (``ps``, ``/proc/<pid>/cmdline``). So the dev stack starts
``python -m worker.devtools.devstack.simulator <non-secret flags>`` instead: this reads ``SMTP2GO_API_KEY`` and
``SMTP2GO_WEBHOOK_SECRET`` from its environment (the stack's child environment holds both) and hands them to
the simulator's entry point in-process, where no other user can read them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

API_KEY_VAR = "SMTP2GO_API_KEY"
WEBHOOK_SECRET_VAR = "SMTP2GO_WEBHOOK_SECRET"  # noqa: S105 - a variable name


def secret_flags(environ: Mapping[str, str]) -> list[str]:
    """The simulator's secret flags, built from the environment (never seen in any process's argv)."""
    flags: list[str] = []
    if environ.get(API_KEY_VAR):
        flags += [f"--api-key={environ[API_KEY_VAR]}"]  # one word: a value that starts with "-" is no flag
    secret = (environ.get(WEBHOOK_SECRET_VAR) or "").split(",")[0].strip()
    if secret:
        flags += [f"--webhook-bearer={secret}"]
    return flags


def main(argv: list[str] | None = None) -> int:
    from worker.devtools.fake_smtp2go import main as fake_main

    return fake_main([*(sys.argv[1:] if argv is None else argv), *secret_flags(os.environ)])


if __name__ == "__main__":
    raise SystemExit(main())
