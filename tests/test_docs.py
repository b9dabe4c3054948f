"""The documentation says what the code does: the Procfile table in docs/operations.md is the Procfile."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, str]:
    """Process type -> its command as an operator reads it: without the ``env VAR=...`` prefix, the log level
    and a guard before ``&& exec``."""
    out = {}
    for line in (PROJECT / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        command = command.split("&& exec ", 1)[-1]
        command = re.sub(r"^\s*env (\w+=\S+ )+", "", command)
        command = re.sub(r"--loglevel \S+", "", command)
        out[name.strip()] = " ".join(command.split())
    return out


def documented() -> dict[str, str]:
    text = (PROJECT / "docs" / "operations.md").read_text()
    section = text.split("## Processes (Procfile)", 1)[1].split("\n## ", 1)[0]
    return {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^\| `(\w+)` \| `([^`]+)` \|", section, re.M)}


def test_procfile_table_in_the_docs_matches_the_procfile() -> None:
    assert documented() == procfile()


def test_readme_names_every_procfile_process() -> None:
    readme = (PROJECT / "README.md").read_text()
    sentence = readme.split("`Procfile` process types:", 1)[1].split("\n\n", 1)[0]
    assert {name for name in procfile() if f"`{name}`" not in sentence} == set()
