"""README's "Sending in bulk" snippet runs as pasted (MariaDB and Redis of the test session standing in for the dev
stack): it stores both emails on the bulk lane, publishes one send_batch task on the bulk queue, prints the ids and
"bulk"; pasted again, it returns the same ids and publishes nothing new."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from worker import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
    found = re.search(r"## Sending in bulk\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert found, "README's Sending in bulk section moved"
    return found[1]


def test_the_bulk_snippet_runs_as_pasted(db: str, redis_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_snippet(), "README.md", "exec"), namespace)  # noqa: S102 - the documentation's own code
    out = capsys.readouterr().out.splitlines()
    ids = namespace["ids"]
    assert len(ids) == 2 and out == [repr(ids), "bulk"]
    assert redis_client.llen(app.conf.bulk_queue) == 1
    again: dict[str, Any] = {}
    exec(compile(_snippet(), "README.md", "exec"), again)  # noqa: S102
    assert again["ids"] == ids and redis_client.llen(app.conf.bulk_queue) == 1
