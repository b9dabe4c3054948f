"""``python -m benchmarks.counted COUNTS.json <celery arguments>``: a Celery worker that counts its MariaDB commands.

The bulk benchmark reports database round trips per email measured in the real run, in the worker processes
themselves, for mailworker and django-post_office alike. This wrapper installs the same patch as
:func:`benchmarks.census.counting` (every command PyMySQL puts on the wire, by SQL verb; both products run on
PyMySQL here, Django through ``pymysql.install_as_MySQLdb()``), then runs ``celery`` with the remaining
arguments in this process. A thread rewrites ``COUNTS.json`` every 0.2 s, so the benchmark can read the counts
before and after its measured part and take the difference (warm-up excluded). The patch costs one Python call
per command, on both sides.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections import Counter
from typing import Any

_COM_PING = 14
_LITERALS = re.compile(r"'(?:[^'\\]|\\.)*'|\b\d+(?:\.\d+)?\b")  # quoted strings and numbers -> ?


def install(path: str) -> None:
    import pymysql.connections

    counts: Counter[str] = Counter()
    statements: Counter[str] = Counter()  # MWBENCH_COUNT_DETAIL=1: by statement opening too, to see which
    detail = os.environ.get("MWBENCH_COUNT_DETAIL") == "1"
    lock = threading.Lock()
    execute = pymysql.connections.Connection._execute_command

    def _execute(self: Any, command: int, text: Any) -> Any:
        verb = "PING" if command == _COM_PING else (bytes(text).split(b" ", 1)[0].decode().upper()
                                                    if isinstance(text, bytes | bytearray)
                                                    else str(text).split(" ", 1)[0].upper())
        with lock:
            counts[verb] += 1
            if detail and verb != "PING":
                raw = bytes(text).decode(errors="replace") if isinstance(text, bytes | bytearray) else str(text)
                statements[_LITERALS.sub("?", " ".join(raw.split()))[:100]] += 1
        return execute(self, command, text)

    pymysql.connections.Connection._execute_command = _execute

    def dump() -> None:
        while True:
            with lock:
                data = dict(counts)
                if detail:
                    data.update({f"stmt: {k}": v for k, v in statements.items()})
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
            threading.Event().wait(0.2)

    threading.Thread(target=dump, name="mwbench-counts", daemon=True).start()


def read(path: str) -> Counter[str]:
    """The counts last written to ``path`` (empty before the first write)."""
    try:
        with open(path) as fh:
            return Counter({str(k): int(v) for k, v in json.load(fh).items()})
    except (OSError, ValueError):
        return Counter()


def main() -> None:
    install(sys.argv[1])
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


if __name__ == "__main__":
    main()
