#!/usr/bin/env bash
# Installs everything the tests need into .venv, lints, and runs the tests.
# Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "tensorflow-cpu==2.21.0" ".[test]"
# Browser tests (tests/test_frontend.py): Debian's chromium and the frontend's
# dev dependencies (playwright-core, uPlot), pinned in frontend/package-lock.json.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium
  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update && sudo apt-get install -y chromium
  fi
fi
npm ci --prefix frontend --no-audit --no-fund
# Lint and docstrings (ruff, configured in pyproject.toml), then the tests.
.venv/bin/ruff check .
export TB_STABILITY_REQUIRE_BROWSER=1
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
# the node unit tests' summary (written by tests/test_frontend.py)
[ -f test-artifacts/node-unit-tests.txt ] && cat test-artifacts/node-unit-tests.txt
exit "$status"
