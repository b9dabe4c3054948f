# The two commands from README.md; each does all of its set-up on a fresh machine.
.PHONY: run test test-unit lint bench

# Options for `mailworker dev`, e.g. make run ARGS="--web-port 8100" or make run ARGS="--pick-free-ports"
ARGS ?=

run:            ## start the whole system on the embedded default (SQLite, embedded Redis if none); ARGS="..." passes options
	bash scripts/bootstrap.sh run
	.venv/bin/mailworker dev $(ARGS)

test:           ## start Redis + MariaDB if needed, install, run the whole test suite
	bash scripts/services.sh
	bash scripts/bootstrap.sh test
	.venv/bin/python -m pytest -q

test-unit:      ## the fast layer: tests that need no service (no database, broker or worker), in seconds
	bash scripts/bootstrap.sh test
	.venv/bin/python -m pytest -q -m unit

lint:
	bash scripts/bootstrap.sh test
	.venv/bin/ruff check .
	.venv/bin/mypy

bench:          ## the benchmarks (docs/benchmarks.md), with the django-post_office anchor row (the bench extra)
	bash scripts/services.sh
	bash scripts/bootstrap.sh test
	.venv/bin/pip install -e '.[test,bench]'
	.venv/bin/python -m benchmarks.run
