#!/usr/bin/env bash
# Installs everything the tests need into .venv and runs them.
# Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "tensorflow-cpu==2.21.0" ".[test]"
exec .venv/bin/python -m pytest -q "$@"
