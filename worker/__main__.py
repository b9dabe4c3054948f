"""``python -m worker`` runs the ``mailworker`` CLI."""

from worker.cli import run

run()
