"""``python -m worker.devtools.fake_smtp2go``: how ``mailworker dev`` and the tests start the fake as a process."""

import sys

from worker.devtools.fake_smtp2go.cli import main

if __name__ == "__main__":
    sys.exit(main())
