"""``python -m worker.cli`` runs the ``mailworker`` command line."""

from worker.cli.main import run

run()
