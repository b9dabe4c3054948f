"""The ``mailworker`` command line (``worker.cli:main``): the operator's interface."""

from worker.cli.main import main, run

__all__ = ["main", "run"]
