#!/usr/bin/env bash
# The main job: installs into .venv, trains the demo runs into demo_logs/ and
# serves TensorBoard with the Stability tab on http://127.0.0.1:6006.
# Runs already trained into the logdir are reused (it says so); --retrain
# trains them again.
# Usage: ./scripts/demo.sh [--logs-only] [--retrain] [--logdir DIR] [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "tensorflow-cpu==2.21.0" .
exec .venv/bin/python -m demo.main "$@"
