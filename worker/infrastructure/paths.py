"""Where the project lives on disk: the embedded default's SQLite file and the dev stack's files go under it."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
